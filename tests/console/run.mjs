#!/usr/bin/env node
// The console's browser tests: `node tests/console/run.mjs`.
//
// Starts a real `tarmac serve` (target/debug/tarmac, or $TARMAC_BIN) on 127.0.0.1:0 with a
// fresh data dir, the real Terraform engine first on PATH ($TARMAC_TEST_TOOLS/bin), and drives
// the console in Debian's Chromium through playwright-core: every page is screenshotted to
// target/console-screenshots/ and checked with axe-core (critical and serious violations
// fail), and any console error or unexpected failed request fails the test it happened in.
// Needs `npm ci` in tests/console (playwright-core, axe-core) and /usr/bin/chromium.

import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  startServer, apiClient, makeRepo, startReceiver, launchBrowser, guard, suite, runMain, SHOTS, TARMAC_BIN,
} from './harness.mjs';
import { register } from './flows.mjs';

// A quick program, with an output and a sensitive one.
const QUICK = `
variable "v" {
  type    = string
  default = "one"
}
resource "terraform_data" "x" {
  input = var.v
}
output "val" { value = terraform_data.x.output }
output "pw" {
  value     = "sensitive-output"
  sensitive = true
}
`;

// A program whose apply prints 80 coloured lines over ~10 s, then sleeps 30 s: to watch the
// log follow (and stop following), ANSI colours rendered live, and to be cancelled.
const SLOW = `
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "for i in $(seq 1 80); do printf '\\\\033[32mtick\\\\033[0m %s\\\\n' $i; sleep 0.12; done; sleep 30"
  }
}
`;

/** Installs the pinned playwright-core and axe-core (package-lock.json) when they are missing. */
function ensureDependencies() {
  const dir = path.dirname(fileURLToPath(import.meta.url));
  const wanted = ['playwright-core', 'axe-core'].map((m) => path.join(dir, 'node_modules', m, 'package.json'));
  if (wanted.every((f) => existsSync(f))) return;
  console.log('Installing the test dependencies (npm ci in tests/console)…');
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'inherit' });
}

async function main() {
  const started = Date.now();
  ensureDependencies();
  if (!existsSync(TARMAC_BIN)) throw new Error(`no tarmac binary at ${TARMAC_BIN} (build it, or set TARMAC_BIN)`);
  await rm(SHOTS, { recursive: true, force: true });
  const [server, quick, slow, receiver] = await Promise.all([
    startServer(),
    makeRepo({ 'infra/main.tf': QUICK }),
    makeRepo({ 'infra/main.tf': SLOW }),
    startReceiver(),
  ]);
  const browser = await launchBrowser();
  const page = browser.pages()[0] || await browser.newPage();
  const g = guard(page, 'main');
  const ctx = {
    url: server.url,
    token: server.token,
    dataDir: server.dataDir,
    api: apiClient(server.url, server.token),
    apiAs: (token) => apiClient(server.url, token),
    repos: { quick, slow },
    receiver,
    browser,
    main: { page, g },
    guards: [g],
    secret: 'hunter2-plaintext-7f3a',
    pagesChecked: [],
    // Problems seen by any page during a test fail that test; allowances end with it.
    collectProblems() {
      const all = [];
      for (const x of ctx.guards) {
        all.push(...x.problems.splice(0));
        x.reset();
      }
      return all;
    },
  };
  const s = suite();
  register(s);
  const results = await s.run(ctx);
  const failed = results.filter((r) => !r.ok);
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  console.log('');
  console.log(`Console tests against ${server.url} (${TARMAC_BIN}), ${secs} s.`);
  console.log(`Pages screenshotted and checked with axe: ${ctx.pagesChecked.length} (in ${SHOTS}).`);
  if (failed.length) {
    console.log('Failed:');
    for (const f of failed) console.log(`  - ${f.name}`);
    if (process.env.TARMAC_TEST_LOG !== '1') {
      console.log('Server log (last lines):');
      console.log(server.logs().split('\n').slice(-30).join('\n'));
    }
  }
  console.log(`${results.length - failed.length} passed, ${failed.length} failed`);
  return failed.length ? 1 : 0;
}

await runMain(main, () => console.log('0 passed, 1 failed'));
