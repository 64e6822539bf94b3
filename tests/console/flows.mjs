// The console's flows, in order: each test builds on what the previous ones made (the signed-in
// page, the stacks and their deployments), as a platform engineer's session would.

import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import {
  assert, eventually, screenshot, axe, guard, createToken, startPrefixProxy, ROOT,
} from './harness.mjs';

/** Screenshot and axe for the page as it is now. */
async function check(ctx, page, name) {
  await page.waitForFunction(() => !document.querySelector('main[aria-busy="true"], .loading'));
  await screenshot(page, name);
  const violations = await axe(page);
  ctx.pagesChecked.push(name);
  assert(!violations.length, `axe on ${name}:\n  ${violations.join('\n  ')}`);
}

/** A new guarded tab of the test browser. */
async function newPage(ctx, label) {
  const page = await ctx.browser.newPage();
  const g = guard(page, label);
  ctx.guards.push(g);
  return { page, g };
}

async function signIn(ctx, page, token) {
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL((u) => !u.pathname.endsWith('/-/signin'));
}

const h1 = (page) => page.locator('main h1').first();

/** Waits until the page's view has rendered (the app marks <main> busy while it loads). */
async function settled(page) {
  await page.locator('main#main:not([aria-busy="true"])').waitFor();
}

/** The text of the live log, headers and lines. */
const logText = (page) => page.locator('.log').innerText();

export function register(s) {
  s.test('sign in: a bad token is refused with a clear message, a good one opens the org', async (ctx) => {
    const { page, g } = ctx.main;
    g.expect('GET', /\/api\/user$/, 401);
    await page.goto(`${ctx.url}/`);
    await page.waitForURL(/\/-\/signin$/);
    await check(ctx, page, 'signin');
    await page.getByLabel('API token').fill('tmc_not-a-real-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    const alert = page.getByRole('alert').filter({ hasText: 'not accepted' });
    await alert.waitFor();
    await check(ctx, page, 'signin-bad-token');
    await signIn(ctx, page, ctx.token);
    assert(new URL(page.url()).pathname === '/default', `landed on ${page.url()}`);
    await h1(page).filter({ hasText: 'Stacks' }).waitFor();
    await page.locator('.live-counts').filter({ hasText: 'running' }).waitFor();
    const storage = await page.evaluate(() => ({ session: sessionStorage.getItem('tarmac.token'), local: JSON.stringify(localStorage) }));
    assert(storage.session === ctx.token, 'the token is in sessionStorage');
    assert(!storage.local.includes('tmc_'), 'no token in localStorage');
    assert(!page.url().includes('tmc_'), 'no token in the URL');
    await check(ctx, page, 'overview-empty');
  });

  s.test('settings: a form with a secret variable; server validation by the field; the secret is never shown', async (ctx) => {
    const { page, g } = ctx.main;
    g.expect('GET', /\/api\/stacks\/default\/web\/dev\/deployments\/settings$/, 404);
    g.expect('POST', /\/api\/stacks\/default\/web\/dev\/deployments\/settings$/, 400);
    await page.getByRole('button', { name: 'New stack' }).click();
    const dialog = page.getByRole('dialog', { name: 'New stack' });
    await dialog.getByLabel('Project').fill('web');
    await dialog.getByLabel('Stack').fill('dev');
    await check(ctx, page, 'new-stack-dialog');
    await dialog.getByRole('button', { name: 'Create stack' }).click();
    await page.waitForURL(/\/default\/web\/dev\/settings$/);
    await page.getByText('has no deployment settings yet').waitFor();
    await page.getByLabel('Repository URL').fill(ctx.repos.quick);
    await page.getByLabel('Branch').fill('refs/heads/main');
    await page.getByLabel('Directory in the repository').fill('infra');
    // A short pause before the engine, so the test sees the run live; and the variables.
    await page.getByLabel('Pre-run commands').fill('sleep 2\necho "db=$DB_PASSWORD greeting=$GREETING"');
    await page.getByRole('button', { name: 'Add variable' }).click();
    let row = page.locator('.env-row').last();
    await row.getByLabel('Name').fill('GREETING');
    await row.getByLabel('Value').fill('hello');
    await page.getByRole('button', { name: 'Add variable' }).click();
    row = page.locator('.env-row').last();
    await row.getByLabel('Secret').check();
    await row.getByLabel('Name').fill('1X');
    await row.getByLabel('Value').fill(ctx.secret);
    await page.getByRole('button', { name: 'Save settings' }).click();
    // The server's message, by the field it names.
    await row.getByRole('alert').filter({ hasText: "invalid environment variable name '1X'" }).waitFor();
    await check(ctx, page, 'settings-validation-error');
    await row.getByLabel('Name').fill('DB_PASSWORD');
    const save = page.getByRole('button', { name: 'Save settings' });
    await save.click();
    await page.getByRole('status').filter({ hasText: 'Settings saved.' }).waitFor();
    const stored = await ctx.api('GET', '/api/stacks/default/web/dev/deployments/settings');
    assert(stored.operationContext.environmentVariables.GREETING === 'hello', 'plain variable stored');
    assert(stored.operationContext.environmentVariables.DB_PASSWORD.ciphertext, 'secret stored sealed');
    const envRow = page.locator('.props.env');
    await envRow.getByText('set', { exact: true }).waitFor();
    const noPlaintext = async () => {
      const html = await page.content();
      const values = await page.evaluate(() => [...document.querySelectorAll('input, textarea')].map((i) => i.value).join('\n'));
      assert(!html.includes(ctx.secret) && !values.includes(ctx.secret), 'the secret\'s plaintext is not on the page');
    };
    await noPlaintext();
    await check(ctx, page, 'settings-saved');
    // Editing again: the secret is "set" with Replace, never its value.
    await page.getByRole('button', { name: 'Edit', exact: true }).click();
    await page.getByRole('button', { name: 'Replace Value' }).waitFor();
    await noPlaintext();
    await check(ctx, page, 'settings-form');
    await page.getByRole('button', { name: 'Cancel' }).click();
    await page.getByRole('button', { name: 'Edit as JSON' }).click();
    await noPlaintext();
    await check(ctx, page, 'settings-json');
    // The JSON editor: a parse error by the editor, then a save that keeps the secret.
    const editor = page.getByLabel('Settings (JSON)');
    const json = JSON.parse(await editor.inputValue());
    await editor.fill('{ not json');
    await page.getByRole('button', { name: 'Save JSON' }).click();
    await page.locator('.field').filter({ has: editor }).getByRole('alert').filter({ hasText: 'Not valid JSON' }).waitFor();
    json.operationContext.options = { ...(json.operationContext.options || {}), timeout: 600 };
    await editor.fill(JSON.stringify(json, null, 2));
    await page.getByRole('button', { name: 'Save JSON' }).click();
    await page.getByRole('status').filter({ hasText: 'Settings saved.' }).waitFor();
    await page.getByText('600 s').waitFor();
    const after = await ctx.api('GET', '/api/stacks/default/web/dev/deployments/settings');
    assert(after.operationContext.options.timeout === 600, 'the JSON edit is stored');
    assert(after.operationContext.environmentVariables.DB_PASSWORD.ciphertext, 'the secret survives a JSON save');
    assert(after.operationContext.preRunCommands[0] === 'sleep 2', 'the rest is kept');
    await noPlaintext();

    // A secret-store reference, written as JSON, reads as what it names, and the form keeps it.
    await page.getByRole('button', { name: 'Edit as JSON' }).click();
    const withRef = JSON.parse(await editor.inputValue());
    withRef.operationContext.environmentVariables.API_TOKEN = { fromParameterStore: { name: '/app/api-token' } };
    await editor.fill(JSON.stringify(withRef, null, 2));
    await page.getByRole('button', { name: 'Save JSON' }).click();
    await page.getByRole('status').filter({ hasText: 'Settings saved.' }).waitFor();
    await page.locator('.props.env').getByText('from Parameter Store: /app/api-token').waitFor();
    await page.getByRole('button', { name: 'Edit', exact: true }).click();
    await page.getByText('from Parameter Store: /app/api-token').waitFor();
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.getByRole('status').filter({ hasText: 'Settings saved.' }).waitFor();
    const kept = await ctx.api('GET', '/api/stacks/default/web/dev/deployments/settings');
    assert(kept.operationContext.environmentVariables.API_TOKEN.fromParameterStore.name === '/app/api-token',
      'a form save keeps the reference as it is');
    assert(kept.operationContext.environmentVariables.DB_PASSWORD.ciphertext, 'and the secret');
    // Removed again (the next flow runs this stack, which has no AWS role to read it with).
    await page.getByRole('button', { name: 'Edit', exact: true }).click();
    await page.getByRole('button', { name: 'Remove variable API_TOKEN' }).click();
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.getByRole('status').filter({ hasText: 'Settings saved.' }).waitFor();
    const removed = await ctx.api('GET', '/api/stacks/default/web/dev/deployments/settings');
    assert(!('API_TOKEN' in removed.operationContext.environmentVariables), 'the reference is removed');
  });

  s.test('update: the log streams live until the run succeeds; download and permalink', async (ctx) => {
    const { page } = ctx.main;
    const streamed = [];
    const polled = [];
    const onRequest = (req) => {
      if (/\/deployments\/[^/]+\/stream/.test(req.url())) streamed.push(req.url());
      if (/\/deployments\/[^/]+\/logs/.test(req.url())) polled.push(req.url());
    };
    page.on('request', onRequest);
    // Slow the create down so its busy state can be seen.
    await page.route('**/api/stacks/default/web/dev/deployments', async (route) => {
      if (route.request().method() === 'POST') await new Promise((r) => setTimeout(r, 1000));
      await route.continue();
    });
    await page.getByRole('link', { name: 'Deployments' }).click();
    await page.waitForURL(/\/default\/web\/dev$/);
    await settled(page);
    await page.getByText('No deployments yet').waitFor();
    await page.getByRole('button', { name: 'Update', exact: true }).click();
    // Busy: disabled, aria-busy, with a spinner and its text.
    await page.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => b.disabled
      && b.getAttribute('aria-busy') === 'true' && b.textContent === 'Updating…' && b.querySelector('.spinner')));
    await page.waitForURL(/\/default\/web\/dev\/deployments\/1$/);
    await page.unroute('**/api/stacks/default/web/dev/deployments');
    await h1(page).filter({ hasText: 'Deployment #1' }).waitFor();
    // Seen running first, then Terraform's lines arrive through the stream.
    await page.locator('.deploy-summary .status-running').waitFor({ timeout: 10_000 });
    await page.locator('.live-mode').filter({ hasText: 'streaming' }).waitFor();
    await page.locator('.log').getByText('Apply complete').first().waitFor({ timeout: 30_000 });
    await page.locator('.deploy-summary .status-succeeded').waitFor({ timeout: 30_000 });
    // The secret reached the run, masked in its log.
    await page.locator('.log').getByText('db=[secret] greeting=hello').waitFor();
    assert(!(await page.content()).includes(ctx.secret), 'the secret is not in the log');
    assert(streamed.length >= 1, 'the page read the event stream');
    assert(polled.length === 0, `no polling while the stream works (${polled.join(', ')})`);
    const steps = await page.locator('.step-name').allInnerTexts();
    assert(steps.includes('Get source') && steps.includes('pulumi update'), `steps: ${steps}`);
    const durations = await page.locator('.step-duration').allInnerTexts();
    assert(durations.every((d) => /\d/.test(d)), `every step has a duration: ${durations}`);
    await page.locator('.live-mode').filter({ hasText: 'Finished: succeeded' }).waitFor();
    page.off('request', onRequest);
    await check(ctx, page, 'deployment-succeeded');

    // Download of the whole log.
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download log' }).click()]);
    const text = await readFile(await download.path(), 'utf8');
    assert(text.includes('=== Get source ===') && text.includes('Apply complete'), 'the download has the whole log');
    assert(download.suggestedFilename() === 'web-dev-deployment-1.log', download.suggestedFilename());

    // A permalink to a line: open it and the line is marked and in view.
    const link = page.locator('.log-line .line-no').nth(2);
    const href = await link.getAttribute('href');
    const lineId = href.slice(1);
    await page.goto(`${ctx.url}/default/web/dev/deployments/1${href}`);
    await page.locator(`#${lineId}.target`).waitFor();
    assert(await page.locator(`#${lineId}`).isVisible(), 'the linked line is visible');
    ctx.deployment1 = await ctx.api('GET', '/api/stacks/default/web/dev/deployments/version/1');
  });

  s.test('the consoleUrl opens the deployment page, signed in or after signing in', async (ctx) => {
    const created = await ctx.api('POST', '/api/stacks/default/web/dev/deployments', { operation: 'preview', inheritSettings: true });
    const consoleUrl = created.consoleUrl;
    assert(consoleUrl === `${ctx.url}/default/web/dev/deployments/2`, consoleUrl);
    // In the signed-in tab.
    const { page } = ctx.main;
    await page.goto(consoleUrl);
    await h1(page).filter({ hasText: 'Deployment #2' }).waitFor();
    await page.locator('.deploy-summary').getByText('preview').waitFor();
    await page.locator('.deploy-summary .status-succeeded').waitFor({ timeout: 30_000 });
    // In a new tab (no token yet): sign in, then land on it.
    const other = await newPage(ctx, 'deep-link');
    await other.page.goto(consoleUrl);
    await other.page.waitForURL(/\/-\/signin$/);
    await signIn(ctx, other.page, ctx.token);
    await other.page.waitForURL(/\/default\/web\/dev\/deployments\/2$/);
    await h1(other.page).filter({ hasText: 'Deployment #2' }).waitFor();
    await check(ctx, other.page, 'deployment-deep-link');
    await other.page.close();
  });

  s.test('outputs: values shown, secret outputs shown as secret', async (ctx) => {
    const { page } = ctx.main;
    await page.goto(`${ctx.url}/default/web/dev/outputs`);
    const table = page.getByRole('table', { name: 'Stack outputs' });
    await table.getByRole('row', { name: /val/ }).getByText('one').waitFor();
    await table.getByRole('row', { name: /pw/ }).getByText('secret').waitFor();
    assert(!(await page.content()).includes('sensitive-output'), 'a secret output is not shown');
    await check(ctx, page, 'outputs');
  });

  s.test('a long run: colours and follow live, a queued run cancelled (skipped), the running one cancelled (failed)', async (ctx) => {
    const { page } = ctx.main;
    // Writing settings makes the stack (Tarmac's implicit stacks).
    await ctx.api('POST', '/api/stacks/default/web/slow/deployments/settings', {
      sourceContext: { git: { repoUrl: ctx.repos.slow, branch: 'refs/heads/main', repoDir: 'infra' } },
    });
    await page.goto(`${ctx.url}/default/web/slow`);
    await page.getByRole('button', { name: 'Update', exact: true }).click();
    await page.waitForURL(/\/default\/web\/slow\/deployments\/1$/);
    const log = page.locator('.log');
    // ANSI colours rendered as the lines stream in: "tick" in green.
    await log.locator('.ansi-fg-2', { hasText: 'tick' }).first().waitFor({ timeout: 20_000 });
    await page.locator('.deploy-summary .status-running').waitFor();
    const scrollState = () => log.evaluate((el) => ({
      top: el.scrollTop, atEnd: el.scrollHeight - el.scrollTop - el.clientHeight < 8, scrollable: el.scrollHeight > el.clientHeight + 100,
    }));
    const lineCount = () => page.locator('.log-line').count();
    await eventually(async () => (await scrollState()).scrollable, { message: 'the log overflows its box' });
    assert((await scrollState()).atEnd, 'the log follows new lines');
    // The user scrolls up: following stops, new lines do not move the view.
    await log.hover();
    await eventually(async () => {
      await page.mouse.wheel(0, -3000);
      return (await scrollState()).top === 0;
    }, { message: 'scrolled to the top', interval: 200 });
    const before = await lineCount();
    await eventually(async () => (await lineCount()) > before + 5, { message: `more lines arrive (${before} so far)` });
    assert((await scrollState()).top === 0, 'the view stays where the user put it');
    const follow = page.getByRole('button', { name: 'Follow the log ↓' });
    await follow.waitFor();
    await check(ctx, page, 'deployment-running');
    await follow.click();
    await eventually(async () => (await scrollState()).atEnd, { message: 'back at the end' });

    // A second run queues behind the first; cancel it from the stack's list: skipped.
    await ctx.api('POST', '/api/stacks/default/web/slow/deployments', { operation: 'update', inheritSettings: true });
    await page.getByRole('link', { name: 'slow' }).click();
    const queued = page.getByRole('row', { name: /#2/ });
    await queued.getByText('queued').waitFor();
    await queued.getByRole('button', { name: 'Cancel deployment #2' }).click();
    let dialog = page.getByRole('dialog', { name: 'Cancel deployment #2?' });
    await dialog.getByRole('button', { name: 'Cancel deployment' }).click();
    await dialog.waitFor({ state: 'detached' });
    await page.getByRole('row', { name: /#2/ }).getByText('skipped').waitFor();

    // The running one, from its page: failed, and the log says so.
    await page.getByRole('link', { name: '#1', exact: true }).click();
    await h1(page).filter({ hasText: 'Deployment #1' }).waitFor();
    await page.getByRole('button', { name: 'Cancel deployment' }).click();
    dialog = page.getByRole('dialog', { name: 'Cancel deployment #1?' });
    await dialog.getByRole('button', { name: 'Cancel deployment' }).click();
    await dialog.waitFor({ state: 'detached' });
    await page.locator('.deploy-summary .status-failed').waitFor({ timeout: 30_000 });
    await page.locator('.live-mode').filter({ hasText: 'Finished: failed' }).waitFor();
    assert(/cancelled/i.test(await logText(page)), 'the log says the deployment was cancelled');
    assert(await page.getByRole('button', { name: 'Cancel deployment' }).isHidden(), 'no Cancel on a finished run');
    // Every visible line has its number (an entry with several lines is split).
    const unnumbered = await page.locator('.log-line').evaluateAll((els) => els.filter((e) => e.querySelector('.line-text').textContent.includes('\n')).length);
    assert(unnumbered === 0, 'no log line holds another');
    await check(ctx, page, 'deployment-cancelled');
  }, { timeout: 60_000 });

  s.test('pause and resume the stack', async (ctx) => {
    const { page } = ctx.main;
    await page.goto(`${ctx.url}/default/web/dev`);
    await page.getByRole('button', { name: 'Pause stack' }).click();
    await page.getByRole('button', { name: 'Resume stack' }).waitFor();
    await page.locator('.stack-head .badge', { hasText: 'paused' }).waitFor();
    assert((await ctx.api('GET', '/api/stacks/default/web/dev/deployments/metadata')).stackPaused === true, 'paused on the server');
    await check(ctx, page, 'stack-paused');
    await page.getByRole('button', { name: 'Resume stack' }).click();
    await page.getByRole('button', { name: 'Pause stack' }).waitFor();
    assert((await ctx.api('GET', '/api/stacks/default/web/dev/deployments/metadata')).stackPaused === false, 'resumed on the server');
    await check(ctx, page, 'stack-deployments');
  });

  s.test('schedules: a bad cron is refused by its field; a cron schedule is made, paused, resumed, its history read', async (ctx) => {
    const { page, g } = ctx.main;
    g.expect('POST', /\/deployments\/schedules$/, 400);
    await page.getByRole('link', { name: 'Schedules' }).click();
    await page.waitForURL(/\/schedules$/);
    await page.getByText('No schedules.').waitFor();
    await page.getByLabel('Kind').selectOption('cron');
    const cron = page.getByLabel('Cron expression (UTC)');
    await cron.fill('61 * * * *');
    await page.getByRole('button', { name: 'Create schedule' }).click();
    await page.locator('.schedule-form .field').filter({ has: cron }).getByRole('alert').filter({ hasText: 'invalid scheduleCron' }).waitFor();
    await cron.fill('0 3 * * *');
    await page.getByLabel('Operation').selectOption('refresh');
    await page.getByRole('button', { name: 'Create schedule' }).click();
    const row = page.getByRole('row', { name: /0 3 \* \* \*/ });
    await row.waitFor();
    const list = (await ctx.api('GET', '/api/stacks/default/web/dev/deployments/schedules')).schedules;
    assert(list.length === 1 && list[0].scheduleCron === '0 3 * * *', JSON.stringify(list));
    await row.getByRole('button', { name: /^Pause schedule/ }).click();
    await page.getByRole('row', { name: /0 3 \* \* \*/ }).getByText('paused').waitFor();
    await page.getByRole('button', { name: /^Resume schedule/ }).click();
    await page.getByRole('button', { name: /^Pause schedule/ }).waitFor();
    await page.getByRole('button', { name: 'History' }).click();
    await page.getByText('It has not fired yet.').waitFor();
    // A drift schedule with auto-remediate, too.
    await page.getByLabel('Kind').selectOption('drift');
    await cron.fill('30 4 * * 1');
    await page.getByLabel(/Auto-remediate/).check();
    await page.getByRole('button', { name: 'Create schedule' }).click();
    await page.getByRole('row', { name: /Drift detection/ }).getByText('auto-remediate').waitFor();
    // One-time, and TTL (destroy, then delete the stack).
    await page.getByLabel('Kind').selectOption('once');
    await page.getByLabel('Time (UTC)').fill('2031-01-02T03:04');
    await page.getByLabel('Operation').selectOption('preview');
    await page.getByRole('button', { name: 'Create schedule' }).click();
    await page.getByRole('row', { name: /One-time/ }).getByText('2031-01-02 03:04:00.000 UTC').first().waitFor();
    await page.getByLabel('Kind').selectOption('ttl');
    await page.getByLabel('Time (UTC)').fill('2032-05-06T07:08');
    await page.getByLabel('Delete the stack after a successful destroy').check();
    await page.getByRole('button', { name: 'Create schedule' }).click();
    await page.getByRole('row', { name: /TTL/ }).getByText('destroy, then delete the stack').waitFor();
    await check(ctx, page, 'schedules');
    // Delete the one-time schedule.
    await page.getByRole('button', { name: /^Delete schedule at 2031/ }).click();
    const dialog = page.getByRole('dialog', { name: 'Delete this schedule?' });
    await dialog.getByRole('button', { name: 'Delete schedule' }).click();
    await page.getByRole('row', { name: /One-time/ }).waitFor({ state: 'detached' });
    const kinds = (await ctx.api('GET', '/api/stacks/default/web/dev/deployments/schedules')).schedules.length;
    assert(kinds === 3, `three schedules left, not ${kinds}`);
  });

  s.test('detect drift: a detect-drift deployment, then its run on the Drift tab', async (ctx) => {
    const { page } = ctx.main;
    await page.goto(`${ctx.url}/default/web/dev`);
    await page.getByRole('button', { name: 'Detect drift' }).click();
    await page.waitForURL(/\/default\/web\/dev\/deployments\/3$/);
    await page.locator('.deploy-summary').getByText('detect-drift').waitFor();
    await page.locator('.deploy-summary .status-succeeded').waitFor({ timeout: 30_000 });
    await page.locator('.log').getByText(/No drift detected/).first().waitFor();
    await page.getByRole('link', { name: 'dev', exact: true }).click();
    await page.getByRole('link', { name: 'Drift' }).click();
    const run = page.getByRole('table', { name: 'Drift runs' }).getByRole('row', { name: /#3/ });
    await run.getByText('no drift').waitFor();
    await check(ctx, page, 'drift');
  });

  s.test('destroy: the typed confirmation; a wrong name keeps the button disabled; Escape closes and restores focus', async (ctx) => {
    const { page } = ctx.main;
    await page.goto(`${ctx.url}/default/web/dev`);
    const destroy = page.getByRole('button', { name: 'Destroy', exact: true });
    // Keyboard: open, Tab stays inside, Escape closes, focus returns.
    await destroy.focus();
    await page.keyboard.press('Enter');
    let dialog = page.getByRole('dialog', { name: 'Destroy web/dev?' });
    await dialog.waitFor();
    for (let i = 0; i < 6; i += 1) {
      await page.keyboard.press('Tab');
      assert(await page.evaluate(() => !!document.activeElement.closest('dialog')), 'focus stays in the dialog');
    }
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    assert(await destroy.evaluate((b) => b === document.activeElement), 'focus returns to Destroy');
    const outline = await destroy.evaluate((b) => getComputedStyle(b).outlineStyle);
    assert(outline !== 'none', 'the focused button shows a focus ring');

    await destroy.click();
    dialog = page.getByRole('dialog', { name: 'Destroy web/dev?' });
    const confirm = dialog.getByRole('button', { name: 'Destroy' });
    const typed = dialog.getByLabel('Type the stack name, dev, to confirm');
    assert(await confirm.isDisabled(), 'disabled before typing');
    await typed.fill('web/dev');
    assert(await confirm.isDisabled(), 'disabled with a wrong name');
    await typed.fill('de');
    assert(await confirm.isDisabled(), 'disabled with part of the name');
    await check(ctx, page, 'destroy-dialog');
    await typed.fill('dev');
    assert(await confirm.isEnabled(), 'enabled with the stack name');
    await confirm.click();
    await page.waitForURL(/\/default\/web\/dev\/deployments\/4$/);
    await page.locator('.deploy-summary').getByText('destroy').waitFor();
    await page.locator('.deploy-summary .status-succeeded').waitFor({ timeout: 30_000 });
    await page.locator('.log').getByText('Destroy complete').first().waitFor();
  });

  s.test('tokens: create (shown once), list, revoke; a revoked token sends its session to sign-in', async (ctx) => {
    const { page } = ctx.main;
    await page.getByRole('link', { name: 'Admin' }).click();
    await h1(page).filter({ hasText: 'Admin' }).waitFor();
    await page.getByLabel('Token name').fill('ci-bot');
    await page.getByLabel('Role').selectOption('write');
    await page.getByRole('button', { name: 'Create token' }).click();
    const value = page.getByLabel('Value of the new token ci-bot');
    await value.waitFor();
    const token = await value.inputValue();
    assert(token.startsWith('tmc_'), 'the new token is shown');
    assert((await ctx.apiAs(token)('GET', '/api/user')).tokenInfo.name === 'ci-bot', 'the new token works');
    await page.getByRole('row', { name: /ci-bot/ }).waitFor();
    await check(ctx, page, 'admin-token-created');
    // Shown once: gone after a reload.
    await page.reload();
    await page.getByRole('row', { name: /ci-bot/ }).waitFor();
    assert(!(await page.content()).includes(token), 'the token value is not shown again');

    // A second session signed in with ci-bot; revoking it sends that session to sign-in.
    const other = await newPage(ctx, 'revoked-session');
    other.g.expect('GET', /\/api\//, 401);
    await other.page.goto(`${ctx.url}/`);
    await signIn(ctx, other.page, token);
    await h1(other.page).filter({ hasText: 'Stacks' }).waitFor();
    await page.getByRole('button', { name: 'Revoke token ci-bot' }).click();
    const dialog = page.getByRole('dialog', { name: 'Revoke the token ci-bot?' });
    await dialog.getByRole('button', { name: 'Revoke token' }).click();
    await dialog.waitFor({ state: 'detached' });
    await page.getByRole('row', { name: /ci-bot/ }).waitFor({ state: 'detached' });
    await other.page.getByRole('link', { name: 'Webhooks' }).click();
    await other.page.waitForURL(/\/-\/signin$/);
    await other.page.getByRole('alert').filter({ hasText: 'no longer accepts this token' }).waitFor();
    assert(await other.page.evaluate(() => sessionStorage.getItem('tarmac.token') === null), 'the revoked token is dropped');
    await check(ctx, other.page, 'signin-revoked');
    await other.page.close();

    // Org pause and resume.
    await page.getByRole('button', { name: 'Pause organization' }).click();
    await page.getByRole('button', { name: 'Resume organization' }).waitFor();
    assert((await ctx.api('GET', '/api/orgs/default/deployments/metadata')).paused === true, 'org paused');
    await page.getByRole('button', { name: 'Resume organization' }).click();
    await page.getByRole('button', { name: 'Pause organization' }).waitFor();
    assert((await ctx.api('GET', '/api/orgs/default/deployments/metadata')).paused === false, 'org resumed');
    // The server's engines, as deployments see them.
    await page.getByRole('row', { name: /terraform/ }).getByText(/Terraform v/).waitFor();
    await check(ctx, page, 'admin');
  });

  s.test('webhooks: add one, ping it, read its delivery and response, redeliver', async (ctx) => {
    const { page } = ctx.main;
    await page.getByRole('link', { name: 'Webhooks' }).click();
    await h1(page).filter({ hasText: 'Webhooks' }).waitFor();
    const orgSection = page.getByRole('region', { name: 'Organization webhooks' });
    await orgSection.getByLabel('Display name').fill('Receiver');
    await orgSection.getByLabel('Payload URL').fill(ctx.receiver.url);
    await orgSection.getByRole('button', { name: 'Add webhook' }).click();
    const card = page.getByRole('article', { name: 'Webhook Receiver' });
    await card.waitFor();
    await card.getByRole('button', { name: 'Ping' }).click();
    const deliveries = card.getByRole('table', { name: /Recent deliveries/ });
    await deliveries.getByText('200').first().waitFor();
    await eventually(() => ctx.receiver.received.length >= 1, { message: 'the receiver got the ping' });
    await deliveries.getByText('Request and response').first().click();
    await deliveries.getByText('ok-from-receiver').first().waitFor();
    await check(ctx, page, 'webhooks');
    const before = ctx.receiver.received.length;
    await deliveries.getByRole('button', { name: /^Redeliver/ }).first().click();
    await eventually(() => ctx.receiver.received.length > before, { message: 'the redelivery arrived' });
    await deliveries.getByRole('cell', { name: '2', exact: true }).first().waitFor();
    // A stack's own hook shows on its tab and on the org page.
    await ctx.api('POST', '/api/stacks/default/web/dev/hooks', { displayName: 'Stack receiver', payloadUrl: ctx.receiver.url });
    await page.reload();
    await page.getByRole('region', { name: 'Stack webhooks' }).getByRole('article', { name: 'Webhook Stack receiver' }).waitFor();
    await page.goto(`${ctx.url}/default/web/dev/webhooks`);
    await page.getByRole('article', { name: 'Webhook Stack receiver' }).waitFor();
    await check(ctx, page, 'stack-webhooks');
  });

  s.test('overview: stacks with last deployment, filter, live counts', async (ctx) => {
    const { page } = ctx.main;
    await page.getByRole('link', { name: 'Stacks' }).click();
    await h1(page).filter({ hasText: 'Stacks' }).waitFor();
    const table = page.getByRole('table', { name: 'Stacks of default' });
    const dev = table.getByRole('row', { name: /web\/dev/ });
    await dev.getByText('destroy #4').waitFor();
    await dev.getByText('succeeded').waitFor();
    await dev.getByText('yes').waitFor(); // schedules
    await table.getByRole('row', { name: /web\/slow/ }).getByText(/skipped|failed/).waitFor();
    await page.getByLabel('Filter stacks').fill('slow');
    await table.getByRole('row', { name: /web\/dev/ }).waitFor({ state: 'detached' });
    await table.getByRole('row', { name: /web\/slow/ }).waitFor();
    assert(new URL(page.url()).searchParams.get('q') === 'slow', 'the filter is in the URL');
    await page.getByLabel('Filter stacks').fill('');
    await table.getByRole('row', { name: /web\/dev/ }).waitFor();
    // Tags show with the stack, and the filter matches their values.
    await ctx.api('POST', '/api/stacks/default/web/dev/tags', { name: 'team', value: 'payments' });
    await page.getByLabel('Filter stacks').fill('payments');
    await table.getByRole('row', { name: /web\/slow/ }).waitFor({ state: 'detached' });
    await table.getByRole('row', { name: /web\/dev/ }).getByText('payments').waitFor();
    await page.getByLabel('Filter stacks').fill('');
    await table.getByRole('row', { name: /web\/slow/ }).waitFor();
    await page.locator('.live-counts').filter({ hasText: '0 running' }).waitFor();
    await check(ctx, page, 'overview');
    // Paging: 25 more stacks make two pages of 20 (ordered by project, then stack).
    await Promise.all(Array.from({ length: 25 }, (_, i) => ctx.api('POST', '/api/stacks/default/zz-bulk', { stackName: `s${String(i).padStart(2, '0')}` })));
    await page.reload();
    const pages = page.getByRole('navigation', { name: 'Stack pages' });
    await pages.getByText('Page 1 of 2').waitFor();
    await pages.getByRole('button', { name: 'Next →' }).click();
    await pages.getByText('Page 2 of 2').waitFor();
    await table.getByRole('row', { name: /zz-bulk\/s24/ }).waitFor();
    assert(new URL(page.url()).searchParams.get('page') === '2', 'the page is in the URL');
    await pages.getByRole('button', { name: '← Previous' }).click();
    await pages.getByText('Page 1 of 2').waitFor();
    await dev.getByRole('link', { name: 'web/dev' }).click();
    await page.waitForURL(/\/default\/web\/dev$/);
  });

  s.test('the header links the API\'s OpenAPI description', async (ctx) => {
    const { page } = ctx.main;
    const link = page.getByRole('banner').getByRole('link', { name: 'API' });
    const href = await link.getAttribute('href');
    assert(href === '/api/openapi.json', `the link is ${href}`);
    const doc = await page.evaluate(async (h) => (await fetch(h)).json(), href);
    assert(doc.openapi === '3.1.0', `openapi is ${doc.openapi}`);
    assert(doc.paths['/api/stacks/{org}/{project}/{stack}/deployments'], 'it describes the deployments route');
  });

  s.test('another org\'s token sees none of this org\'s stacks', async (ctx) => {
    const { page, g } = ctx.main;
    g.expect('GET', /\/api\/stacks\/default\/web\/dev$/, 404);
    const otherToken = await createToken(ctx.dataDir, 'other', 'admin', 'other-admin');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(/\/-\/signin$/);
    await page.getByText('You are signed out').waitFor();
    assert(await page.evaluate(() => sessionStorage.getItem('tarmac.token') === null), 'sign out clears the token');
    await signIn(ctx, page, otherToken);
    assert(new URL(page.url()).pathname === '/other', page.url());
    await page.getByText('No stacks yet').waitFor();
    assert(!(await page.content()).includes('web/dev'), 'no stack of default is listed');
    await check(ctx, page, 'overview-other-org');
    await page.goto(`${ctx.url}/default/web/dev`);
    await page.getByText('This stack does not exist').waitFor();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(/\/-\/signin$/);
    await signIn(ctx, page, ctx.token);
  });

  s.test('under a path prefix (a gateway or proxy removes it): pages, links, deep links, sign-in and the API keep it', async (ctx) => {
    // API Gateway's own URL shape in the AWS emulator, `$` and all.
    const prefix = '/_aws/execute-api/abc123/$default';
    const proxy = await startPrefixProxy(ctx.url, prefix);
    const { page } = await newPage(ctx, 'prefix');
    const seen = [];
    page.on('request', (req) => seen.push(req.url()));
    const under = (u) => new URL(u).pathname.startsWith(`${prefix}/`);
    // A deep link in a tab with no token: sign in under the prefix, then land on it.
    await page.goto(`${proxy.url}/default/web/dev/deployments/1`);
    await page.waitForURL((u) => u.pathname === `${prefix}/-/signin`);
    await check(ctx, page, 'prefix-signin');
    await signIn(ctx, page, ctx.token);
    await page.waitForURL((u) => u.pathname === `${prefix}/default/web/dev/deployments/1`);
    await h1(page).filter({ hasText: 'Deployment #1' }).waitFor();
    // The log comes through the proxy (the stream too).
    await page.locator('.log').getByText('Apply complete').first().waitFor({ timeout: 30_000 });
    await page.locator('.live-mode').filter({ hasText: 'Finished: succeeded' }).waitFor();
    // Every link and image carries the prefix, so a new tab or a middle-click works too.
    // (The stylesheet and the script are relative to where the page was loaded, and loaded
    // once; the icon, fetched again after a navigation, is pinned.)
    const refs = () => page.evaluate(() => [...document.querySelectorAll('a[href], img[src], link[rel~="icon"]')]
      .map((e) => e.getAttribute('href') ?? e.getAttribute('src'))
      .filter((r) => !r.startsWith('#') && !r.startsWith('blob:')));
    const badRefs = (list) => list.filter((r) => {
      const resolved = new URL(r, page.url());
      return !resolved.pathname.startsWith(`${prefix}/`) || (r.startsWith('/') && !r.startsWith(`${prefix}/`));
    });
    let list = await refs();
    assert(list.length > 5 && !badRefs(list).length, `links outside the prefix: ${badRefs(list).join(', ')} at ${page.url()}`);
    await check(ctx, page, 'prefix-deployment');
    // Clicks route in the page, under the prefix; back goes back.
    await page.locator('.breadcrumbs').getByRole('link', { name: 'dev', exact: true }).click();
    await page.waitForURL((u) => u.pathname === `${prefix}/default/web/dev`);
    await settled(page);
    await page.getByRole('link', { name: 'Settings', exact: true }).click();
    await page.waitForURL((u) => u.pathname === `${prefix}/default/web/dev/settings`);
    await settled(page);
    await page.getByText('refs/heads/main').first().waitFor();
    list = await refs();
    assert(!badRefs(list).length, `links outside the prefix: ${badRefs(list).join(', ')}`);
    await page.goBack();
    await page.waitForURL((u) => u.pathname === `${prefix}/default/web/dev`);
    await page.getByRole('link', { name: 'Stacks', exact: true }).click();
    await page.waitForURL((u) => u.pathname === `${prefix}/default`);
    await h1(page).filter({ hasText: 'Stacks' }).waitFor();
    await page.getByRole('link', { name: 'web/dev', exact: true }).waitFor();
    list = await refs();
    assert(!badRefs(list).length, `links outside the prefix: ${badRefs(list).join(', ')}`);
    // A reload of a deep link, and the prefix's root, open the app again.
    await page.goto(`${proxy.url}/default/web/dev/schedules`);
    await settled(page);
    await h1(page).filter({ hasText: 'web/dev' }).waitFor();
    await page.goto(`${proxy.url}/`);
    await page.waitForURL((u) => u.pathname === `${prefix}/default`);
    await h1(page).filter({ hasText: 'Stacks' }).waitFor();
    // Sign out and in again, under the prefix.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL((u) => u.pathname === `${prefix}/-/signin`);
    await signIn(ctx, page, ctx.token);
    await page.waitForURL((u) => u.pathname === `${prefix}/default`);
    await settled(page);
    // Nothing the page asked for was outside the prefix; the proxy saw only the prefix.
    const outside = seen.filter((u) => u.startsWith('http') && !under(u));
    assert(!outside.length, `requests outside the prefix: ${outside.join(', ')}`);
    assert(proxy.requests.some((r) => r.includes('/api/stacks/default/web/dev')), 'the API went through the proxy');
    await page.close();
  });

  s.test('narrow (390x844) and dark mode pages are readable and pass axe', async (ctx) => {
    const { page } = ctx.main;
    const pages = [
      ['overview', '/default'],
      ['stack', '/default/web/dev'],
      ['deployment', '/default/web/dev/deployments/1'],
      ['settings', '/default/web/dev/settings'],
      ['schedules', '/default/web/dev/schedules'],
    ];
    const noOverflow = async (name) => {
      const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      assert(scroll <= width + 1, `${name}: no sideways scrolling at ${width}px (content is ${scroll}px)`);
    };
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [name, p] of pages) {
      await page.goto(`${ctx.url}${p}`);
      await h1(page).waitFor();
      if (name === 'deployment') await page.locator('.live-mode').filter({ hasText: 'Finished' }).waitFor();
      await noOverflow(name);
      await check(ctx, page, `mobile-${name}`);
    }
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.emulateMedia({ colorScheme: 'dark' });
    for (const [name, p] of pages) {
      await page.goto(`${ctx.url}${p}`);
      await h1(page).waitFor();
      if (name === 'deployment') await page.locator('.live-mode').filter({ hasText: 'Finished' }).waitFor();
      const bg = await page.evaluate(() => getComputedStyle(document.documentElement).backgroundColor);
      const [r, gg, b] = bg.match(/\d+/g).map(Number);
      assert(r + gg + b < 150, `${name}: dark background in dark mode (${bg})`);
      await check(ctx, page, `dark-${name}`);
    }
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${ctx.url}/default/web/dev/deployments/1`);
    await page.locator('.live-mode').filter({ hasText: 'Finished' }).waitFor();
    await check(ctx, page, 'dark-mobile-deployment');
    await page.emulateMedia({ colorScheme: 'light' });
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  s.test('polling fallback: with the stream unavailable (404, or no first event in 3 s), the log comes by logs?continuationToken=', async (ctx) => {
    const { page, g } = ctx.main;
    g.expect('GET', /\/stream(\?|$)/, 404);
    await page.route('**/deployments/*/stream*', (route) => route.fulfill({
      status: 404, contentType: 'application/json', body: '{"code":404,"message":"not here"}',
    }));
    const polled = [];
    const onRequest = (req) => {
      if (/\/logs(\?|$)/.test(req.url())) polled.push(req.url());
    };
    page.on('request', onRequest);
    const created = await ctx.api('POST', '/api/stacks/default/web/dev/deployments', { operation: 'update', inheritSettings: true });
    await page.goto(created.consoleUrl);
    await page.locator('.live-mode').filter({ hasText: 'checking every second' }).waitFor();
    await page.locator('.log').getByText('Apply complete').first().waitFor({ timeout: 30_000 });
    await page.locator('.deploy-summary .status-succeeded').waitFor({ timeout: 30_000 });
    assert(polled.length >= 1 && polled.some((u) => u.includes('continuationToken=')), `polled with a token: ${polled.join(', ')}`);
    await page.unroute('**/deployments/*/stream*');

    // A stream that never opens (a proxy that buffers it): after 3 s, polling.
    await page.route('**/deployments/*/stream*', () => {}); // held, never answered
    polled.length = 0;
    let firstPoll = 0;
    page.on('request', (req) => {
      if (!firstPoll && /\/logs(\?|$)/.test(req.url())) firstPoll = Date.now();
    });
    const second = await ctx.api('POST', '/api/stacks/default/web/dev/deployments', { operation: 'preview', inheritSettings: true });
    const opened = Date.now();
    await page.goto(second.consoleUrl);
    await page.locator('.deploy-summary .status-succeeded').waitFor({ timeout: 30_000 });
    await page.locator('.live-mode').filter({ hasText: 'Finished: succeeded' }).waitFor();
    assert(firstPoll, 'polled after the stream timed out');
    assert(firstPoll - opened >= 2500, `waited about 3 s for the stream's first event, not ${firstPoll - opened} ms`);
    await page.locator('.log').getByText('terraform preview succeeded').first().waitFor();
    page.off('request', onRequest);
    await page.unrouteAll({ behavior: 'ignoreErrors' });
  });

  s.test('unit: the ANSI renderer and the SSE parser', async (ctx) => {
    const { page } = ctx.main;
    const failures = await page.evaluate(async () => {
      const { renderAnsi, parseAnsi, stripAnsi, color256 } = await import('/console/js/ansi.js');
      const { sseParser } = await import('/console/js/stream.js');
      const out = [];
      const eq = (name, got, want) => {
        if (JSON.stringify(got) !== JSON.stringify(want)) out.push(`${name}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
      };
      const render = (text) => {
        const div = document.createElement('div');
        renderAnsi(text, div);
        return [...div.childNodes].map((n) => (n.nodeType === 3 ? ['#text', n.textContent]
          : [n.className, n.textContent, n.style.color || '', n.style.backgroundColor || '']));
      };
      const E = '\x1b[';
      eq('plain', render('hello'), [['#text', 'hello']]);
      eq('red then reset', render(`${E}31mred${E}0m plain`), [['ansi-fg-1', 'red', '', ''], ['#text', ' plain']]);
      eq('all 8 fg', [30, 31, 32, 33, 34, 35, 36, 37].map((c) => render(`${E}${c}mx`)[0][0]), [0, 1, 2, 3, 4, 5, 6, 7].map((i) => `ansi-fg-${i}`));
      eq('bright fg', [90, 97].map((c) => render(`${E}${c}mx`)[0][0]), ['ansi-fg-8', 'ansi-fg-15']);
      eq('bg', [40, 47, 100, 107].map((c) => render(`${E}${c}mx`)[0][0]), ['ansi-bg-0', 'ansi-bg-7', 'ansi-bg-8', 'ansi-bg-15']);
      eq('256 low is themed', render(`${E}38;5;9mx`)[0][0], 'ansi-fg-9');
      eq('256 cube', render(`${E}38;5;196mx`)[0].slice(2), ['rgb(255, 0, 0)', '']);
      eq('256 grey bg', render(`${E}48;5;232mx`)[0].slice(2), ['', 'rgb(8, 8, 8)']);
      eq('color256(21)', color256(21), [0, 0, 255]);
      eq('truecolor fg', render(`${E}38;2;10;20;30mx`)[0].slice(2), ['rgb(10, 20, 30)', '']);
      eq('truecolor bg', render(`${E}48;2;1;2;3mx`)[0].slice(2), ['', 'rgb(1, 2, 3)']);
      eq('styles', render(`${E}1;2;3;4mx`)[0][0], 'ansi-bold ansi-dim ansi-italic ansi-underline');
      eq('style resets', render(`${E}1;3;4mx${E}22;23;24my`)[1], ['#text', 'y']);
      eq('fg/bg reset', render(`${E}31;42mx${E}39my${E}49mz`).map((n) => n[0]), ['ansi-fg-1 ansi-bg-2', 'ansi-bg-2', '#text']);
      eq('empty SGR resets', render(`${E}31mx${E}my`)[1], ['#text', 'y']);
      eq('combined', render(`${E}1;31;44mx`)[0][0], 'ansi-bold ansi-fg-1 ansi-bg-4');
      eq('non-SGR dropped', render(`a${E}2Kb${E}1Ac\x1b]0;title\x07d`), [['#text', 'a'], ['#text', 'b'], ['#text', 'c'], ['#text', 'd']]);
      eq('no markup', render('<b>x</b>'), [['#text', '<b>x</b>']]);
      eq('strip', stripAnsi(`${E}1;31merror${E}0m: x`), 'error: x');
      const state = { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
      parseAnsi(`${E}32mgreen`, state);
      eq('state carries to the next line', parseAnsi('still', state)[0].style.fg, { index: 2 });
      // SSE: events split across chunks, comments, multi-line data, CRLF.
      const events = [];
      const feed = sseParser((e) => events.push(e));
      feed('event: log\nid: 1\ndata: {"a"');
      feed(':1}\n\n: keep-alive\n\nevent: end\r\ndata: {}\r\n\r\n');
      feed('data: one\ndata: two\n\n');
      eq('sse', events, [
        { event: 'log', data: '{"a":1}', id: '1' },
        { event: 'end', data: '{}', id: '1' },
        { event: 'message', data: 'one\ntwo', id: '1' },
      ]);
      return out;
    });
    assert(!failures.length, failures.join('\n'));
  });

  s.test('approvals: a gated deployment waits on its page, shows its approval, and runs when approved there', async (ctx) => {
    const { page } = ctx.main;
    const requester = await createToken(ctx.dataDir, 'default', 'write', 'requester');
    await ctx.api('POST', '/api/stacks/default/web/gated/deployments/settings', {
      sourceContext: { git: { repoUrl: ctx.repos.quick, branch: 'refs/heads/main', repoDir: 'infra' } },
      approvals: { operations: ['update'], required: 1, approvers: ['admin'] },
    });
    const created = await ctx.apiAs(requester)('POST', '/api/stacks/default/web/gated/deployments', { operation: 'update' });
    await page.goto(`${ctx.url}/default/web/gated/deployments/${created.version}`);
    await settled(page);
    await page.locator('.approval').getByText('0 of 1 given').waitFor();
    await page.getByText('Waiting for approval: 0 of 1 given.').waitFor();
    await check(ctx, page, 'deployment-awaiting-approval');
    await page.getByRole('button', { name: 'Approve' }).click();
    await page.locator('.deploy-summary').getByText('succeeded').waitFor({ timeout: 60_000 });
    await page.locator('.approval').getByText('1 of 1 given').waitFor();
    assert(await page.getByRole('button', { name: 'Approve' }).isHidden(), 'no Approve once decided');
    const d = await ctx.api('GET', `/api/stacks/default/web/gated/deployments/${created.id}`);
    assert(d.approval.status === 'approved' && d.approval.approvedBy.length === 1, JSON.stringify(d.approval));
    assert(d.requestedBy.name === 'requester', JSON.stringify(d.requestedBy));
  });

  s.test('static: the app\'s files have no inline script, handler, style attribute, markup sink or external origin', async (ctx) => {
    const dir = path.join(ROOT, 'shared', 'console');
    const files = (await readdir(dir, { recursive: true })).filter((f) => /\.(html|js|css|svg)$/.test(f));
    const problems = [];
    for (const f of files) {
      const text = await readFile(path.join(dir, f), 'utf8');
      const rules = [
        [/innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function/, 'an HTML or code sink'],
        [/\son[a-z]+\s*=\s*["']/i, 'an inline event handler'],
        [/style\s*=\s*["']|setAttribute\(\s*['"]style/, 'a style attribute'],
        [/(?:src|href|action)\s*[=:]\s*["'`]?(?:https?:)?\/\/|from\s+["']https?:|import\(\s*["'`]https?:|fetch\(\s*["'`]https?:/, 'an external origin'],
        [/@import|@font-face|url\(\s*['"]?(https?:|\/\/)/, 'an external stylesheet or font'],
      ];
      for (const [re, what] of rules) if (re.test(text)) problems.push(`${f}: ${what} (${text.match(re)[0]})`);
    }
    const html = await readFile(path.join(dir, 'index.html'), 'utf8');
    assert(!/<script(?![^>]*\ssrc=)/.test(html), 'index.html has no inline script');
    const loads = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]).filter((u) => u !== '#main');
    // A template: the files relative to the path the page is served at (`{{root}}` is the way
    // up), so that it works under a prefix that a gateway or proxy removes.
    const files3 = ['console/favicon.svg', 'console/app.css', 'console/js/app.js'];
    assert(JSON.stringify(loads) === JSON.stringify(files3.map((f) => `{{root}}${f}`)), `index.html loads ${loads}`);
    const served = await (await fetch(`${ctx.url}/default/web/dev`)).text();
    const servedLoads = [...served.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]).filter((u) => u !== '#main');
    assert(JSON.stringify(servedLoads) === JSON.stringify(files3.map((f) => `../../${f}`)), `/default/web/dev loads ${servedLoads}`);
    assert(served.includes('<meta name="tarmac-path" content="/default/web/dev">'), 'the page names the path it was served at');
    assert(!problems.length, problems.join('\n'));
  });
}
