// Admin: the org's API tokens (create, shown once; list; revoke) and pausing the whole org.
// Both need an admin token; other roles get a 403, shown where it happened.

import { api, orgApi, session } from '../api.js';
import { h, replace, badge, timeEl } from '../dom.js';
import { field, select, errorSlot, showError, withBusy, table, empty, confirmAction, copyText } from '../ui.js';

const ROLES = [['read', 'read: view only'], ['write', 'write: deploy and change stacks'], ['admin', 'admin: also tokens, org hooks, org pause']];

export async function adminView(ctx) {
  const { org } = ctx.params;
  const view = h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: 'Admin' }), h('p', { class: 'muted', text: `Organization ${org}` }))),
    await tokensSection(ctx, org),
    await pauseSection(ctx, org),
    await serverSection(ctx));
  return view;
}

/** The server's version and the engines its deployments find (`GET /api/capabilities`). */
async function serverSection(ctx) {
  let body;
  try {
    body = await api('/api/capabilities', { signal: ctx.signal });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    return h('section', { 'aria-labelledby': 'server-h' }, h('h2', { id: 'server-h', text: 'Server' }),
      h('p', { class: 'error', role: 'alert', text: err.message }));
  }
  const tarmac = (body && body.tarmac) || {};
  const engines = tarmac.engines || [];
  return h('section', { 'aria-labelledby': 'server-h' },
    h('h2', { id: 'server-h', text: 'Server' }),
    h('p', {}, 'Tarmac ', h('code', { text: tarmac.version || 'unknown' })),
    engines.length
      ? table('Engines and tools on the deployments\' PATH', ['Tool', 'Version', 'Path'], engines.map((e) => h('tr', {},
        h('th', { scope: 'row', dataset: { label: 'Tool' }, text: e.name }),
        h('td', { dataset: { label: 'Version' } }, e.found ? (e.version || 'found') : badge('not found', 'warn')),
        h('td', { dataset: { label: 'Path' } }, e.path ? h('code', { class: 'break', text: e.path }) : '—'))), { className: 'responsive' })
      : null);
}

async function tokensSection(ctx, org) {
  const base = `${orgApi(org)}/tokens`;
  const holder = h('div', {});
  const listSlot = errorSlot();
  const reveal = h('div', { class: 'token-reveal', 'aria-live': 'polite' });

  async function load() {
    try {
      const body = await api(base, { signal: ctx.signal });
      showError(listSlot, null);
      const tokens = body.tokens || [];
      replace(holder, tokens.length
        ? table('API tokens', ['Name', 'Role', 'Created', ''], tokens.map((t) => tokenRow(base, t, load)), { className: 'responsive' })
        : empty('No tokens.'));
    } catch (err) {
      if (err.name === 'AbortError') return;
      replace(holder);
      showError(listSlot, err.status === 403 ? new Error('Only an admin token can see and manage tokens.') : err);
    }
  }

  const name = field('Token name', { name: 'tokenName', hint: 'Shown as the requester of the deployments it starts.' });
  const roleSelect = select(ROLES, 'write');
  const role = field('Role', { control: roleSelect });
  const create = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Create token' });
  const slot = errorSlot();
  const form = h('form', { class: 'token-form', novalidate: true },
    h('h3', { text: 'New token' }), name.el, role.el, h('div', { class: 'form-actions' }, create, slot));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    showError(name.error, null);
    const tokenName = name.input.value.trim();
    if (!tokenName) {
      showError(name.error, new Error('Give the token a name.'));
      name.input.focus();
      return;
    }
    withBusy(create, 'Creating…', async () => {
      try {
        const made = await api(base, { method: 'POST', body: { name: tokenName, role: roleSelect.value } });
        showOnce(reveal, made);
        name.input.value = '';
        await load();
      } catch (err) {
        if (err.status === 400 && /name/i.test(err.message)) {
          showError(name.error, err);
          return;
        }
        throw err;
      }
    }, slot);
  });

  await load();
  return h('section', { 'aria-labelledby': 'tokens-h' },
    h('h2', { id: 'tokens-h', text: 'API tokens' }),
    h('p', { class: 'hint', text: 'Tokens belong to this organization. Only their hashes are stored: a new token is shown once.' }),
    reveal, form, listSlot, holder);
}

/** The new token's value, shown once, with a Copy button; gone when dismissed. */
function showOnce(box, made) {
  const value = h('input', { type: 'text', readOnly: true, value: made.tokenValue, class: 'mono token-value', 'aria-label': `Value of the new token ${made.name}` });
  const copy = h('button', { type: 'button', class: 'btn btn-small', text: 'Copy' });
  const copied = h('span', { role: 'status', class: 'muted' });
  copy.addEventListener('click', () => copyText(made.tokenValue).then(() => {
    copied.textContent = 'Copied.';
  }, () => {
    copied.textContent = 'Copy failed: select the value and copy it.';
  }));
  const done = h('button', { type: 'button', class: 'btn btn-small', text: 'I saved it' });
  done.addEventListener('click', () => replace(box));
  replace(box, h('div', { class: 'notice notice-info' },
    h('p', {}, h('strong', { text: `Token ${made.name} (${made.role}) created.` }), ' Copy it now: it will not be shown again.'),
    h('div', { class: 'inline' }, value, copy, done, copied)));
  value.focus();
  value.select();
}

function tokenRow(base, t, reload) {
  const current = session.user && session.user.tokenInfo && session.user.tokenInfo.name === t.name;
  const revoke = h('button', { type: 'button', class: 'btn btn-small btn-danger', text: 'Revoke', 'aria-label': `Revoke token ${t.name}` });
  revoke.addEventListener('click', () => confirmAction({
    title: `Revoke the token ${t.name}?`,
    message: current
      ? 'This looks like the token you are signed in with: revoking it signs you out.'
      : 'Anything using it gets 401 from now on.',
    confirmLabel: 'Revoke token',
    busyLabel: 'Revoking…',
    onConfirm: async () => {
      await api(`${base}/${encodeURIComponent(t.id)}`, { method: 'DELETE' });
      return true;
    },
  }).then((done) => done && reload()));
  return h('tr', {},
    h('th', { scope: 'row', dataset: { label: 'Name' } }, t.name, current ? [' ', badge('this session', 'info')] : null),
    h('td', { dataset: { label: 'Role' } }, badge(t.role)),
    h('td', { dataset: { label: 'Created' } }, timeEl(t.created)),
    h('td', { dataset: { label: 'Actions' } }, revoke));
}

async function pauseSection(ctx, org) {
  const state = h('p', { class: 'inline', role: 'status' });
  const slot = errorSlot();
  const button = h('button', { type: 'button', class: 'btn' });
  let paused = false;
  const render = () => {
    replace(state, paused ? badge('paused', 'warn') : badge('running', 'ok'),
      paused ? ' No deployment of this organization starts; queued ones wait.' : ' Deployments start as they are queued.');
    button.textContent = paused ? 'Resume organization' : 'Pause organization';
  };
  try {
    const meta = await api(`${orgApi(org)}/deployments/metadata`, { signal: ctx.signal });
    paused = !!meta.paused;
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    showError(slot, err);
  }
  render();
  button.addEventListener('click', () => withBusy(button, paused ? 'Resuming…' : 'Pausing…', async () => {
    await api(`${orgApi(org)}/deployments/${paused ? 'resume' : 'pause'}`, { method: 'POST' });
    paused = !paused;
  }, slot).then(render));
  return h('section', { 'aria-labelledby': 'pause-h' },
    h('h2', { id: 'pause-h', text: 'Pause deployments' }), state, h('div', { class: 'button-row' }, button), slot);
}
