// Where the console lives on its origin. It may be reached under a path prefix that the
// server never sees: API Gateway's `/_aws/execute-api/{id}/$default` in the AWS emulator, a
// custom domain's base path mapping, a reverse proxy. The server puts the path it received
// in `<meta name="tarmac-path">`; what the browser's path has before it is the prefix, `base`.
// Every URL the console makes (API calls, links, pushState) is `url(path)`, and the router
// routes on `consolePath(location.pathname)`.

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The prefix: '' at the root of the origin, else e.g. '/_aws/execute-api/abc/$default'. */
function findBase() {
  const meta = document.querySelector('meta[name="tarmac-path"]');
  const received = meta ? meta.getAttribute('content') : null;
  const here = location.pathname;
  if (!received || !received.startsWith('/')) return '';
  if (here.endsWith(received)) return here.slice(0, here.length - received.length);
  // A gateway may hand the path on decoded (or encoded differently): match by segments.
  const mine = here.split('/');
  const theirs = received.split('/').slice(1);
  if (mine.length - 1 < theirs.length) return '';
  const tail = mine.slice(mine.length - theirs.length);
  if (!tail.every((seg, i) => safeDecode(seg) === safeDecode(theirs[i]))) return '';
  return mine.slice(0, mine.length - theirs.length).join('/');
}

export const base = findBase();

/** The URL path (for fetch, href, src, pushState) of an origin-relative console or API path. */
export function url(path) {
  return path.startsWith('/') ? `${base}${path}` : path;
}

/** The console's own path of a URL path on this origin, or null if it is outside the console. */
export function consolePath(pathname) {
  if (!base) return pathname;
  if (pathname === base) return '/';
  if (pathname.startsWith(`${base}/`)) return pathname.slice(base.length);
  return null;
}

// The page's own references are relative to the path it was served at, but pushState moves
// the document's URL, and the browser fetches the icon again after a navigation: pin it to
// where it is now, before the app navigates anywhere.
for (const link of document.querySelectorAll('link[rel~="icon"][href]')) {
  link.setAttribute('href', new URL(link.href).pathname);
}
