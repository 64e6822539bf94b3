// A stack's page: its header (state and the deployment buttons), its tabs, and the
// Deployments, Outputs and Drift tabs. Settings, Schedules and Webhooks have modules of their own.

import { api, stackApi, qs } from '../api.js';
import {
  h, replace, stackHref, deploymentPath, deploymentHref, statusBadge, badge, timeEl, formatDuration,
  deploymentDuration, isCancellable, isTerminal, formatTime,
} from '../dom.js';
import { navigate, setQuery } from '../router.js';
import { url } from '../base.js';
import {
  openDialog, field, pager, table, empty, errorSlot, showError, tabLinks, withBusy, loading,
} from '../ui.js';
import { settingsTab } from './settings.js';
import { schedulesTab } from './schedules.js';
import { webhooksPanel } from './webhooks.js';

const TABS = [
  ['deployments', 'Deployments'],
  ['settings', 'Settings'],
  ['outputs', 'Outputs'],
  ['schedules', 'Schedules'],
  ['drift', 'Drift'],
  ['webhooks', 'Webhooks'],
];

const OPERATIONS = [
  ['update', 'Update', 'Updating…'],
  ['preview', 'Preview', 'Previewing…'],
  ['refresh', 'Refresh', 'Refreshing…'],
  ['detect-drift', 'Detect drift', 'Starting…'],
];

export async function stackView(ctx, tab) {
  const { org, project, stack } = ctx.params;
  const S = stackApi(org, project, stack);
  if (!TABS.some(([key]) => key === tab)) {
    return h('div', { class: 'page' }, h('h1', { text: 'Page not found' }),
      h('p', {}, `A stack has no “${tab}” page. `, h('a', { href: stackHref(org, project, stack), text: `Go to ${project}/${stack}` }), '.'));
  }

  let info;
  try {
    info = await api(S, { signal: ctx.signal });
  } catch (err) {
    if (err.status === 404) return notFound(org, project, stack);
    throw err;
  }
  const meta = await api(`${S}/deployments/metadata`, { signal: ctx.signal }).catch(() => null);

  const stackCtx = { ctx, org, project, stack, S, info, meta };
  const body = h('div', { class: 'tab-body' });
  const view = h('div', { class: 'page' },
    breadcrumbs(org, project, stack),
    header(stackCtx),
    tabLinks(TABS.map(([key, text]) => [key, text, stackHref(org, project, stack, key === 'deployments' ? '' : key)]), tab, 'Stack sections'),
    body);

  const tabs = {
    deployments: deploymentsTab,
    settings: settingsTab,
    outputs: outputsTab,
    schedules: schedulesTab,
    drift: driftTab,
    webhooks: (c) => webhooksPanel(c.ctx, { scope: 'stack', org, project, stack }),
  };
  replace(body, await tabs[tab](stackCtx));
  return view;
}

function notFound(org, project, stack) {
  return h('div', { class: 'page' },
    breadcrumbs(org, project, stack),
    h('h1', { text: `${project}/${stack}` }),
    h('p', { role: 'alert', class: 'notice notice-warning', text: 'This stack does not exist in this organization (or your token cannot see it).' }),
    h('p', {}, h('a', { href: url(`/${encodeURIComponent(org)}`), text: 'Back to the stacks' })));
}

export function breadcrumbs(org, project, stack, extra) {
  const enc = encodeURIComponent;
  return h('nav', { class: 'breadcrumbs', 'aria-label': 'Breadcrumbs' },
    h('ol', {},
      h('li', {}, h('a', { href: url(`/${enc(org)}`), text: org })),
      h('li', {}, h('a', { href: url(`/${enc(org)}?q=${enc(`${project}/`)}`), text: project })),
      h('li', {}, extra
        ? h('a', { href: stackHref(org, project, stack), text: stack })
        : h('span', { 'aria-current': 'page', text: stack })),
      extra ? h('li', {}, h('span', { 'aria-current': 'page', text: extra })) : null));
}

/** The stack's title, state, and the buttons that start deployments or pause it. */
function header(sc) {
  const { org, project, stack, S, meta, info } = sc;
  const state = h('span', { class: 'inline' });
  let paused = !!(meta && meta.stackPaused);
  const renderState = () => replace(state,
    paused ? badge('paused', 'warn') : badge('active', 'ok'),
    meta && meta.organizationPaused ? badge('org paused', 'warn') : null,
    meta && meta.hasSchedules ? badge('scheduled', 'info') : null);
  renderState();

  const slot = errorSlot();
  const start = async (operation) => {
    const res = await api(`${S}/deployments`, { method: 'POST', body: { operation, inheritSettings: true } });
    navigate(deploymentPath(org, project, stack, res.version));
  };
  const buttons = OPERATIONS.map(([op, label, busyText]) => {
    const b = h('button', { type: 'button', class: ['btn', op === 'update' && 'btn-primary'], text: label });
    b.addEventListener('click', () => withBusy(b, busyText, () => start(op), slot));
    return b;
  });

  const destroy = h('button', { type: 'button', class: 'btn btn-danger', text: 'Destroy' });
  destroy.addEventListener('click', () => {
    const confirmField = field(`Type the stack name, ${stack}, to confirm`, { name: 'confirm', autocomplete: 'off' });
    openDialog({
      title: `Destroy ${project}/${stack}?`,
      body: h('div', {},
        h('p', { text: 'This runs destroy with the stack\'s settings: every resource the stack manages is deleted. The stack, its settings and its history stay.' }),
        confirmField.el),
      confirmLabel: 'Destroy',
      busyLabel: 'Starting destroy…',
      danger: true,
      canConfirm: () => confirmField.input.value === stack,
      onConfirm: async () => {
        const res = await api(`${S}/deployments`, { method: 'POST', body: { operation: 'destroy', inheritSettings: true } });
        return res;
      },
    }).then((res) => {
      if (res) navigate(deploymentPath(org, project, stack, res.version));
    });
  });

  const pause = h('button', { type: 'button', class: 'btn' });
  const renderPause = () => {
    pause.textContent = paused ? 'Resume stack' : 'Pause stack';
  };
  renderPause();
  pause.addEventListener('click', () => withBusy(pause, paused ? 'Resuming…' : 'Pausing…', async () => {
    await api(`${S}/deployments/${paused ? 'resume' : 'pause'}`, { method: 'POST' });
    paused = !paused;
  }, slot).then(() => {
    renderPause();
    renderState();
  }));

  return h('div', { class: 'page-head stack-head' },
    h('div', {},
      h('h1', { text: `${project}/${stack}` }),
      h('p', { class: 'inline' }, state),
      tagList(info.tags)),
    h('div', { class: 'page-actions' },
      h('div', { class: 'button-row', role: 'group', 'aria-label': 'Deploy' }, buttons, destroy),
      h('div', { class: 'button-row' }, pause),
      slot));
}

/** A stack's tags as "name: value" chips (the overview's filter matches their values). */
export function tagList(tags) {
  const entries = Object.entries(tags || {});
  if (!entries.length) return null;
  return h('ul', { class: 'tags', 'aria-label': 'Tags' },
    entries.map(([k, v]) => h('li', { class: 'tag' }, h('span', { class: 'tag-name', text: k }), ': ', v)));
}

// ---- Deployments ----

const DEPLOYMENTS_PAGE = 20;

async function deploymentsTab(sc) {
  const { ctx, org, project, stack, S } = sc;
  let page = Math.max(1, Number(ctx.query.get('page')) || 1);
  const slot = errorSlot();
  const holder = h('div', {}, loading('Loading deployments…'));
  let timer;

  async function load() {
    clearTimeout(timer);
    let active = false;
    try {
      const body = await api(`${S}/deployments${qs({ page, pageSize: DEPLOYMENTS_PAGE })}`, { signal: ctx.signal });
      if (!ctx.active) return;
      showError(slot, null);
      const list = body.deployments || [];
      active = list.some((d) => !isTerminal(d.status));
      if (!list.length) {
        replace(holder, empty('No deployments yet. Start one with Update or Preview, once the stack has settings.'));
      } else {
        replace(holder,
          table(`Deployments of ${project}/${stack}`, ['Deployment', 'Status', 'Operation', 'Created', 'Duration', 'Initiator', ''],
            list.map((d) => deploymentRow(sc, d, load)), { className: 'responsive' }),
          pager({
            page, pageSize: body.itemsPerPage || DEPLOYMENTS_PAGE, total: body.total || 0, label: 'Deployment pages',
            go: (p) => {
              page = p;
              setQuery({ page });
              return load();
            },
          }));
      }
    } catch (err) {
      if (err.name === 'AbortError') return;
      showError(slot, err);
    }
    // Faster while something runs; slow otherwise, to catch scheduled and webhook runs.
    if (ctx.active) timer = setTimeout(load, active ? 2000 : 8000);
  }
  ctx.onLeave(() => clearTimeout(timer));
  await load();
  return h('section', { 'aria-label': 'Deployments' }, slot, holder);
}

function deploymentRow(sc, d, reload) {
  const { org, project, stack, S } = sc;
  const cell = (label, ...c) => h('td', { dataset: { label } }, ...c);
  let cancel = null;
  if (isCancellable(d.status)) {
    // The dialog shows the busy state and any error; the list reloads after.
    cancel = h('button', { type: 'button', class: 'btn btn-small', text: 'Cancel', 'aria-label': `Cancel deployment #${d.version}` });
    cancel.addEventListener('click', () => cancelDeployment(S, d).then((done) => done && reload()));
  }
  return h('tr', {},
    h('th', { scope: 'row', dataset: { label: 'Deployment' } },
      h('a', { href: deploymentHref(org, project, stack, d.version), text: `#${d.version}` })),
    cell('Status', statusBadge(d.status)),
    cell('Operation', d.pulumiOperation),
    cell('Created', timeEl(d.created)),
    cell('Duration', formatDuration(deploymentDuration(d))),
    cell('Initiator', `${d.initiator || 'api'}${d.requestedBy && d.requestedBy.name ? ` · ${d.requestedBy.name}` : ''}`),
    cell('Actions', cancel || ''));
}

/** Asks, then cancels a queued or running deployment. Resolves true when it was cancelled. */
export function cancelDeployment(S, d) {
  const running = d.status === 'running';
  return openDialog({
    title: `Cancel deployment #${d.version}?`,
    body: h('p', {
      text: running
        ? 'The engine is stopped (SIGTERM, then SIGKILL after the grace period) and the deployment ends failed. Resources it was changing may be left half-done.'
        : 'The queued deployment is skipped and never runs.',
    }),
    confirmLabel: 'Cancel deployment',
    cancelLabel: 'Keep it',
    busyLabel: 'Cancelling…',
    danger: true,
    onConfirm: async () => {
      await api(`${S}/deployments/${encodeURIComponent(d.id)}/cancel`, { method: 'POST' });
      return true;
    },
  });
}

// ---- Outputs ----

async function outputsTab(sc) {
  const { ctx, S } = sc;
  let body;
  try {
    body = await api(`${S}/export`, { signal: ctx.signal });
  } catch (err) {
    if (err.status === 404) return empty('No outputs: the stack has no successful update yet.');
    throw err;
  }
  const resources = (body.deployment && body.deployment.resources) || [];
  const root = resources.find((r) => r.type === 'pulumi:pulumi:Stack') || {};
  const outputs = Object.entries(root.outputs || {});
  if (!outputs.length) return h('section', { 'aria-label': 'Outputs' }, empty('No outputs: the stack\'s program exports none, or it has not been updated yet.'));
  const isSecret = (v) => v && typeof v === 'object' && 'ciphertext' in v;
  return h('section', { 'aria-label': 'Outputs' },
    table('Stack outputs', ['Name', 'Value'], outputs.map(([k, v]) => h('tr', {},
      h('th', { scope: 'row', text: k }),
      h('td', {}, isSecret(v)
        ? badge('secret', 'info')
        : h('code', { class: 'value', text: typeof v === 'string' ? v : JSON.stringify(v, null, 2) }))))));
}

// ---- Drift ----

async function driftTab(sc) {
  const { ctx, org, project, stack, S } = sc;
  const [status, runs] = await Promise.all([
    api(`${S}/drift/status`, { signal: ctx.signal }).catch(() => null),
    api(`${S}/drift/runs${qs({ pageSize: 50 })}`, { signal: ctx.signal }),
  ]);
  const list = runs.driftRuns || [];
  const summary = status
    ? h('p', { class: 'inline' },
      status.runInProgress ? badge('check running', 'info') : null,
      status.driftDetected ? badge('drift detected', 'warn') : status.latestDriftRun ? badge('in sync', 'ok') : badge('never checked'),
      ' Start a check with Detect drift; schedule one on the Schedules tab.')
    : null;
  const rows = list.map((r) => h('tr', {},
    h('th', { scope: 'row', dataset: { label: 'Checked' } }, h('span', { title: formatTime(r.created) }, timeEl(r.created))),
    h('td', { dataset: { label: 'Result' } }, r.driftDetected ? badge('drift detected', 'warn') : badge('no drift', 'ok')),
    h('td', { dataset: { label: 'Status' } }, statusBadge(r.status)),
    h('td', { dataset: { label: 'Detection' } }, h('a', { href: deploymentHref(org, project, stack, r.deploymentVersion), text: `#${r.deploymentVersion}` })),
    h('td', { dataset: { label: 'Remediation' } }, r.remediateUpdate
      ? h('span', { class: 'inline' }, statusBadge(r.remediateUpdate.status))
      : h('span', { class: 'muted', text: '—' }))));
  return h('section', { 'aria-label': 'Drift' },
    summary,
    list.length
      ? table('Drift runs', ['Checked', 'Result', 'Status', 'Detection', 'Remediation'], rows, { className: 'responsive' })
      : empty('No drift runs yet.'));
}
