// Sign in: paste an API token. It is checked with `GET /api/user` before it is kept, and kept
// in sessionStorage only (this tab, until it closes or the user signs out).

import { api, session } from '../api.js';
import { h } from '../dom.js';
import { url } from '../base.js';
import { field, withBusy, showError } from '../ui.js';

let pending = null; // { text, kind }: why the user is here (expired token, signed out)

/** A message for the next sign-in page: `kind` "warning" (the default) or "info". */
export function setSigninMessage(text, kind = 'warning') {
  pending = { text, kind };
}

export async function signinView(_ctx, { onSignedIn }) {
  const notice = pending;
  pending = null;
  const token = field('API token', {
    type: 'password',
    name: 'token',
    autocomplete: 'off',
    hint: 'A token starting with tmc_: printed on the first start of tarmac serve, or made with `tarmac token create`, or by an admin on the Admin page. It stays in this browser tab only.',
    required: true,
  });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Sign in' });
  const form = h('form', { class: 'signin-form', novalidate: true }, token.el, submit);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const value = token.input.value.trim();
    showError(token.error, null);
    if (!value) {
      showError(token.error, new Error('Paste a token to sign in.'));
      token.input.focus();
      return;
    }
    withBusy(submit, 'Checking…', async () => {
      let user;
      try {
        user = await api('/api/user', { token: value });
      } catch (err) {
        if (err.status === 401) {
          throw new Error('That token was not accepted: it is wrong, revoked or expired.');
        }
        throw err;
      }
      session.set(value);
      session.user = user;
      onSignedIn();
    }, token.error).then(() => {
      if (!token.error.hidden) token.input.focus();
    });
  });
  const main = h('main', { id: 'main', class: 'signin' },
    h('div', { class: 'signin-card' },
      h('p', { class: 'brand brand-large' },
        h('img', { src: url('/console/favicon.svg'), alt: '', width: 32, height: 32 }), 'Tarmac'),
      h('h1', { text: 'Sign in' }),
      notice ? h('p', { class: ['notice', `notice-${notice.kind}`], role: notice.kind === 'warning' ? 'alert' : 'status', text: notice.text }) : null,
      form));
  return main;
}
