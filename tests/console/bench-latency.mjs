#!/usr/bin/env node
// Log latency, embedded mode: how long an engine's log line takes to reach the console page.
//
//   node tests/console/bench-latency.mjs [--lines N] [--interval-ms M] [--no-probe] [--csv FILE]
//
// Starts a real `tarmac serve` (target/debug/tarmac, or $TARMAC_BIN) on 127.0.0.1:0 with a
// fresh data dir, --allow-local-repos, and a --child-path whose first directory holds a
// stand-in `terraform`: during `apply` it prints N lines `tick <i> <epoch ms>`, M ms apart
// (other subcommands exit 0). A stack points at a git repository with a main.tf; the
// benchmark signs into the console in Debian's Chromium (playwright-core), starts an update,
// opens its consoleUrl at once (a pre-run `sleep 2` gives the page time to be following before
// the engine prints), and a MutationObserver installed before the app's first script records
// Date.now() as each `tick i t` line enters the DOM. Latency = arrival - t; both are this
// machine's wall clock.
//
// Unless --no-probe, a second reader of the same SSE stream in this process records when each
// line reaches a client and the timestamp the server gave it (when it read the line from the
// engine's pipe), to split the latency into its stages.
//
// Goal (issue): p99 <= 250 ms. A benchmark, not a test: it exits non-zero only on errors (the
// run failed, lines went missing, the page could not be driven).

import { writeFile, mkdir, chmod } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  startServer, apiClient, makeRepo, launchBrowser, guard, tempDir, eventually, runMain, TARMAC_BIN,
} from './harness.mjs';

const GOAL_P99_MS = 250;
const ORG = 'default';
const PROJECT = 'bench';
const STACK = 'latency';

function options() {
  const { values } = parseArgs({
    options: {
      lines: { type: 'string', default: '400' },
      'interval-ms': { type: 'string', default: '25' },
      'no-probe': { type: 'boolean', default: false },
      csv: { type: 'string' },
    },
  });
  const lines = Number(values.lines);
  const intervalMs = Number(values['interval-ms']);
  if (!Number.isInteger(lines) || lines < 1) throw new Error(`--lines must be a positive integer (got ${values.lines})`);
  if (!Number.isFinite(intervalMs) || intervalMs < 0) throw new Error(`--interval-ms must be >= 0 (got ${values['interval-ms']})`);
  return { lines, intervalMs, probe: !values['no-probe'], csv: values.csv };
}

/**
 * The stand-in engine. Only `apply` prints: the runner reads `apply -json` output line by
 * line, and a line that is not JSON is logged as it is (shared/src/runner/events.rs,
 * `EventStream::terraform`). It writes the state file the backend override names, as
 * shared/src/runner/tests.rs's ENGINE does, so the run ends like a real one.
 */
function engineScript(lines, intervalMs) {
  const pause = intervalMs > 0 ? `sleep ${(intervalMs / 1000).toFixed(3)}` : ':';
  return `#!/bin/sh
# Stand-in Terraform for tests/console/bench-latency.mjs.
case "$1" in
  version) echo "Terraform v0.0.0 (bench-latency stand-in)" ;;
  apply)
    i=1
    while [ "$i" -le ${lines} ]; do
      printf 'tick %s %s\\n' "$i" "$(date +%s%3N)"
      [ "$i" -lt ${lines} ] && ${pause}
      i=$((i + 1))
    done
    state=$(sed -n 's/^ *path = "\\(.*\\)"/\\1/p' tarmac_backend_override.tf)
    if [ -n "$state" ]; then
      printf '{"version":4,"outputs":{},"resources":[]}' > "$state"
    fi
    ;;
esac
exit 0
`;
}

/**
 * Runs in the page before any of its scripts (addInitScript): records when each tick line
 * enters the DOM, when the observer started, and when the page said it was streaming live.
 */
function installObserver() {
  const ticks = [];
  const seen = new Set();
  window.__bench = { ticks, observerSince: Date.now(), streamingSince: null, callbacks: 0 };
  const record = (li, now) => {
    const text = (li.querySelector('.line-text') || li).textContent || '';
    const m = /^tick (\d+) (\d+)$/.exec(text.trim());
    if (!m || seen.has(m[1])) return;
    seen.add(m[1]);
    ticks.push([Number(m[1]), Number(m[2]), now]);
  };
  new MutationObserver((mutations) => {
    const now = Date.now();
    window.__bench.callbacks += 1;
    for (const mu of mutations) {
      for (const node of mu.addedNodes) {
        if (node.nodeType !== 1) continue;
        if (node.matches('li.log-line')) record(node, now);
        else for (const li of node.querySelectorAll('li.log-line')) record(li, now);
      }
    }
    if (window.__bench.streamingSince === null) {
      const mode = document.querySelector('.live-mode');
      if (mode && /streaming/.test(mode.textContent)) window.__bench.streamingSince = now;
    }
  }).observe(document, { childList: true, subtree: true, characterData: true });
}

/** Reads the deployment's SSE stream from here: when each tick arrives, and its server timestamp. */
function startProbe(url, token, id) {
  const controller = new AbortController();
  const ticks = new Map(); // i -> { t, server, arrival }
  let ended = false;
  const done = (async () => {
    const res = await fetch(`${url}/api/stacks/${ORG}/${PROJECT}/${STACK}/deployments/${id}/stream`, {
      headers: { Authorization: `token ${token}`, Accept: 'text/event-stream' },
      signal: controller.signal,
    });
    if (!res.ok) throw new Error(`probe: stream answered ${res.status}`);
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of res.body) {
      const now = Date.now();
      buffer += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (event === 'end') {
          ended = true;
          controller.abort();
          return;
        }
        if (event !== 'log') continue;
        const body = JSON.parse(data.join('\n'));
        const m = /^tick (\d+) (\d+)$/.exec((body.line || '').trim());
        if (m && !ticks.has(Number(m[1]))) {
          ticks.set(Number(m[1]), { t: Number(m[2]), server: Date.parse(body.timestamp) + micros(body.timestamp), arrival: now });
        }
      }
    }
  })().catch((err) => {
    if (!ended && !controller.signal.aborted) throw err;
  });
  return { ticks, done, stop: () => controller.abort() };
}

/** The sub-millisecond part of an RFC 3339 timestamp with microseconds, in ms. */
function micros(ts) {
  const m = /\.\d{3}(\d+)Z$/.exec(ts || '');
  return m ? Number(`0.${m[1]}`) : 0;
}

/** Nearest-rank percentile of sorted values. */
function pct(sorted, p) {
  if (!sorted.length) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function stats(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { n: sorted.length, p50: pct(sorted, 50), p95: pct(sorted, 95), p99: pct(sorted, 99), max: sorted[sorted.length - 1] };
}

const fmt = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');

function table(rows) {
  const head = ['measured', 'lines', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms'];
  const body = rows.map(([name, s]) => [name, String(s.n), fmt(s.p50), fmt(s.p95), fmt(s.p99), fmt(s.max)]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (r) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [line(head), `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...body.map(line)].join('\n');
}

async function main() {
  const { lines, intervalMs, probe, csv } = options();
  const command = `node tests/console/bench-latency.mjs --lines ${lines} --interval-ms ${intervalMs}${probe ? '' : ' --no-probe'}${csv ? ` --csv ${csv}` : ''}`;
  console.log(`$ ${command}`);
  if (!existsSync(TARMAC_BIN)) throw new Error(`no tarmac binary at ${TARMAC_BIN} (build it, or set TARMAC_BIN)`);

  // The stand-in engine, first on the deployments' PATH (git, sh, date, sleep and sed after it).
  const engineDir = await tempDir('engine');
  const bin = path.join(engineDir, 'bin');
  await mkdir(bin);
  await writeFile(path.join(bin, 'terraform'), engineScript(lines, intervalMs));
  await chmod(path.join(bin, 'terraform'), 0o755);
  const childPath = `${bin}:/usr/local/bin:/usr/bin:/bin`;

  const [server, repo] = await Promise.all([
    startServer({ childPath }),
    makeRepo({ 'main.tf': '# A program for the log latency benchmark: the stand-in engine ignores it.\n' }),
  ]);
  const api = apiClient(server.url, server.token);
  const S = `/api/stacks/${ORG}/${PROJECT}/${STACK}`;
  // Writing settings makes the stack. The pre-run pause lets the page follow before the engine.
  await api('POST', `${S}/deployments/settings`, {
    sourceContext: { git: { repoUrl: repo, branch: 'refs/heads/main' } },
    operationContext: { preRunCommands: ['sleep 2'] },
  });

  const browser = await launchBrowser();
  await browser.addInitScript(installObserver);
  const page = browser.pages()[0] || await browser.newPage();
  const g = guard(page, 'bench');
  g.expect('GET', /\/api\/user$/, 401); // the first visit, before signing in
  await page.goto(`${server.url}/`);
  await page.waitForURL(/\/-\/signin$/);
  await page.getByLabel('API token').fill(server.token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL((u) => !u.pathname.startsWith('/-/signin'));

  // Start the update, then open its page at once.
  const createdAt = Date.now();
  const created = await api('POST', `${S}/deployments`, { operation: 'update', inheritSettings: true });
  const probeReader = probe ? startProbe(server.url, server.token, created.id) : null;
  await page.goto(created.consoleUrl);
  const openedAt = Date.now();

  const expected = intervalMs * lines + 60_000;
  await eventually(async () => {
    const d = await api('GET', `${S}/deployments/${created.id}`);
    if (['failed', 'succeeded', 'skipped'].includes(d.status)) return true;
    return false;
  }, { timeout: expected, interval: 250, message: `the deployment to end (${created.consoleUrl})` });
  const final = await api('GET', `${S}/deployments/${created.id}`);
  if (final.status !== 'succeeded') {
    const log = await api('GET', `${S}/deployments/${created.id}/logs`).catch(() => null);
    throw new Error(`the deployment ${final.status}:\n${JSON.stringify(log, null, 1).slice(0, 4000)}\n${server.logs().slice(-3000)}`);
  }
  // The page shows the end once every line was delivered.
  await page.locator('.live-mode').filter({ hasText: 'Finished' }).waitFor({ timeout: 30_000 });
  const bench = await page.evaluate(() => window.__bench);
  const mode = await page.locator('.live-mode').innerText();
  if (probeReader) {
    await Promise.race([probeReader.done, new Promise((r) => setTimeout(r, 5000))]);
    probeReader.stop();
  }

  const arrived = new Map(bench.ticks.map(([i, t, at]) => [i, { t, at }]));
  const missing = [];
  for (let i = 1; i <= lines; i += 1) if (!arrived.has(i)) missing.push(i);
  if (missing.length) throw new Error(`${missing.length} of ${lines} tick lines never reached the page (first: ${missing.slice(0, 10).join(', ')})`);

  // Lines printed before the page was following the stream arrive in its catch-up, not live.
  const liveSince = bench.streamingSince ?? bench.observerSince;
  const measured = [];
  const dropped = [];
  for (let i = 1; i <= lines; i += 1) {
    const { t, at } = arrived.get(i);
    if (t < liveSince || at < bench.observerSince) dropped.push(i);
    else measured.push({ i, t, latency: at - t });
  }
  const dom = stats(measured.map((m) => m.latency));
  const printed = [...arrived.values()].map((a) => a.t).sort((a, b) => a - b);
  const spacing = printed.length > 1 ? (printed[printed.length - 1] - printed[0]) / (printed.length - 1) : 0;
  const batches = new Set(measured.map((m) => arrived.get(m.i).at)).size;

  console.log('');
  console.log(`Server ${server.url} (${TARMAC_BIN}); Chromium page ${created.consoleUrl} (loaded ${openedAt - createdAt} ms after the update was requested).`);
  console.log(`Engine printed ${lines} lines, ${spacing.toFixed(1)} ms apart on average (asked ${intervalMs} ms); page mode at the end: "${mode}".`);
  console.log(`Dropped ${dropped.length} line(s) printed before the page was following the stream${dropped.length ? ` (ticks ${dropped.slice(0, 5).join(', ')}${dropped.length > 5 ? ', …' : ''})` : ''}; the page added the ${measured.length} measured lines in ${batches} DOM update(s).`);
  console.log('');
  const rows = [['engine print -> console DOM', dom]];
  if (probeReader) {
    const parts = measured.map((m) => probeReader.ticks.get(m.i)).filter(Boolean);
    rows.push(['  engine print -> server read (entry timestamp)', stats(parts.map((p) => p.server - p.t))]);
    rows.push(['  server read -> SSE client (this process)', stats(parts.map((p) => p.arrival - p.server))]);
    rows.push(['  engine print -> SSE client (this process)', stats(parts.map((p) => p.arrival - p.t))]);
  }
  console.log(table(rows));
  console.log('');
  if (csv) {
    const out = ['i,printed_ms,server_read_ms,sse_client_ms,dom_ms,dropped'];
    for (let i = 1; i <= lines; i += 1) {
      const a = arrived.get(i);
      const p = probeReader ? probeReader.ticks.get(i) : null;
      out.push([i, a.t, p ? p.server.toFixed(3) : '', p ? p.arrival : '', a.at, dropped.includes(i) ? 1 : 0].join(','));
    }
    await writeFile(csv, `${out.join('\n')}\n`);
    console.log(`Per-line times (epoch ms) written to ${csv}.`);
  }
  const ok = dom.p99 <= GOAL_P99_MS;
  console.log(`Goal p99 <= ${GOAL_P99_MS} ms: ${ok ? 'met' : 'NOT met'} (p99 ${fmt(dom.p99)} ms over ${dom.n} lines).`);
  if (g.problems.length) console.log(`Page problems seen (not counted as errors):\n  ${g.problems.join('\n  ')}`);
  return 0;
}

await runMain(main);
