// Webhooks: the org's hooks and each stack's, their recent deliveries with the receiver's
// response, Redeliver, Ping, and a form to add one.

import { api, orgApi, stackApi, qs } from '../api.js';
import { h, replace, badge, timeEl, formatDuration, stackHref, uid } from '../dom.js';
import { field, select, errorSlot, showError, withBusy, table, empty, confirmAction, loading } from '../ui.js';

const FORMATS = [['raw', 'Raw JSON (Pulumi\'s payload)'], ['slack', 'Slack'], ['ms_teams', 'Microsoft Teams'], ['pulumi_deployments', 'Deploy another stack (project/stack)']];
const STACKS_SCANNED = 100;

/** The org's Webhooks page: org hooks, then every stack's. */
export async function webhooksView(ctx) {
  const { org } = ctx.params;
  const orgPanel = await webhooksPanel(ctx, { scope: 'org', org });
  const stackHooks = h('div', {}, loading('Looking for stack webhooks…'));
  const view = h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: 'Webhooks' }), h('p', { class: 'muted', text: `Organization ${org}` }))),
    h('section', { 'aria-labelledby': 'org-hooks' }, h('h2', { id: 'org-hooks', text: 'Organization webhooks' }),
      h('p', { class: 'hint', text: 'They hear every stack\'s events. Changing them needs an admin token.' }), orgPanel),
    h('section', { 'aria-labelledby': 'stack-hooks' }, h('h2', { id: 'stack-hooks', text: 'Stack webhooks' }), stackHooks));
  loadStackHooks(ctx, org, stackHooks);
  return view;
}

/** Finds the hooks of the org's stacks (the first 100), a few requests at a time. */
async function loadStackHooks(ctx, org, holder) {
  try {
    const body = await api(`${orgApi(org)}/stacks${qs({ pageSize: STACKS_SCANNED })}`, { signal: ctx.signal });
    const stacks = body.stacks || [];
    const found = [];
    let next = 0;
    const worker = async () => {
      while (next < stacks.length && ctx.active) {
        const s = stacks[next];
        next += 1;
        const hooks = await api(`${stackApi(org, s.projectName, s.stackName)}/hooks`, { signal: ctx.signal }).catch(() => []);
        if (hooks.length) found.push([s, hooks]);
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    if (!ctx.active) return;
    found.sort(([a], [b]) => `${a.projectName}/${a.stackName}`.localeCompare(`${b.projectName}/${b.stackName}`));
    replace(holder,
      found.length
        ? found.map(([s, hooks]) => h('section', { class: 'stack-hooks', 'aria-label': `${s.projectName}/${s.stackName}` },
          h('h3', {}, h('a', { href: stackHref(org, s.projectName, s.stackName, 'webhooks'), text: `${s.projectName}/${s.stackName}` })),
          hooks.map((hook) => hookCard({ base: `${stackApi(org, s.projectName, s.stackName)}/hooks`, hook, reload: () => loadStackHooks(ctx, org, holder) }))))
        : empty('No stack has a webhook of its own. Add one on a stack\'s Webhooks tab.'),
      (body.total || 0) > STACKS_SCANNED ? h('p', { class: 'hint', text: `Only the first ${STACKS_SCANNED} stacks were searched.` }) : null);
  } catch (err) {
    if (err.name === 'AbortError') return;
    replace(holder, h('p', { class: 'error', role: 'alert', text: err.message }));
  }
}

/** The hooks of one scope (org or stack) and a form to add one. */
export async function webhooksPanel(ctx, { scope, org, project, stack }) {
  const base = scope === 'org' ? `${orgApi(org)}/hooks` : `${stackApi(org, project, stack)}/hooks`;
  const holder = h('div', { class: 'hooks' });
  const slot = errorSlot();
  async function load() {
    try {
      const hooks = await api(base, { signal: ctx.signal });
      showError(slot, null);
      replace(holder, hooks.length
        ? hooks.map((hook) => hookCard({ base, hook, reload: load }))
        : empty('No webhooks yet.'));
    } catch (err) {
      if (err.name !== 'AbortError') showError(slot, err);
    }
  }
  await load();
  return h('div', { class: 'hooks-panel' }, slot, holder, createForm(base, load));
}

function hookCard({ base, hook, reload }) {
  const hookBase = `${base}/${encodeURIComponent(hook.name)}`;
  const title = hook.displayName || hook.name;
  const slot = errorSlot();
  const deliveriesId = uid('deliveries');
  const deliveries = h('div', { id: deliveriesId, class: 'deliveries', hidden: true });
  const toggle = h('button', { type: 'button', class: 'btn btn-small', text: 'Deliveries', 'aria-expanded': 'false', 'aria-controls': deliveriesId });

  const loadDeliveries = async () => {
    const list = await api(`${hookBase}/deliveries`);
    renderDeliveries(deliveries, list, hookBase, loadDeliveries);
  };
  toggle.addEventListener('click', () => {
    if (toggle.getAttribute('aria-expanded') === 'true') {
      toggle.setAttribute('aria-expanded', 'false');
      deliveries.hidden = true;
      return;
    }
    withBusy(toggle, 'Loading…', async () => {
      await loadDeliveries();
      deliveries.hidden = false;
      toggle.setAttribute('aria-expanded', 'true');
    }, slot);
  });

  const ping = h('button', { type: 'button', class: 'btn btn-small', text: 'Ping' });
  ping.addEventListener('click', () => withBusy(ping, 'Pinging…', async () => {
    await api(`${hookBase}/ping`, { method: 'POST' });
    await loadDeliveries();
    deliveries.hidden = false;
    toggle.setAttribute('aria-expanded', 'true');
  }, slot));

  const del = h('button', { type: 'button', class: 'btn btn-small btn-danger', text: 'Delete' });
  del.addEventListener('click', () => confirmAction({
    title: `Delete the webhook ${title}?`,
    message: 'It stops receiving events; its delivery log goes with it.',
    confirmLabel: 'Delete webhook',
    busyLabel: 'Deleting…',
    onConfirm: async () => {
      await api(hookBase, { method: 'DELETE' });
      return true;
    },
  }).then((done) => done && reload()));

  return h('article', { class: 'card hook', 'aria-label': `Webhook ${title}` },
    h('div', { class: 'card-head' },
      h('h3', { text: title }),
      h('span', { class: 'inline' },
        hook.active ? badge('active', 'ok') : badge('inactive', 'warn'),
        badge(hook.format || 'raw'),
        hook.hasSecret ? badge('signed', 'info') : null)),
    h('p', { class: 'mono break', text: hook.payloadUrl }),
    (hook.filters || []).length ? h('p', { class: 'hint', text: `Events: ${hook.filters.join(', ')}` }) : h('p', { class: 'hint', text: 'Events: all' }),
    h('div', { class: 'button-row' }, toggle, ping, del),
    slot,
    deliveries);
}

function renderDeliveries(box, list, hookBase, reload) {
  if (!list.length) {
    replace(box, empty('No deliveries yet.'));
    return;
  }
  const rows = list.map((d) => {
    const slot = errorSlot();
    const again = h('button', { type: 'button', class: 'btn btn-small', text: 'Redeliver', 'aria-label': `Redeliver ${d.event || d.kind} (attempt ${d.attempt})` });
    again.addEventListener('click', () => withBusy(again, 'Redelivering…', async () => {
      await api(`${hookBase}/deliveries/${encodeURIComponent(d.id)}/redeliver`, { method: 'POST' });
      await reload();
    }, slot));
    const ok = d.responseCode >= 200 && d.responseCode < 300;
    const details = h('details', { class: 'delivery-details' },
      h('summary', { text: 'Request and response' }),
      h('dl', { class: 'props' },
        h('dt', { text: 'URL' }), h('dd', { class: 'mono break', text: d.requestUrl || '—' }),
        h('dt', { text: 'Payload' }), h('dd', {}, h('pre', { class: 'json', text: pretty(d.payload) })),
        h('dt', { text: 'Response' }), h('dd', {}, h('pre', { class: 'json', text: d.responseBody || '(empty)' }))));
    return h('tr', {},
      h('th', { scope: 'row', dataset: { label: 'Event' }, text: d.event || d.kind }),
      h('td', { dataset: { label: 'Attempt' }, text: String(d.attempt ?? '') }),
      h('td', { dataset: { label: 'Sent' } }, timeEl(d.timestamp)),
      h('td', { dataset: { label: 'Duration' }, text: formatDuration(d.duration) }),
      h('td', { dataset: { label: 'Response' } }, d.responseCode ? badge(String(d.responseCode), ok ? 'ok' : 'bad') : badge('no answer', 'bad')),
      h('td', { dataset: { label: 'Details' } }, details),
      h('td', { dataset: { label: 'Actions' } }, again, slot));
  });
  replace(box, table('Recent deliveries, newest first', ['Event', 'Attempt', 'Sent', 'Duration', 'Response', 'Details', ''], rows, { className: 'responsive' }));
}

function pretty(payload) {
  if (typeof payload !== 'string') return JSON.stringify(payload, null, 2);
  try {
    return JSON.stringify(JSON.parse(payload), null, 2);
  } catch {
    return payload;
  }
}

function createForm(base, reload) {
  const name = field('Display name', { name: 'displayName' });
  const url = field('Payload URL', { type: 'url', name: 'payloadUrl', placeholder: 'https://hooks.example.com/tarmac', hint: 'For "Deploy another stack": project/stack of this org.' });
  const formatSelect = select(FORMATS, 'raw');
  const format = field('Format', { control: formatSelect });
  const secret = field('Signing secret (optional)', { type: 'password', name: 'secret', autocomplete: 'new-password', hint: 'Signs each payload (HMAC-SHA256). Stored encrypted, never shown again.' });
  const active = field('Active', { type: 'checkbox', name: 'active' });
  active.input.checked = true;
  const save = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Add webhook' });
  const slot = errorSlot();
  const form = h('form', { class: 'hook-form', novalidate: true },
    h('h3', { text: 'Add a webhook' }), name.el, url.el, format.el, secret.el, active.el,
    h('div', { class: 'form-actions' }, save, slot));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    showError(url.error, null);
    if (!url.input.value.trim()) {
      showError(url.error, new Error('Enter the URL to send events to.'));
      url.input.focus();
      return;
    }
    const body = {
      displayName: name.input.value.trim() || undefined,
      payloadUrl: url.input.value.trim(),
      format: formatSelect.value,
      active: active.input.checked,
    };
    if (secret.input.value) body.secret = secret.input.value;
    withBusy(save, 'Adding…', async () => {
      try {
        await api(base, { method: 'POST', body });
      } catch (err) {
        if (err.status === 400 && /payloadUrl/i.test(err.message)) {
          showError(url.error, err);
          url.input.focus();
          return;
        }
        throw err;
      }
      form.reset();
      active.input.checked = true;
      await reload();
    }, slot);
  });
  return form;
}
