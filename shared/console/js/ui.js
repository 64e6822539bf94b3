// Shared widgets: busy buttons, inline errors, labelled fields, modal dialogs, pagers.

import { h, replace, uid } from './dom.js';

/** An error slot placed next to what can fail: hidden until it has something to say. */
export function errorSlot() {
  return h('p', { class: 'error', role: 'alert', hidden: true });
}

export function showError(slot, err) {
  if (!slot) return;
  const message = err ? (err.message || String(err)) : '';
  slot.textContent = message;
  slot.hidden = !message;
}

export function clearError(slot) {
  showError(slot, null);
}

/**
 * Runs `fn` with `button` in its busy state: disabled, with a spinner and `busyText`; errors
 * go to `slot`. Returns fn's result, or undefined if it threw.
 */
export async function withBusy(button, busyText, fn, slot) {
  const label = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.classList.add('busy');
  replace(button, h('span', { class: 'spinner', 'aria-hidden': 'true' }), busyText);
  clearError(slot);
  try {
    return await fn();
  } catch (err) {
    if (err && err.name === 'AbortError') return undefined;
    if (slot) showError(slot, err);
    else throw err;
    return undefined;
  } finally {
    button.removeAttribute('aria-busy');
    button.classList.remove('busy');
    button.textContent = label;
    button.disabled = false;
  }
}

/**
 * A labelled input. `control` is created by tag unless given. Returns `{ el, input, error }`;
 * the error slot is linked with aria-describedby so screen readers read it with the field.
 */
export function field(label, { type = 'text', name, value = '', hint, control, required, placeholder, autocomplete = 'off', attrs = {} } = {}) {
  const id = uid('f');
  const input = control || h(type === 'textarea' ? 'textarea' : 'input', {
    type: type === 'textarea' ? undefined : type,
    name,
    value,
    placeholder,
    autocomplete,
    spellcheck: type === 'textarea' || type === 'text' ? 'false' : undefined,
    ...attrs,
  });
  input.id = id;
  if (required) input.required = true;
  const error = errorSlot();
  error.id = uid('err');
  const hintEl = hint ? h('p', { class: 'hint', id: uid('hint'), text: hint }) : null;
  input.setAttribute('aria-describedby', [hintEl && hintEl.id, error.id].filter(Boolean).join(' '));
  const el = h('div', { class: ['field', type === 'checkbox' && 'field-check'] },
    type === 'checkbox'
      ? [input, h('label', { for: id, text: label })]
      : [h('label', { for: id, text: label }), input],
    hintEl, error);
  return { el, input, error };
}

/** A select with options [[value, text], ...]. */
export function select(options, value) {
  return h('select', {}, options.map(([v, t]) => h('option', { value: v, selected: v === value, text: t })));
}

// ---- Dialogs ------------------------------------------------------------------------------

/**
 * Opens a modal dialog. `body` is a Node; `onConfirm` runs with the confirm button busy and
 * closes the dialog when it resolves (its error stays in the dialog). `canConfirm()` keeps the
 * confirm button disabled until it returns true (checked on every input). Focus moves into
 * the dialog, Tab cycles inside it, Escape or Cancel closes it, and focus returns to where it
 * was. Resolves to onConfirm's result, or undefined when cancelled.
 */
export function openDialog({ title, body, confirmLabel = 'Confirm', busyLabel = 'Working…', danger = false, onConfirm, canConfirm = () => true, cancelLabel = 'Cancel' }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const titleId = uid('dlg-title');
    const slot = errorSlot();
    const confirm = onConfirm
      ? h('button', { type: 'submit', class: ['btn', danger ? 'btn-danger' : 'btn-primary'], text: confirmLabel })
      : null;
    const cancel = h('button', { type: 'button', class: 'btn', text: onConfirm ? cancelLabel : 'Close' });
    const form = h('form', { class: 'dialog-body', method: 'dialog', novalidate: true },
      body, slot, h('div', { class: 'dialog-actions' }, cancel, confirm));
    const dialog = h('dialog', { class: 'dialog', 'aria-labelledby': titleId, 'aria-modal': 'true' },
      h('h2', { id: titleId, text: title }), form);
    let result;
    const update = () => {
      if (confirm && !confirm.classList.contains('busy')) confirm.disabled = !canConfirm();
    };
    form.addEventListener('input', update);
    update();
    const close = () => {
      if (dialog.open) dialog.close();
    };
    cancel.addEventListener('click', close);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (!confirm || confirm.disabled || !canConfirm()) return;
      let ok = false;
      await withBusy(confirm, busyLabel, async () => {
        result = await onConfirm();
        ok = true;
      }, slot);
      update();
      if (ok) close();
    });
    // Keep Tab inside (showModal makes the page inert, but Tab can still leave the document).
    dialog.addEventListener('keydown', (e) => {
      if (e.key !== 'Tab') return;
      const items = [...dialog.querySelectorAll('a[href], button, input, select, textarea, [tabindex]:not([tabindex="-1"])')]
        .filter((el) => !el.disabled && !el.hidden && el.offsetParent !== null);
      if (!items.length) return;
      const first = items[0];
      const last = items[items.length - 1];
      if (e.shiftKey && document.activeElement === first) {
        e.preventDefault();
        last.focus();
      } else if (!e.shiftKey && document.activeElement === last) {
        e.preventDefault();
        first.focus();
      }
    });
    // Escape fires `cancel`; a busy dialog stays open until its request ends.
    dialog.addEventListener('cancel', (e) => {
      if (confirm && confirm.classList.contains('busy')) e.preventDefault();
    });
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(result);
    });
    document.body.append(dialog);
    dialog.showModal();
    const firstInput = dialog.querySelector('input, select, textarea');
    (firstInput || cancel).focus();
  });
}

/** Asks "are you sure" for a destructive action. */
export function confirmAction({ title, message, confirmLabel, busyLabel, onConfirm, danger = true }) {
  return openDialog({ title, body: h('p', { text: message }), confirmLabel, busyLabel, danger, onConfirm });
}

// ---- Paging and tabs ----------------------------------------------------------------------

/** Previous/next with "Page x of y". `go(page)` loads a page. */
export function pager({ page, pageSize, total, go, label = 'Pages' }) {
  const pages = Math.max(1, Math.ceil((total || 0) / pageSize));
  if (pages <= 1) return null;
  const prev = h('button', { type: 'button', class: 'btn', text: '← Previous', disabled: page <= 1 });
  const next = h('button', { type: 'button', class: 'btn', text: 'Next →', disabled: page >= pages });
  const slot = errorSlot();
  prev.addEventListener('click', () => withBusy(prev, 'Loading…', () => go(page - 1), slot));
  next.addEventListener('click', () => withBusy(next, 'Loading…', () => go(page + 1), slot));
  return h('nav', { class: 'pager', 'aria-label': label },
    prev, h('span', { class: 'muted', 'aria-live': 'polite', text: `Page ${page} of ${pages}` }), next, slot);
}

/** A row of links as tabs (real links: each tab is a URL). */
export function tabLinks(items, currentKey, label) {
  return h('nav', { class: 'tabs', 'aria-label': label },
    h('ul', {}, items.map(([key, text, href]) => h('li', {},
      h('a', { href, 'aria-current': key === currentKey ? 'page' : undefined, text })))));
}

/** "Loading…" placeholder with a spinner, announced politely. */
export function loading(text = 'Loading…') {
  return h('p', { class: 'loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
}

/** A table with a caption (visually hidden when `hideCaption`) and a header row. */
export function table(caption, headers, rows, { hideCaption = true, className = '' } = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: ['table', className] },
      h('caption', { class: hideCaption ? 'visually-hidden' : '', text: caption }),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, rows)));
}

/** A "nothing here" paragraph. */
export function empty(text) {
  return h('p', { class: 'empty', text });
}

/** Copies text to the clipboard, with a fallback for non-secure contexts. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const ta = h('textarea', { class: 'visually-hidden', value: text, readOnly: true });
  document.body.append(ta);
  ta.select();
  document.execCommand('copy');
  ta.remove();
}
