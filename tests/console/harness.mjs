// What the console's browser tests stand on: a real `tarmac serve`, git repositories with
// Terraform programs, a webhook receiver, a browser with guards on every page (console errors,
// unexpected failed requests), screenshots and axe.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, rm, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const SHOTS = path.join(ROOT, 'target', 'console-screenshots');
const require = createRequire(import.meta.url);

// ---- Temp dirs and cleanup ----

const cleanups = [];
/** Runs `fn` at the end, whatever happens (last registered, first run). */
export function atExit(fn) {
  cleanups.push(fn);
}
export async function cleanupAll() {
  while (cleanups.length) {
    const fn = cleanups.pop();
    try {
      await fn();
    } catch (e) {
      console.error(`cleanup: ${e.message}`);
    }
  }
}

/**
 * Runs a script's `main` (which answers its exit code) and exits with that code, after every
 * cleanup, also when it throws (`onError` then prints what the script wants) or is stopped by
 * SIGINT or SIGTERM (exit 130).
 */
export async function runMain(main, onError = () => {}) {
  const stop = async (signal) => {
    console.error(`\nStopped by ${signal}: cleaning up.`);
    await cleanupAll();
    process.exit(130);
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  let code = 1;
  try {
    code = await main();
  } catch (err) {
    console.error(err.stack || err.message);
    onError(err);
    code = 1;
  } finally {
    await cleanupAll();
  }
  process.exit(code);
}

export async function tempDir(prefix) {
  const dir = await mkdtemp(path.join(tmpdir(), `tarmac-console-${prefix}-`));
  atExit(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

// ---- The server ----

export const TARMAC_BIN = process.env.TARMAC_BIN || path.join(ROOT, 'target', 'debug', 'tarmac');
const TOOLS = process.env.TARMAC_TEST_TOOLS || path.join(ROOT, 'target', 'test-tools');

/**
 * Starts `tarmac serve` on 127.0.0.1, port 0, with a fresh data dir, and reads its banner.
 * `childPath` gives deployments their own PATH (`--child-path`); `args` are more flags.
 * Returns { url, token, dataDir, logs() }.
 */
export async function startServer({ childPath, args = [] } = {}) {
  const dataDir = await tempDir('data');
  const env = {
    ...process.env,
    PATH: `${path.join(TOOLS, 'bin')}:${process.env.PATH}`,
    RUST_LOG: process.env.RUST_LOG || 'warn',
  };
  delete env.TARMAC_DATA_DIR;
  const child = spawn(TARMAC_BIN, [
    'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--allow-local-repos',
    '--workers', '2', '--stop-grace', '2', '--shutdown-grace', '1',
    ...(childPath ? ['--child-path', childPath] : []), ...args,
  ], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d.toString();
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
    if (process.env.TARMAC_TEST_LOG) process.stderr.write(d);
  });
  atExit(() => stopServer(child));
  const banner = await new Promise((resolve, reject) => {
    let out = '';
    let url = null;
    let token = null;
    const timer = setTimeout(() => reject(new Error(`tarmac serve printed no banner in 20 s:\n${out}\n${stderr}`)), 20_000);
    child.on('exit', (code) => reject(new Error(`tarmac serve exited (${code}):\n${out}\n${stderr}`)));
    child.stdout.on('data', (d) => {
      out += d.toString();
      for (const line of out.split('\n')) {
        const m = /^Tarmac listening on (\S+)/.exec(line);
        if (m) url = m[1];
        if (line.trim().startsWith('tmc_')) token = line.trim();
      }
      if (url && token) {
        clearTimeout(timer);
        resolve({ url, token });
      }
    });
  });
  return { ...banner, dataDir, pid: child.pid, logs: () => stderr };
}

async function stopServer(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    process.kill(-child.pid, 'SIGTERM'); // its process group: deployments' engines too
  } catch {
    child.kill('SIGTERM');
  }
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }, 5000);
  await exited;
  clearTimeout(timer);
  try {
    process.kill(-child.pid, 'SIGKILL'); // anything left in its group
  } catch {
    // none
  }
}

/** `tarmac token create` against the server's data dir; returns the token. */
export async function createToken(dataDir, org, role, name) {
  const { stdout } = await run(TARMAC_BIN, ['token', 'create', '--org', org, '--role', role, '--name', name, '--data-dir', dataDir]);
  const token = stdout.split('\n').map((l) => l.trim()).find((l) => l.startsWith('tmc_'));
  if (!token) throw new Error(`token create printed no token: ${stdout}`);
  return token;
}

/** A small API client for setup and for checking what the console did. */
export function apiClient(url, token) {
  return async (method, p, body) => {
    const res = await fetch(`${url}${p}`, {
      method,
      headers: { Authorization: `token ${token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return json;
  };
}

// ---- Repositories ----

/** A git repository with `files` committed on `main`; returns its file:// URL. */
export async function makeRepo(files) {
  const dir = await tempDir('repo');
  const git = (...args) => run('git', ['-c', 'user.email=t@example.com', '-c', 'user.name=Test', '-c', 'commit.gpgsign=false', ...args], { cwd: dir });
  await git('init', '-q', '-b', 'main');
  for (const [name, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), text);
  }
  await git('add', '-A');
  await git('commit', '-q', '-m', 'init');
  return `file://${dir}`;
}

// ---- Webhook receiver ----

/** An HTTP receiver on 127.0.0.1 that records what it gets and answers 200. */
export async function startReceiver() {
  const received = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => {
      body += d;
    });
    req.on('end', () => {
      received.push({ headers: req.headers, body });
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('ok-from-receiver');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  atExit(() => new Promise((resolve) => server.close(resolve)));
  return { url: `http://127.0.0.1:${server.address().port}/hook`, received };
}

// ---- A gateway that serves the console under a path prefix ----

/**
 * An HTTP proxy on 127.0.0.1 that forwards `<prefix>/...` to `target` with the prefix
 * removed, as API Gateway's stage URLs, a custom domain's base path or a reverse proxy do;
 * anything outside the prefix is a 404. Responses (event streams too) are piped through.
 * Returns { url } (the origin with the prefix) and `requests` (every path it was asked for).
 */
export async function startPrefixProxy(target, prefix) {
  const upstream = new URL(target);
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url);
    const { pathname, search } = new URL(req.url, 'http://proxy');
    if (pathname !== prefix && !pathname.startsWith(`${prefix}/`)) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('outside the prefix');
      return;
    }
    const forwarded = (pathname.slice(prefix.length) || '/') + search;
    const out = http.request({
      host: upstream.hostname,
      port: upstream.port,
      method: req.method,
      path: forwarded,
      headers: { ...req.headers, host: upstream.host },
    }, (up) => {
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    });
    out.on('error', (e) => {
      if (!res.headersSent) res.writeHead(502, { 'Content-Type': 'text/plain' });
      res.end(`proxy: ${e.message}`);
    });
    req.pipe(out);
    res.on('close', () => out.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  atExit(() => new Promise((resolve) => {
    server.closeAllConnections();
    server.close(resolve);
  }));
  return { url: `http://127.0.0.1:${server.address().port}${prefix}`, requests };
}

// ---- The browser ----

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/**
 * Launches Debian's Chromium with a fresh profile. Playwright's persistent context is how a
 * user data dir is given (it refuses --user-data-dir in args).
 */
export async function launchBrowser({ viewport = { width: 1280, height: 800 } } = {}) {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
  const { chromium } = require('playwright-core');
  const profile = await tempDir('profile');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport,
    acceptDownloads: true,
    colorScheme: 'light',
  });
  atExit(() => context.close());
  // Fail fast: a missing element is a failure in seconds, not half a minute.
  context.setDefaultTimeout(10_000);
  return context;
}

// ---- Page guards ----

/**
 * Watches a page: console errors, page errors, failed requests and HTTP errors are problems
 * unless expected. `expect(method, urlRegex, status)` allows one kind for the current test.
 */
export function guard(page, label) {
  const problems = [];
  let allowed = [];
  const isAllowed = (method, url, status) => allowed.some((a) => (!a.method || a.method === method)
    && a.url.test(url) && (a.status === undefined || a.status === status));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    // Chromium logs every HTTP error as a console error; the response check below decides.
    if (/^Failed to load resource: the server responded with a status of/.test(text)) return;
    problems.push(`[${label}] console error: ${text} (${msg.location().url || ''})`);
  });
  page.on('pageerror', (err) => problems.push(`[${label}] page error: ${err.message}`));
  page.on('response', (res) => {
    const status = res.status();
    if (status < 400) return;
    const req = res.request();
    if (!isAllowed(req.method(), res.url(), status)) {
      problems.push(`[${label}] unexpected ${status} for ${req.method()} ${res.url()}`);
    }
  });
  page.on('requestfailed', (req) => {
    const error = req.failure() ? req.failure().errorText : '';
    // The app aborts its own streams and polls when the user leaves a page.
    if (error === 'net::ERR_ABORTED') return;
    if (!isAllowed(req.method(), req.url(), undefined)) problems.push(`[${label}] request failed: ${req.method()} ${req.url()} ${error}`);
  });
  return {
    problems,
    expect(method, url, status) {
      allowed.push({ method, url, status });
    },
    reset() {
      allowed = [];
    },
  };
}

// ---- Screenshots and axe ----

export async function screenshot(page, name) {
  await mkdir(SHOTS, { recursive: true });
  await page.mouse.move(0, 0); // no hover state in the picture
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

let axeSource = null;
/**
 * Runs axe on the page; returns the critical and serious violations as readable lines.
 * Injected with evaluate (DevTools protocol), which the page's CSP does not govern.
 */
export async function axe(page) {
  if (!axeSource) axeSource = await readFile(require.resolve('axe-core/axe.min.js'), 'utf8');
  const has = await page.evaluate(() => typeof window.axe !== 'undefined');
  if (!has) await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  return violations
    .filter((v) => v.impact === 'critical' || v.impact === 'serious')
    .map((v) => `${v.impact} ${v.id}: ${v.help} at ${v.targets.join(' | ')}`);
}

// ---- A tiny test runner (ordered: later tests build on earlier ones) ----

export function suite() {
  const tests = [];
  return {
    test(name, fn, { timeout = 45_000 } = {}) {
      tests.push({ name, fn, timeout });
    },
    async run(ctx) {
      const results = [];
      // CONSOLE_TESTS=regex runs the first test (sign in) and the matching ones: for debugging
      // one flow (later flows expect what earlier ones made).
      const only = process.env.CONSOLE_TESTS ? new RegExp(process.env.CONSOLE_TESTS, 'i') : null;
      for (const [i, t] of tests.entries()) {
        if (only && i > 0 && !only.test(t.name)) continue;
        const started = Date.now();
        let error = null;
        let timer;
        try {
          await Promise.race([
            t.fn(ctx),
            new Promise((_, reject) => {
              timer = setTimeout(() => reject(new Error(`timed out after ${t.timeout / 1000} s`)), t.timeout);
            }),
          ]);
        } catch (e) {
          error = e;
        } finally {
          clearTimeout(timer);
        }
        const problems = ctx.collectProblems ? ctx.collectProblems() : [];
        if (problems.length) {
          // What the pages reported explains most failures: keep it with the error.
          error = error ? new Error(`${error.message}\n${problems.join('\n')}`) : new Error(problems.join('\n'));
        }
        const ms = Date.now() - started;
        results.push({ name: t.name, ok: !error, error, ms });
        console.log(`${error ? 'FAIL' : 'ok  '} ${t.name} (${(ms / 1000).toFixed(1)} s)`);
        if (error) console.log(`     ${error.message.split('\n').slice(0, 12).join('\n     ')}`);
        if (ctx.afterEach) await ctx.afterEach(t, error);
      }
      return results;
    },
  };
}

/** Fails with `message` unless `cond`. */
export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** Polls `fn` until it returns a truthy value (or times out). */
export async function eventually(fn, { timeout = 15_000, interval = 100, message = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${message}${last instanceof Error ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}
