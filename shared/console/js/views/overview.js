// The org overview: every stack with its last deployment, drift, pause and schedules; a filter,
// paging, and live counts of running and queued deployments.

import { api, orgApi, qs } from '../api.js';
import { h, replace, stackHref, stackPath, deploymentHref, statusBadge, badge, timeEl } from '../dom.js';
import { setQuery, navigate } from '../router.js';
import { field, pager, table, empty, errorSlot, showError, openDialog, loading } from '../ui.js';
import { tagList } from './stack.js';

const PAGE_SIZE = 20;
const COUNTS_MS = 4000;

export async function overviewView(ctx) {
  const { org } = ctx.params;
  let query = ctx.query.get('q') || '';
  let page = Math.max(1, Number(ctx.query.get('page')) || 1);

  const counts = h('p', { class: 'live-counts', 'aria-live': 'polite' }, 'Counting deployments…');
  const listSlot = errorSlot();
  const list = h('div', { class: 'stack-list' }, loading('Loading stacks…'));
  const filter = field('Filter stacks', {
    type: 'search',
    name: 'q',
    value: query,
    placeholder: 'project/stack or tag value',
  });
  const newStack = h('button', { type: 'button', class: 'btn btn-primary', text: 'New stack' });
  newStack.addEventListener('click', () => newStackDialog(org));

  let seq = 0;
  async function load() {
    const mine = (seq += 1);
    try {
      const body = await api(`${orgApi(org)}/stacks${qs({ query, page, pageSize: PAGE_SIZE })}`, { signal: ctx.signal });
      if (mine !== seq || !ctx.active) return;
      showError(listSlot, null);
      renderList(body);
    } catch (err) {
      if (err.name !== 'AbortError' && mine === seq) showError(listSlot, err);
    }
  }

  function renderList(body) {
    const stacks = body.stacks || [];
    const total = body.total ?? stacks.length;
    if (!stacks.length) {
      replace(list, empty(query ? `No stack matches “${query}”.` : 'No stacks yet. Create one with New stack, or through the API.'));
      return;
    }
    const rows = stacks.map((s) => stackRow(org, s));
    replace(list,
      h('p', { class: 'muted', text: `${total} ${total === 1 ? 'stack' : 'stacks'}${query ? ` matching “${query}”` : ''}` }),
      table(`Stacks of ${org}`, ['Stack', 'Last deployment', 'When', 'Initiator', 'Drift', 'State', 'Schedules'], rows, { className: 'responsive' }),
      pager({
        page, pageSize: body.itemsPerPage || PAGE_SIZE, total, label: 'Stack pages',
        go: (p) => {
          page = p;
          setQuery({ page });
          return load();
        },
      }));
  }

  // Filter as the user types, without a history entry per keystroke.
  let debounce;
  filter.input.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      query = filter.input.value.trim();
      page = 1;
      setQuery({ q: query, page: 1 });
      load();
    }, 250);
  });

  // Live counts from the org's deployment metadata; the list follows when they change.
  let lastKey = '';
  let countsTimer;
  async function pollCounts() {
    try {
      const m = await api(`${orgApi(org)}/deployments/metadata`, { signal: ctx.signal });
      if (!ctx.active) return;
      const c = m.deploymentCounts || {};
      const running = c.running || 0;
      const queued = (c.notStarted || 0) + (c.accepted || 0);
      replace(counts,
        h('span', { class: 'count' }, h('strong', { text: String(running) }), ' running'),
        h('span', { class: 'count' }, h('strong', { text: String(queued) }), ' queued'),
        m.paused ? badge('org paused', 'warn') : null);
      const key = JSON.stringify(c);
      if (lastKey && key !== lastKey) load();
      lastKey = key;
    } catch (err) {
      if (err.name === 'AbortError' || !ctx.active) return;
      replace(counts, h('span', { class: 'muted', text: `Counts unavailable: ${err.message}` }));
    }
    if (ctx.active) countsTimer = setTimeout(pollCounts, COUNTS_MS);
  }
  ctx.onLeave(() => {
    clearTimeout(countsTimer);
    clearTimeout(debounce);
  });

  const view = h('div', { class: 'page' },
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', { text: 'Stacks' }), h('p', { class: 'muted', text: `Organization ${org}` })),
      h('div', { class: 'page-actions' }, newStack)),
    h('section', { class: 'live', 'aria-label': 'Deployments now' }, counts),
    h('div', { class: 'toolbar' }, filter.el),
    listSlot,
    list);
  await load();
  pollCounts();
  return view;
}

function driftCell(drift) {
  if (!drift) return h('span', { class: 'muted', text: '—' });
  if (drift.runInProgress) return badge('checking', 'info');
  if (drift.driftDetected) return badge('drift detected', 'warn');
  if (drift.latestDriftRun) return badge('in sync', 'ok');
  return h('span', { class: 'muted', text: 'not checked' });
}

function stackRow(org, s) {
  const d = s.lastDeployment;
  const cell = (label, ...children) => h('td', { dataset: { label } }, ...children);
  return h('tr', {},
    h('th', { scope: 'row', dataset: { label: 'Stack' } },
      h('a', { href: stackHref(org, s.projectName, s.stackName), text: `${s.projectName}/${s.stackName}` }),
      tagList(s.tags)),
    cell('Last deployment', d
      ? h('span', { class: 'inline' }, statusBadge(d.status), ' ',
        h('a', { href: deploymentHref(org, s.projectName, s.stackName, d.version), text: `${d.pulumiOperation} #${d.version}` }))
      : h('span', { class: 'muted', text: 'none yet' })),
    cell('When', d ? timeEl(d.modified || d.created) : h('span', { class: 'muted', text: '—' })),
    cell('Initiator', d ? `${d.initiator || 'api'}${d.requestedBy && d.requestedBy.name ? ` · ${d.requestedBy.name}` : ''}` : '—'),
    cell('Drift', driftCell(s.drift)),
    cell('State', s.paused ? badge('paused', 'warn') : badge('active', 'ok')),
    cell('Schedules', s.hasSchedules ? 'yes' : 'no'));
}

/** Creates an empty stack (`POST /api/stacks/{org}/{project}`) and opens its settings. */
function newStackDialog(org) {
  const project = field('Project', { name: 'project', required: true, hint: 'Letters, digits, -, _ and .' });
  const stack = field('Stack', { name: 'stack', required: true, value: 'dev' });
  const valid = () => project.input.value.trim() !== '' && stack.input.value.trim() !== '';
  openDialog({
    title: 'New stack',
    body: h('div', {}, project.el, stack.el,
      h('p', { class: 'hint', text: 'Next: its deployment settings (the git repository to deploy).' })),
    confirmLabel: 'Create stack',
    busyLabel: 'Creating…',
    canConfirm: valid,
    onConfirm: async () => {
      const p = project.input.value.trim();
      const s = stack.input.value.trim();
      await api(`/api/stacks/${encodeURIComponent(org)}/${encodeURIComponent(p)}`, {
        method: 'POST',
        body: { stackName: s },
      });
      return { p, s };
    },
  }).then((made) => {
    if (made) navigate(stackPath(org, made.p, made.s, 'settings'));
  });
}

