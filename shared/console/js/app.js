// The Tarmac console: a client of the public REST API, served by the same router at `/` (or
// under a prefix that a gateway or proxy removes: `base.js`).
// This module wires the routes, the page shell (header, navigation, sign out) and the rules
// that apply everywhere: no token, or a token the API refuses, means the sign-in page.

import { api, session, setUnauthorizedHandler } from './api.js';
import { h, replace } from './dom.js';
import { route, match, navigate, start, currentPath } from './router.js';
import { url } from './base.js';
import { loading } from './ui.js';
import { signinView, setSigninMessage } from './views/signin.js';
import { overviewView } from './views/overview.js';
import { stackView } from './views/stack.js';
import { deploymentView } from './views/deployment.js';
import { webhooksView } from './views/webhooks.js';
import { adminView } from './views/admin.js';

const NEXT_KEY = 'tarmac.next';

// Specific routes first: `-` is never a project name the console makes, so `/{org}/-/...`
// are the org's own pages.
route('/-/signin', signinView);
route('/', async () => {
  navigate(`/${encodeURIComponent(session.user.tokenInfo.organization)}`, { replace: true });
  return null;
});
route('/:org/-/webhooks', (ctx) => webhooksView(ctx, { scope: 'org' }));
route('/:org/-/admin', adminView);
route('/:org', overviewView);
route('/:org/:project', async (ctx) => {
  // A project has no page of its own: the overview filtered to it.
  const { org, project } = ctx.params;
  navigate(`/${encodeURIComponent(org)}?q=${encodeURIComponent(`${project}/`)}`, { replace: true });
  return null;
});
route('/:org/:project/:stack/deployments/:version', deploymentView);
route('/:org/:project/:stack/deployments', (ctx) => stackView(ctx, 'deployments'));
route('/:org/:project/:stack', (ctx) => stackView(ctx, 'deployments'));
route('/:org/:project/:stack/:tab', (ctx) => stackView(ctx, ctx.params.tab));

const root = document.getElementById('app');
let main;
let shellOrg = null;

// A 401 anywhere: the token expired or was revoked. Say so on the sign-in page.
let signingOut = false;
setUnauthorizedHandler(() => {
  if (signingOut || currentPath() === '/-/signin') return;
  signingOut = true;
  session.clear();
  setSigninMessage('Your session has ended: the API no longer accepts this token (it was revoked or has expired). Sign in with a valid token.');
  sessionStorage.setItem(NEXT_KEY, currentPath() + location.search + location.hash);
  navigate('/-/signin', { replace: true }).finally(() => {
    signingOut = false;
  });
});

function signOut() {
  session.clear();
  sessionStorage.removeItem(NEXT_KEY);
  setSigninMessage('You are signed out. The token was removed from this tab.', 'info');
  navigate('/-/signin');
}

/** The header and <main>, built once per org and kept across pages. */
function shell(org, section) {
  if (!main || shellOrg !== org) {
    shellOrg = org;
    const link = (key, text, href) => h('li', {}, h('a', { href, dataset: { section: key }, text }));
    const enc = encodeURIComponent(org);
    const signOutButton = h('button', { type: 'button', class: 'btn btn-quiet', text: 'Sign out' });
    signOutButton.addEventListener('click', signOut);
    const user = session.user;
    const header = h('header', { class: 'topbar' },
      h('a', { class: 'brand', href: url(`/${enc}`) },
        h('img', { src: url('/console/favicon.svg'), alt: '', width: 24, height: 24 }), 'Tarmac'),
      h('nav', { class: 'mainnav', 'aria-label': 'Main' },
        h('ul', {},
          link('stacks', 'Stacks', url(`/${enc}`)),
          link('webhooks', 'Webhooks', url(`/${enc}/-/webhooks`)),
          link('admin', 'Admin', url(`/${enc}/-/admin`)))),
      h('div', { class: 'who' },
        h('span', { class: 'who-name', title: 'Signed in with this token' },
          user ? `${user.tokenInfo.name} · ${user.tokenInfo.organization}` : ''),
        // The API's OpenAPI 3.1 description, for generating a client.
        h('a', { class: 'btn btn-quiet', href: url('/api/openapi.json'), text: 'API' }),
        signOutButton));
    main = h('main', { id: 'main', tabindex: '-1' });
    replace(root, header, main);
  }
  for (const a of root.querySelectorAll('.mainnav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  return main;
}

function sectionOf(path) {
  if (/^\/[^/]+\/-\/webhooks/.test(path)) return 'webhooks';
  if (/^\/[^/]+\/-\/admin/.test(path)) return 'admin';
  return 'stacks';
}

async function renderPage(ctx, { focus }) {
  const found = match(ctx.path);
  if (ctx.path === '/-/signin') {
    main = null;
    shellOrg = null;
    const node = await signinView(ctx, {
      onSignedIn: () => {
        const next = sessionStorage.getItem(NEXT_KEY);
        sessionStorage.removeItem(NEXT_KEY);
        const org = encodeURIComponent(session.user.tokenInfo.organization);
        // Only a path of this org: another org's page would be a 404 for this token.
        const target = next && next.startsWith(`/${org}`) ? next : `/${org}`;
        navigate(target, { replace: true });
      },
    });
    replace(root, node);
    document.title = 'Sign in · Tarmac';
    const input = node.querySelector('input');
    if (input) input.focus();
    return;
  }
  if (!session.token) {
    sessionStorage.setItem(NEXT_KEY, ctx.path + location.search + location.hash);
    navigate('/-/signin', { replace: true });
    return;
  }
  if (!session.user) {
    try {
      session.user = await api('/api/user');
    } catch (err) {
      if (err.status === 401) return; // the handler moved to sign-in
      replace(root, h('main', { id: 'main', class: 'page' },
        h('h1', { text: 'Tarmac' }), h('p', { class: 'error', role: 'alert', text: err.message })));
      return;
    }
    if (!ctx.active) return;
  }
  const org = ctx.path === '/' ? session.user.tokenInfo.organization : decodeURIComponent(ctx.path.split('/')[1] || '');
  const m = shell(org, sectionOf(ctx.path));
  if (!found) {
    m.removeAttribute('aria-busy');
    replace(m, h('div', { class: 'page' }, h('h1', { text: 'Page not found' }),
      h('p', {}, 'Nothing lives at this address. ', h('a', { href: url(`/${encodeURIComponent(org)}`), text: 'Go to the stacks' }), '.')));
    document.title = 'Not found · Tarmac';
    return;
  }
  ctx.params = found.params;
  // Busy while the view loads: assistive technologies wait, and so can tests.
  m.setAttribute('aria-busy', 'true');
  const spinner = loading();
  const timer = setTimeout(() => {
    if (ctx.active) replace(m, spinner);
  }, 150);
  let node;
  try {
    node = await found.view(ctx);
  } catch (err) {
    if (err && err.name === 'AbortError') return;
    if (err && err.status === 401) return;
    node = h('div', { class: 'page' }, h('h1', { text: 'Something went wrong' }),
      h('p', { class: 'error', role: 'alert', text: err.message || String(err) }));
  } finally {
    clearTimeout(timer);
  }
  if (!ctx.active) return;
  if (!node) {
    m.removeAttribute('aria-busy'); // a redirect: the next render draws the page
    return;
  }
  replace(m, node);
  m.removeAttribute('aria-busy');
  const h1 = m.querySelector('h1');
  if (h1) h1.tabIndex = -1; // focus target after navigation, announced by screen readers
  document.title = h1 ? `${h1.textContent} · Tarmac` : 'Tarmac';
  if (focus) (h1 || m).focus({ preventScroll: false });
}

start(renderPage);
