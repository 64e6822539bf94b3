// A stack's schedules: cron and one-time deployments, drift detection (with auto-remediate) and
// TTL destroys. Create, pause/resume, delete, and read each one's history.

import { api, qs } from '../api.js';
import { h, replace, badge, statusBadge, deploymentHref } from '../dom.js';
import { field, select, errorSlot, showError, withBusy, table, empty, confirmAction, loading } from '../ui.js';

const KINDS = [
  ['cron', 'Deployment on a cron schedule'],
  ['once', 'One-time deployment'],
  ['drift', 'Drift detection'],
  ['ttl', 'TTL: destroy at a time'],
];
const OPERATIONS = [['update', 'update'], ['preview', 'preview'], ['refresh', 'refresh'], ['destroy', 'destroy'], ['detect-drift', 'detect-drift']];

/** What kind a stored schedule is, from its request (as the contract says). */
export function scheduleKind(s) {
  const req = (s.definition && s.definition.request) || {};
  if (req.operation === 'detect-drift') return 'drift';
  if (req.operation === 'destroy' && req.operationContext) return 'ttl';
  return s.scheduleCron ? 'cron' : 'once';
}

const KIND_LABEL = { cron: 'Cron', once: 'One-time', drift: 'Drift detection', ttl: 'TTL' };

export async function schedulesTab(sc) {
  const { ctx, S } = sc;
  const base = `${S}/deployments/schedules`;
  const listSlot = errorSlot();
  const holder = h('div', {}, loading('Loading schedules…'));

  async function load() {
    try {
      const body = await api(base, { signal: ctx.signal });
      showError(listSlot, null);
      const list = body.schedules || [];
      replace(holder, list.length
        ? table('Schedules', ['Kind', 'When', 'Runs', 'Next', 'Last', 'State', 'Actions'], list.map((s) => scheduleRow(sc, s, load)), { className: 'responsive' })
        : empty('No schedules.'));
    } catch (err) {
      if (err.name !== 'AbortError') showError(listSlot, err);
    }
  }
  await load();
  return h('section', { class: 'schedules', 'aria-label': 'Schedules' }, listSlot, holder, createForm(S, load));
}

function scheduleRow(sc, s, reload) {
  const { S } = sc;
  const kind = scheduleKind(s);
  const req = (s.definition && s.definition.request) || {};
  const opts = (req.operationContext && req.operationContext.options) || {};
  const base = `${S}/deployments/schedules/${encodeURIComponent(s.id)}`;
  const slot = errorSlot();
  const cell = (label, ...c) => h('td', { dataset: { label } }, ...c);

  const toggle = h('button', { type: 'button', class: 'btn btn-small', text: s.paused ? 'Resume' : 'Pause', 'aria-label': `${s.paused ? 'Resume' : 'Pause'} schedule ${describe(s)}` });
  toggle.addEventListener('click', () => withBusy(toggle, s.paused ? 'Resuming…' : 'Pausing…', async () => {
    await api(`${base}/${s.paused ? 'resume' : 'pause'}`, { method: 'POST' });
    await reload();
  }, slot));
  const del = h('button', { type: 'button', class: 'btn btn-small btn-danger', text: 'Delete', 'aria-label': `Delete schedule ${describe(s)}` });
  del.addEventListener('click', () => confirmAction({
    title: 'Delete this schedule?',
    message: `${KIND_LABEL[kind]} schedule ${describe(s)}. Its history goes with it.`,
    confirmLabel: 'Delete schedule',
    busyLabel: 'Deleting…',
    onConfirm: async () => {
      await api(base, { method: 'DELETE' });
      return true;
    },
  }).then((done) => done && reload()));

  const historyId = `history-${s.id}`;
  const historyBox = h('div', { id: historyId, class: 'history', hidden: true });
  const history = h('button', { type: 'button', class: 'btn btn-small', text: 'History', 'aria-expanded': 'false', 'aria-controls': historyId });
  history.addEventListener('click', async () => {
    const open = history.getAttribute('aria-expanded') === 'true';
    if (open) {
      history.setAttribute('aria-expanded', 'false');
      historyBox.hidden = true;
      return;
    }
    await withBusy(history, 'Loading…', async () => {
      const body = await api(`${base}/history${qs({})}`);
      renderHistory(sc, historyBox, body.scheduleHistoryEvents || []);
      historyBox.hidden = false;
      history.setAttribute('aria-expanded', 'true');
    }, slot);
  });

  let runs = req.operation || '';
  if (kind === 'drift') runs = opts.remediateIfDriftDetected ? 'detect-drift, auto-remediate' : 'detect-drift';
  if (kind === 'ttl') runs = opts.deleteAfterDestroy ? 'destroy, then delete the stack' : 'destroy';

  return [
    h('tr', {},
      h('th', { scope: 'row', dataset: { label: 'Kind' }, text: KIND_LABEL[kind] }),
      cell('When', h('code', { text: s.scheduleCron || `${s.scheduleOnce} UTC` })),
      cell('Runs', runs),
      cell('Next', s.nextExecution ? `${s.nextExecution} UTC` : '—'),
      cell('Last', s.lastExecuted ? `${s.lastExecuted} UTC` : 'never'),
      cell('State', s.paused ? badge('paused', 'warn') : badge('active', 'ok')),
      cell('Actions', h('span', { class: 'inline' }, toggle, history, del), slot)),
    h('tr', { class: 'history-row' }, h('td', { colspan: 7 }, historyBox)),
  ];
}

function describe(s) {
  return s.scheduleCron ? `“${s.scheduleCron}”` : `at ${s.scheduleOnce}`;
}

function renderHistory(sc, box, events) {
  const { org, project, stack } = sc;
  if (!events.length) {
    replace(box, empty('It has not fired yet.'));
    return;
  }
  replace(box, table('Schedule history', ['Executed', 'Deployment', 'Result'], events.map((e) => h('tr', {},
    h('td', { text: `${e.executed} UTC` }),
    h('td', {}, e.version ? h('a', { href: deploymentHref(org, project, stack, e.version), text: `#${e.version}` }) : '—'),
    h('td', {}, ['not-started', 'accepted', 'running', 'succeeded', 'failed', 'skipped'].includes(e.result)
      ? statusBadge(e.result) : (e.result || '—'))))));
}

/** One form for the four kinds; the fields shown follow the chosen kind. */
function createForm(S, reload) {
  const kindSelect = select(KINDS, 'cron');
  const kind = field('Kind', { control: kindSelect });
  const cron = field('Cron expression (UTC)', { name: 'cron', placeholder: '0 3 * * *', hint: 'Five fields: minute hour day-of-month month day-of-week, in UTC.' });
  const at = field('Time (UTC)', { type: 'datetime-local', name: 'at', hint: 'Taken as UTC.' });
  const opSelect = select(OPERATIONS, 'update');
  const operation = field('Operation', { control: opSelect });
  const remediate = field('Auto-remediate: run an update when drift is found', { type: 'checkbox', name: 'autoRemediate' });
  const deleteAfter = field('Delete the stack after a successful destroy', { type: 'checkbox', name: 'deleteAfterDestroy' });
  const save = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Create schedule' });
  const slot = errorSlot();

  const sync = () => {
    const k = kindSelect.value;
    cron.el.hidden = !(k === 'cron' || k === 'drift');
    at.el.hidden = !(k === 'once' || k === 'ttl');
    operation.el.hidden = !(k === 'cron' || k === 'once');
    remediate.el.hidden = k !== 'drift';
    deleteAfter.el.hidden = k !== 'ttl';
  };
  kindSelect.addEventListener('change', sync);
  sync();

  const form = h('form', { class: 'schedule-form', novalidate: true },
    h('h2', { text: 'New schedule' }),
    kind.el, cron.el, at.el, operation.el, remediate.el, deleteAfter.el,
    h('div', { class: 'form-actions' }, save, slot));

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    for (const f of [cron, at]) showError(f.error, null);
    const k = kindSelect.value;
    const when = at.input.value ? `${at.input.value.length === 16 ? `${at.input.value}:00` : at.input.value}Z` : '';
    let path = `${S}/deployments/schedules`;
    let body;
    if (k === 'cron') body = { scheduleCron: cron.input.value.trim(), request: { operation: opSelect.value, inheritSettings: true } };
    if (k === 'once') body = { scheduleOnce: when, request: { operation: opSelect.value, inheritSettings: true } };
    if (k === 'drift') {
      path = `${S}/deployments/drift/schedules`;
      body = { scheduleCron: cron.input.value.trim(), autoRemediate: remediate.input.checked };
    }
    if (k === 'ttl') {
      path = `${S}/deployments/ttl/schedules`;
      body = { timestamp: when, deleteAfterDestroy: deleteAfter.input.checked };
    }
    const target = k === 'cron' || k === 'drift' ? cron : at;
    if ((target === cron && !body.scheduleCron) || (target === at && !when)) {
      showError(target.error, new Error(target === cron ? 'Enter a cron expression.' : 'Pick a time.'));
      target.input.focus();
      return;
    }
    withBusy(save, 'Creating…', async () => {
      try {
        await api(path, { method: 'POST', body });
      } catch (err) {
        // Time and cron errors belong to their field.
        if (err.status === 400 && /scheduleCron|scheduleOnce|timestamp/.test(err.message)) {
          showError(target.error, err);
          target.input.focus();
          return;
        }
        throw err;
      }
      cron.input.value = '';
      at.input.value = '';
      await reload();
    }, slot);
  });
  return form;
}

