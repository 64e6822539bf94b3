#!/usr/bin/env node
// The console in AWS mode: `node tests/console/aws.mjs <consoleBaseUrl> <token> <org/project/stack>`.
//
// Drives the console as served by the `api` Lambda behind (emulated) API Gateway, under the
// gateway's path prefix (e.g. http://127.0.0.1:4566/_aws/execute-api/{apiId}/$default): opens
// it, signs in with the token, clicks through to the stack, clicks Update (a deployment with
// the stack's settings) and follows the run on its page until it succeeds. The live stream is
// not available behind API Gateway (404), so the log comes by the console's polling fallback;
// it must show "Apply complete". Any console error or failed request other than the stream's
// 404 fails. Screenshots go to target/console-screenshots/aws-*.png.
//
// Exit code 0 on success, 1 with the reason on failure; the browser is stopped either way.
// Called by tests/lambda/infra.rs (the deployed bundle); needs what run.mjs needs.

import { launchBrowser, guard, screenshot, cleanupAll, SHOTS } from './harness.mjs';

const RUN_TIMEOUT_MS = 240_000;
// Cold starts of the emulator's functions make the first pages slow.
const STEP_TIMEOUT_MS = 60_000;
// Everything, whatever hangs: the browser is stopped and the exit code is 1.
const TOTAL_TIMEOUT_MS = RUN_TIMEOUT_MS + 180_000;

function usage(message) {
  console.error(`${message}\nusage: node tests/console/aws.mjs <consoleBaseUrl> <token> <org/project/stack>`);
  process.exit(1);
}

const log = (line) => console.log(`[aws console] ${line}`);

async function main([baseArg, token, stackArg]) {
  if (!baseArg || !token || !stackArg) usage('missing arguments');
  let base;
  try {
    base = new URL(baseArg.replace(/\/+$/, ''));
  } catch {
    usage(`not a URL: ${baseArg}`);
  }
  const names = stackArg.split('/');
  if (names.length !== 3 || names.some((n) => !n)) usage(`not org/project/stack: ${stackArg}`);
  const [org, project, stack] = names;
  const enc = encodeURIComponent;
  // The console's paths under the gateway's prefix.
  const prefix = base.pathname.replace(/\/+$/, '');
  const at = (p) => `${prefix}${p}`;
  const stackPath = at(`/${enc(org)}/${enc(project)}/${enc(stack)}`);

  const browser = await launchBrowser();
  browser.setDefaultTimeout(STEP_TIMEOUT_MS);
  browser.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  const page = browser.pages()[0] || await browser.newPage();
  const g = guard(page, 'aws');
  // Behind API Gateway the event stream is not there: the page falls back to polling.
  g.expect('GET', /\/deployments\/[^/]+\/stream(\?|$)/, 404);
  const requests = [];
  page.on('request', (req) => requests.push(req.url()));
  const settled = () => page.locator('main#main:not([aria-busy="true"])').waitFor();
  const h1 = () => page.locator('main h1').first();
  const problems = () => {
    if (g.problems.length) throw new Error(`the page reported problems:\n  ${g.problems.join('\n  ')}`);
  };
  const shot = async (name) => {
    await screenshot(page, `aws-${name}`);
    log(`screenshot ${SHOTS}/aws-${name}.png`);
  };

  try {
    log(`opening ${base.href}/`);
    await page.goto(`${base.href.replace(/\/+$/, '')}/`);
    await page.waitForURL((u) => u.pathname === at('/-/signin'));
    await page.getByLabel('API token').waitFor();
    await shot('signin');
    problems();

    log('signing in');
    await page.getByLabel('API token').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL((u) => u.pathname === at(`/${enc(org)}`));
    await h1().filter({ hasText: 'Stacks' }).waitFor();
    await settled();
    await shot('overview');
    problems();

    log(`opening ${project}/${stack}`);
    await page.getByRole('link', { name: `${project}/${stack}`, exact: true }).click();
    await page.waitForURL((u) => u.pathname === stackPath);
    await h1().filter({ hasText: `${project}/${stack}` }).waitFor();
    await settled();
    await shot('stack');
    problems();

    log('clicking Update');
    await page.getByRole('button', { name: 'Update', exact: true }).click();
    const re = new RegExp(`^${stackPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/deployments/(\\d+)$`);
    await page.waitForURL((u) => re.test(u.pathname));
    const version = re.exec(new URL(page.url()).pathname)[1];
    log(`deployment #${version}: ${page.url()}`);
    await h1().filter({ hasText: `Deployment #${version}` }).waitFor();

    // Until the page says it ended (status terminal and every log line read).
    const end = Date.now() + RUN_TIMEOUT_MS;
    let lastStatus = '';
    for (;;) {
      const [status, mode] = await Promise.all([
        page.locator('.deploy-summary .badge').first().getAttribute('title').catch(() => ''),
        page.locator('.live-mode').innerText().catch(() => ''),
      ]);
      if (status !== lastStatus) log(`status: ${status} (${mode})`);
      lastStatus = status;
      if (/^Finished/.test(mode)) break;
      if (Date.now() > end) throw new Error(`deployment #${version} did not finish in ${RUN_TIMEOUT_MS / 1000} s: ${status}, "${mode}"`);
      problems();
      await page.waitForTimeout(1000);
    }
    await shot('deployment');
    const logText = await page.locator('.log').innerText();
    if (lastStatus !== 'succeeded') {
      throw new Error(`deployment #${version} ended ${lastStatus}, not succeeded. Its log:\n${logText}`);
    }
    if (!logText.includes('Apply complete')) throw new Error(`the log on the page has no "Apply complete":\n${logText}`);
    const polled = requests.filter((u) => /\/deployments\/[^/]+\/logs(\?|$)/.test(u));
    const streamed = requests.filter((u) => /\/deployments\/[^/]+\/stream(\?|$)/.test(u));
    log(`the log came by ${polled.length ? `polling (${polled.length} requests)` : 'the stream'}`);
    if (!polled.length && !streamed.length) throw new Error('the page read neither the stream nor the logs');
    const outside = requests.filter((u) => u.startsWith('http') && !new URL(u).pathname.startsWith(`${prefix}/`));
    if (outside.length) throw new Error(`requests outside the gateway's prefix:\n  ${outside.join('\n  ')}`);
    problems();
    log(`ok: deployment #${version} of ${stackArg} succeeded, started and followed from the console`);
  } catch (err) {
    await screenshot(page, 'aws-failure').catch(() => {});
    const seen = g.problems.length ? `\npage problems:\n  ${g.problems.join('\n  ')}` : '';
    throw new Error(`${err.message}\n(at ${page.url()}; screenshot ${SHOTS}/aws-failure.png)${seen}`);
  }
}

let code = 1;
const stop = async (why) => {
  console.error(`\n[aws console] FAILED: ${why}: cleaning up.`);
  await cleanupAll();
  process.exit(1);
};
process.on('SIGINT', () => stop('stopped by SIGINT'));
process.on('SIGTERM', () => stop('stopped by SIGTERM'));
const watchdog = setTimeout(() => stop(`timed out after ${TOTAL_TIMEOUT_MS / 1000} s`), TOTAL_TIMEOUT_MS);
try {
  await main(process.argv.slice(2));
  code = 0;
} catch (err) {
  console.error(`[aws console] FAILED: ${err.message}`);
  code = 1;
} finally {
  clearTimeout(watchdog);
  await cleanupAll();
}
process.exit(code);
