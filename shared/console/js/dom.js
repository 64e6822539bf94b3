// DOM building and formatting helpers. Everything the API returns reaches the page as text
// nodes or attribute values set through the DOM, never as markup, so nothing it sends can
// inject HTML (and the CSP forbids inline scripts and style attributes anyway).

import { url } from './base.js';

/**
 * Creates an element. `attrs` keys: `class`, `text`, `on<Event>` (a listener), `dataset`,
 * `style` (an object, applied through CSSOM, which the CSP allows), properties such as
 * `disabled`/`value`/`checked`, and any other key as an attribute (`aria-*`, `href`, ...).
 * Children may be nodes, strings, numbers, arrays, or null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'style') Object.assign(el.style, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key in PROPS) el[PROPS[key]] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

// Attributes better set as properties (their live state, not the default).
const PROPS = {
  value: 'value', checked: 'checked', disabled: 'disabled', hidden: 'hidden',
  htmlFor: 'htmlFor', for: 'htmlFor', selected: 'selected', required: 'required',
  readOnly: 'readOnly', tabIndex: 'tabIndex', open: 'open',
};

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let ids = 0;
/** A unique id for label/control and aria-describedby pairs. */
export function uid(prefix = 'id') {
  ids += 1;
  return `${prefix}-${ids}`;
}

const enc = encodeURIComponent;

/** The console's own path of a stack (its page), for `navigate`. */
export function stackPath(org, project, stack, tab = '') {
  return `/${enc(org)}/${enc(project)}/${enc(stack)}${tab ? `/${tab}` : ''}`;
}

/** The console's path of a deployment: the same as the API's `consoleUrl`'s, for `navigate`. */
export function deploymentPath(org, project, stack, version) {
  return `${stackPath(org, project, stack)}/deployments/${version}`;
}

/** A link's href to a stack's page (under the prefix the console is served at). */
export function stackHref(org, project, stack, tab = '') {
  return url(stackPath(org, project, stack, tab));
}

/** A link's href to a deployment's page. */
export function deploymentHref(org, project, stack, version) {
  return url(deploymentPath(org, project, stack, version));
}

// ---- Times --------------------------------------------------------------------------------

/**
 * Parses the API's times: deployments' `created`/`modified` are "YYYY-MM-DD hh:mm:ss.fff" in
 * UTC, jobs and steps RFC 3339, with "0001-01-01T00:00:00Z" meaning "not yet", webhook
 * deliveries Unix seconds. Returns a Date or null.
 */
export function parseTime(value) {
  if (value === null || value === undefined || value === '') return null;
  if (typeof value === 'number') return value > 0 ? new Date(value * 1000) : null;
  const s = String(value);
  if (s.startsWith('0001-01-01')) return null;
  const iso = /^\d{4}-\d\d-\d\d \d\d:\d\d/.test(s) ? `${s.replace(' ', 'T')}Z` : s;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "2026-11-30 07:19:03 UTC": unambiguous, for titles and tables. */
export function formatTime(value) {
  const d = value instanceof Date ? value : parseTime(value);
  if (!d) return '—';
  return `${d.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

/** "3 min ago", "in 2 h". */
export function relativeTime(value, now = Date.now()) {
  const d = value instanceof Date ? value : parseTime(value);
  if (!d) return '—';
  const secs = Math.round((d.getTime() - now) / 1000);
  const abs = Math.abs(secs);
  const [n, unit] = abs < 45 ? [abs, 's'] : abs < 3600 ? [Math.round(abs / 60), 'min']
    : abs < 86400 ? [Math.round(abs / 3600), 'h'] : [Math.round(abs / 86400), 'd'];
  if (abs < 5) return 'just now';
  return secs < 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
}

/** A <time> element: relative text, absolute title and datetime. */
export function timeEl(value) {
  const d = value instanceof Date ? value : parseTime(value);
  if (!d) return h('span', { class: 'muted', text: '—' });
  return h('time', { datetime: d.toISOString(), title: formatTime(d), text: relativeTime(d) });
}

/** "1 min 05 s", "12.3 s", from milliseconds. */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms) || ms < 0) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

/** Duration of something with a start and an end (or now, while it runs). */
export function spanDuration(started, ended, running) {
  const a = parseTime(started);
  if (!a) return null;
  const b = running ? new Date() : parseTime(ended);
  return b ? b.getTime() - a.getTime() : null;
}

// ---- Status -------------------------------------------------------------------------------

const TERMINAL = new Set(['succeeded', 'failed', 'skipped']);
export const isTerminal = (status) => TERMINAL.has(status);
export const isCancellable = (status) => ['not-started', 'accepted', 'running'].includes(status);

const STATUS_TEXT = {
  'not-started': 'queued', accepted: 'queued', running: 'running',
  succeeded: 'succeeded', failed: 'failed', skipped: 'skipped',
};

/** A status badge: colour for the eye, the word for everyone. */
export function statusBadge(status) {
  const known = STATUS_TEXT[status];
  return h('span', {
    class: ['badge', `status-${known ? status : 'unknown'}`],
    title: status,
    text: known || status || 'unknown',
  });
}

export function badge(text, kind = '') {
  return h('span', { class: ['badge', kind && `badge-${kind}`], text });
}

/** The first deployment job (Tarmac has one) or an empty one. */
export function jobOf(d) {
  return (d && d.jobs && d.jobs[0]) || { steps: [] };
}

/** A deployment's wall time: its job's start to its last change, or to now while it runs. */
export function deploymentDuration(d) {
  const job = jobOf(d);
  return spanDuration(job.started, job.lastUpdated, d.status === 'running');
}
