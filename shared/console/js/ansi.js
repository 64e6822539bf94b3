// ANSI SGR to DOM: engines colour their output. Text becomes text nodes inside <span>s whose
// classes (16 colours, bold, dim, italic, underline) come from app.css; 256-colour and
// true-colour values are set through element.style, which the CSP allows (it forbids only
// style attributes in markup). Other escape sequences (cursor moves, OSC titles) are dropped.

// xterm's 16-colour indexes: 30-37 are 0-7, 90-97 are 8-15.
const CUBE = [0, 95, 135, 175, 215, 255];

/** RGB of xterm 256-colour index n (16-231 the 6x6x6 cube, 232-255 the greys). */
export function color256(n) {
  if (n < 16) return null; // themed: a class, so dark mode can adjust it
  if (n < 232) {
    const i = n - 16;
    return [CUBE[Math.floor(i / 36)], CUBE[Math.floor(i / 6) % 6], CUBE[i % 6]];
  }
  const g = 8 + (n - 232) * 10;
  return [g, g, g];
}

const RESET = () => ({ fg: null, bg: null, bold: false, dim: false, italic: false, underline: false });

/**
 * Applies one SGR parameter list to `state` (mutated). Colours are either
 * `{ index: 0..15 }` (themed) or `{ rgb: [r, g, b] }`.
 */
export function applySgr(state, params) {
  const p = params.length ? params : [0];
  for (let i = 0; i < p.length; i += 1) {
    const c = p[i];
    if (c === 0 || Number.isNaN(c)) Object.assign(state, RESET());
    else if (c === 1) state.bold = true;
    else if (c === 2) state.dim = true;
    else if (c === 3) state.italic = true;
    else if (c === 4) state.underline = true;
    else if (c === 22) { state.bold = false; state.dim = false; }
    else if (c === 23) state.italic = false;
    else if (c === 24) state.underline = false;
    else if (c >= 30 && c <= 37) state.fg = { index: c - 30 };
    else if (c >= 90 && c <= 97) state.fg = { index: c - 90 + 8 };
    else if (c >= 40 && c <= 47) state.bg = { index: c - 40 };
    else if (c >= 100 && c <= 107) state.bg = { index: c - 100 + 8 };
    else if (c === 39) state.fg = null;
    else if (c === 49) state.bg = null;
    else if (c === 38 || c === 48) {
      // 38;5;n or 38;2;r;g;b (48 the same for the background).
      let color = null;
      if (p[i + 1] === 5 && i + 2 < p.length) {
        const n = p[i + 2];
        if (n >= 0 && n <= 255) color = n < 16 ? { index: n } : { rgb: color256(n) };
        i += 2;
      } else if (p[i + 1] === 2 && i + 4 < p.length) {
        const rgb = [p[i + 2], p[i + 3], p[i + 4]].map((v) => Math.max(0, Math.min(255, v || 0)));
        color = { rgb };
        i += 4;
      } else {
        i = p.length; // malformed: ignore the rest
      }
      if (color) state[c === 38 ? 'fg' : 'bg'] = color;
    }
    // Anything else (blink, inverse, fonts...) is ignored.
  }
  return state;
}

// CSI sequences (ESC [ params final), OSC (ESC ] ... BEL or ESC \), and lone two-byte escapes.
const ESCAPES = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

/**
 * Splits text into segments `{ text, style }`, where style is a copy of the SGR state at that
 * point. `state` carries over between lines (an engine may colour across newlines).
 */
export function parseAnsi(text, state = RESET()) {
  const out = [];
  let last = 0;
  const push = (s) => {
    if (s) out.push({ text: s, style: { ...state } });
  };
  ESCAPES.lastIndex = 0;
  for (let m = ESCAPES.exec(text); m; m = ESCAPES.exec(text)) {
    push(text.slice(last, m.index));
    last = ESCAPES.lastIndex;
    if (m[2] === 'm') {
      const params = m[1] === '' ? [] : m[1].split(/[;:]/).map((x) => (x === '' ? 0 : Number(x)));
      applySgr(state, params);
    }
  }
  push(text.slice(last));
  return out;
}

/** The text without any escape sequence (downloads, searching). */
export function stripAnsi(text) {
  return String(text).replace(ESCAPES, '');
}

function isPlain(s) {
  return !s.fg && !s.bg && !s.bold && !s.dim && !s.italic && !s.underline;
}

/**
 * Renders text with ANSI codes into `parent` (or a new DocumentFragment) as text nodes and
 * styled spans. Returns the parent.
 */
export function renderAnsi(text, parent = document.createDocumentFragment(), state = RESET()) {
  for (const { text: t, style } of parseAnsi(String(text), state)) {
    if (isPlain(style)) {
      parent.append(document.createTextNode(t));
      continue;
    }
    const span = document.createElement('span');
    const classes = [];
    if (style.bold) classes.push('ansi-bold');
    if (style.dim) classes.push('ansi-dim');
    if (style.italic) classes.push('ansi-italic');
    if (style.underline) classes.push('ansi-underline');
    if (style.fg && style.fg.index !== undefined) classes.push(`ansi-fg-${style.fg.index}`);
    if (style.bg && style.bg.index !== undefined) classes.push(`ansi-bg-${style.bg.index}`);
    if (classes.length) span.className = classes.join(' ');
    if (style.fg && style.fg.rgb) span.style.color = `rgb(${style.fg.rgb.join(', ')})`;
    if (style.bg && style.bg.rgb) span.style.backgroundColor = `rgb(${style.bg.rgb.join(', ')})`;
    span.textContent = t;
    parent.append(span);
  }
  return parent;
}

export { RESET as initialState };
