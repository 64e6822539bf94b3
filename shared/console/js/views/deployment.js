// A deployment: its steps with status and duration, and each step's log, live while it runs.
// The page's URL is the API's `consoleUrl`, `/{org}/{project}/{stack}/deployments/{version}`.
// Log lines have permalinks (`#step-2-L14`); the log follows new lines until the user scrolls
// up, and can be downloaded whole.

import { api, stackApi } from '../api.js';
import {
  h, replace, statusBadge, timeEl, formatDuration, spanDuration, jobOf, deploymentDuration,
  isCancellable, isTerminal, uid, badge,
} from '../dom.js';
import { renderAnsi, stripAnsi, initialState } from '../ansi.js';
import { follow } from '../stream.js';
import { clearError, errorSlot, showError } from '../ui.js';
import { breadcrumbs, cancelDeployment } from './stack.js';

/** How an approval's status looks. */
const APPROVAL_KIND = { pending: 'warn', approved: 'ok', rejected: 'bad', expired: 'bad' };

export async function deploymentView(ctx) {
  const { org, project, stack, version } = ctx.params;
  const S = stackApi(org, project, stack);
  let d;
  try {
    d = await api(`${S}/deployments/version/${encodeURIComponent(version)}`, { signal: ctx.signal });
  } catch (err) {
    if (err.status !== 404 && err.status !== 400) throw err;
    return h('div', { class: 'page' },
      breadcrumbs(org, project, stack, `Deployment ${version}`),
      h('h1', { text: `Deployment #${version}` }),
      h('p', { class: 'notice notice-warning', role: 'alert', text: err.message }));
  }

  const page = new DeploymentPage(ctx, { org, project, stack, S, d });
  return page.el;
}

class DeploymentPage {
  constructor(ctx, { org, project, stack, S, d }) {
    this.ctx = ctx;
    this.S = S;
    this.names = { org, project, stack };
    this.d = d;
    this.steps = []; // { name, status, started, lastUpdated, el, body, badge, duration, lines: 0, ansi }
    this.entries = []; // every log entry, for the download
    this.follow = true;
    this.target = parseTarget(location.hash);

    this.title = h('h1', { text: `Deployment #${d.version}` });
    this.summary = h('div', { class: 'deploy-summary' });
    this.mode = h('p', { class: 'live-mode muted', role: 'status' });
    this.actionSlot = errorSlot();
    this.cancelButton = h('button', { type: 'button', class: 'btn btn-danger', text: 'Cancel deployment' });
    this.cancelButton.addEventListener('click', () => cancelDeployment(S, this.d).then((done) => {
      if (done) this.mode.textContent = 'Cancel requested: waiting for the run to stop…';
    }));
    // Approval gates (the stack's `approvals`): where it stands, and the decision buttons.
    this.approval = h('div', { class: 'approval', hidden: true });
    this.approveButton = h('button', { type: 'button', class: 'btn btn-primary', text: 'Approve', hidden: true });
    this.rejectButton = h('button', { type: 'button', class: 'btn btn-danger', text: 'Reject', hidden: true });
    this.approveButton.addEventListener('click', () => this.decide('approve'));
    this.rejectButton.addEventListener('click', () => this.decide('reject'));
    this.downloadButton = h('button', { type: 'button', class: 'btn', text: 'Download log' });
    this.downloadButton.addEventListener('click', () => this.download());
    this.jump = h('button', { type: 'button', class: 'btn btn-small jump', text: 'Follow the log ↓', hidden: true });
    this.jump.addEventListener('click', () => {
      this.follow = true;
      this.jump.hidden = true;
      this.scrollToEnd();
    });
    this.stepsEl = h('div', { class: 'steps' });
    this.log = h('div', { class: 'log', tabindex: '0', role: 'region', 'aria-label': 'Deployment log' }, this.stepsEl);
    this.log.addEventListener('scroll', () => this.onScroll());
    // A user scrolling up stops following at once, before the first scroll event: a line
    // arriving in between would otherwise yank a smooth scroll back to the end.
    this.log.addEventListener('wheel', (e) => {
      if (e.deltaY < 0) this.stopFollowing();
    }, { passive: true });
    this.log.addEventListener('touchmove', () => this.stopFollowing(), { passive: true });
    this.log.addEventListener('keydown', (e) => {
      if (['ArrowUp', 'PageUp', 'Home'].includes(e.key)) this.stopFollowing();
    });
    this.log.addEventListener('pointerdown', (e) => {
      if (e.target === this.log) this.stopFollowing(); // the scrollbar
    });

    this.el = h('div', { class: 'page deployment' },
      breadcrumbs(org, project, stack, `Deployment #${d.version}`),
      h('div', { class: 'page-head' },
        h('div', {}, this.title, this.summary),
        h('div', { class: 'page-actions' },
          h('div', { class: 'button-row' }, this.approveButton, this.rejectButton, this.cancelButton, this.downloadButton), this.actionSlot)),
      this.approval,
      h('div', { class: 'log-head' }, h('h2', { text: 'Steps and log' }), this.mode, this.jump),
      this.log);

    this.renderDeployment(d);
    // Durations of running steps tick every second.
    this.ticker = setInterval(() => this.renderDurations(), 1000);
    const onHash = () => {
      this.target = parseTarget(location.hash);
      this.showTarget();
    };
    window.addEventListener('hashchange', onHash);
    this.stream = follow(S, d.id, {
      onDeployment: (next) => this.renderDeployment(next),
      onLog: (entry) => this.addEntry(entry),
      onEnd: () => this.ended(),
      onMode: (m) => {
        if (!this.done) this.mode.textContent = m === 'stream' ? 'Live: streaming.' : 'Live: checking every second.';
      },
      onError: (err) => {
        this.mode.textContent = `Reconnecting… (${err.message})`;
      },
    });
    ctx.onLeave(() => {
      this.stream.stop();
      clearInterval(this.ticker);
      window.removeEventListener('hashchange', onHash);
    });
  }

  async decide(verb) {
    clearError(this.actionSlot);
    for (const b of [this.approveButton, this.rejectButton]) b.disabled = true;
    try {
      const next = await api(`${this.S}/deployments/${encodeURIComponent(this.d.id)}/${verb}`, { method: 'POST', body: {} });
      this.renderDeployment(next);
    } catch (err) {
      showError(this.actionSlot, err);
    } finally {
      for (const b of [this.approveButton, this.rejectButton]) b.disabled = false;
    }
  }

  renderDeployment(d) {
    // The stream's deployment event may lack `configuration`: keep the one we had.
    this.d = { ...this.d, ...d };
    d = this.d;
    const git = (d.configuration && d.configuration.source && d.configuration.source.git) || {};
    replace(this.summary,
      h('p', { class: 'inline' }, statusBadge(d.status), ' ',
        h('strong', { text: d.pulumiOperation }), ' · created ', timeEl(d.created),
        ' · ', h('span', { class: 'total-duration', text: formatDuration(deploymentDuration(d)) }),
        ' · by ', `${d.initiator || 'api'}${d.requestedBy && d.requestedBy.name ? ` (${d.requestedBy.name})` : ''}`),
      git.repoURL
        ? h('p', { class: 'muted mono break', text: [git.repoURL, git.branch, git.repoDir && `dir ${git.repoDir}`, git.commit && `at ${git.commit.slice(0, 12)}`].filter(Boolean).join(' · ') })
        : null);
    this.cancelButton.hidden = !isCancellable(d.status);
    const a = d.approval;
    const pending = !!a && a.status === 'pending' && d.status === 'not-started';
    this.approveButton.hidden = !pending;
    this.rejectButton.hidden = !pending;
    this.approval.hidden = !a;
    if (a) {
      const votes = (a.approvedBy || []).map((v) => `${v.name}${v.comment ? ` (“${v.comment}”)` : ''}`);
      replace(this.approval,
        h('p', { class: 'inline' }, h('strong', { text: 'Approval: ' }), badge(a.status, APPROVAL_KIND[a.status] || 'info'),
          ` ${a.given} of ${a.required} given`,
          pending ? h('span', {}, ' · expires ', timeEl(a.expiresAt)) : null),
        votes.length ? h('p', { class: 'muted', text: `Approved by ${votes.join(', ')}` }) : null,
        a.rejectedBy ? h('p', { class: 'muted', text: `Rejected by ${a.rejectedBy.name}${a.rejectedBy.comment ? `: ${a.rejectedBy.comment}` : ''}` }) : null);
    }
    if (!this.done && pending) {
      this.mode.textContent = `Waiting for approval: ${a.given} of ${a.required} given.`;
    } else if (!this.done && (d.status === 'not-started' || d.status === 'accepted')) {
      this.mode.textContent = 'Queued: waiting for a worker (or for the stack or organization to be resumed).';
    }
    const job = jobOf(d);
    (job.steps || []).forEach((s, i) => {
      const step = this.step(i, s.name);
      Object.assign(step, { status: s.status, started: s.started, lastUpdated: s.lastUpdated });
      replace(step.badge, statusBadge(s.status));
    });
    this.renderDurations();
    if (isTerminal(d.status) && this.done) this.mode.textContent = `Finished: ${d.status}.`;
  }

  renderDurations() {
    for (const s of this.steps) {
      if (!s.duration) continue;
      const ms = spanDuration(s.started, s.lastUpdated, s.status === 'running');
      s.duration.textContent = ms === null ? '' : formatDuration(ms);
    }
    const total = this.summary.querySelector('.total-duration');
    if (total) total.textContent = formatDuration(deploymentDuration(this.d));
  }

  /** The section of step i, made on first sight (from the deployment or a log header). */
  step(i, name) {
    while (this.steps.length <= i) {
      const n = this.steps.length;
      const bodyId = uid('step-log');
      const toggle = h('button', { type: 'button', class: 'step-toggle', 'aria-expanded': 'true', 'aria-controls': bodyId });
      const badge = h('span', { class: 'step-badge' });
      const duration = h('span', { class: 'step-duration muted' });
      const label = h('span', { class: 'step-name' });
      toggle.append(h('span', { class: 'chevron', 'aria-hidden': 'true' }), label);
      const body = h('ol', { class: 'log-lines', id: bodyId });
      const el = h('section', { class: 'step', 'aria-label': `Step ${n + 1}` },
        h('h3', { class: 'step-head' }, toggle, badge, duration), body);
      toggle.addEventListener('click', () => {
        const open = toggle.getAttribute('aria-expanded') !== 'true';
        toggle.setAttribute('aria-expanded', String(open));
        body.hidden = !open;
      });
      this.stepsEl.append(el);
      this.steps.push({ name: '', el, body, toggle, badge, duration, label, lines: 0, ansi: initialState() });
    }
    const s = this.steps[i];
    if (name && !s.name) {
      s.name = name;
      s.label.textContent = name;
      s.el.setAttribute('aria-label', `Step ${i + 1}: ${name}`);
    }
    return s;
  }

  addEntry(entry) {
    this.entries.push(entry);
    if (entry.header !== undefined && entry.header !== null) {
      this.step(entry.step, entry.header);
      return;
    }
    const s = this.step(entry.step);
    // One entry may hold several lines (an engine's multi-line message): each gets its own
    // number, so every visible line has a permalink. The ANSI state runs across them.
    const rows = (entry.line ?? '').replace(/\r?\n$/, '').split(/\r?\n/);
    let hitTarget = false;
    for (const row of rows) {
      s.lines += 1;
      const id = `step-${entry.step + 1}-L${s.lines}`;
      const text = h('span', { class: 'line-text' });
      renderAnsi(row, text, s.ansi);
      s.body.append(h('li', { class: 'log-line', id },
        h('a', { class: 'line-no', href: `#${id}`, title: 'Link to this line', text: String(s.lines) }), text));
      if (this.target === id) hitTarget = true;
    }
    if (hitTarget) this.showTarget();
    else if (this.follow) this.scrollToEnd();
  }

  /** Scrolls to and marks the line named by the URL's hash; following stops there. */
  showTarget() {
    if (!this.target) return;
    const li = document.getElementById(this.target);
    if (!li) return;
    for (const old of this.log.querySelectorAll('.log-line.target')) old.classList.remove('target');
    li.classList.add('target');
    const step = li.closest('.step');
    const toggle = step && step.querySelector('.step-toggle');
    if (toggle && toggle.getAttribute('aria-expanded') !== 'true') toggle.click();
    this.follow = false;
    this.jump.hidden = false;
    li.scrollIntoView({ block: 'center' });
  }

  /** Keeps the end in view: once per frame however many lines came in it, since each scroll
   * forces a layout, and a burst of thousands of lines would otherwise lag behind. */
  scrollToEnd() {
    if (this.scrollQueued) return;
    this.scrollQueued = true;
    requestAnimationFrame(() => {
      this.scrollQueued = false;
      if (this.follow) this.log.scrollTop = this.log.scrollHeight;
    });
  }

  onScroll() {
    // Back at the bottom: follow again. Scrolling up stops following in the input handlers
    // above, not here: lines that arrive between a frame's scroll and this event would look
    // like the user leaving the end.
    const atEnd = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 8;
    if (atEnd) this.follow = true;
    this.jump.hidden = this.follow || this.done;
  }

  stopFollowing() {
    this.follow = false;
    if (!this.done) this.jump.hidden = false;
  }

  ended() {
    this.done = true;
    this.jump.hidden = true;
    this.mode.textContent = `Finished: ${this.d.status}.`;
    if (this.target) this.showTarget();
  }

  /** The whole log as text, with step headers and timestamps, without colour codes. */
  download() {
    const lines = [];
    for (const e of this.entries) {
      if (e.header !== undefined && e.header !== null) lines.push(`=== ${e.header} ===`);
      else {
        for (const row of stripAnsi(e.line ?? '').replace(/\r?\n$/, '').split(/\r?\n/)) lines.push(`${e.timestamp || ''} ${row}`);
      }
    }
    const blob = new Blob([`${lines.join('\n')}\n`], { type: 'text/plain' });
    const url = URL.createObjectURL(blob);
    const { project, stack } = this.names;
    const a = h('a', { href: url, download: `${project}-${stack}-deployment-${this.d.version}.log`, class: 'visually-hidden', text: 'download' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }
}

function parseTarget(hash) {
  const m = /^#(step-\d+-L\d+)$/.exec(hash || '');
  return m ? m[1] : null;
}
