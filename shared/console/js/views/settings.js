// A stack's deployment settings: a read-only view, a form for the common fields, and a JSON
// editor for everything (the rare fields: gitHub, OIDC, executor...). Secrets are write-only:
// the API returns them sealed, the console shows "set" with Replace and Remove, and sends a
// value only when the user typed a new one. Validation errors from the server are shown next
// to the field whose path the message names.

import { api } from '../api.js';
import { h, replace, badge } from '../dom.js';
import { field, select, errorSlot, showError, withBusy, empty } from '../ui.js';

const ENGINES = [['', 'Detect from the program'], ['terraform', 'Terraform'], ['tofu', 'OpenTofu'], ['pulumi', 'Pulumi']];
const FLAGS = [
  ['skipIntermediateDeployments', 'Skip intermediate deployments', 'When several are queued, run only the newest.'],
  ['deleteAfterDestroy', 'Delete the stack after a successful destroy', ''],
  ['remediateIfDriftDetected', 'Remediate when drift is detected', 'A detect-drift run that finds drift starts an update.'],
];

const get = (obj, path) => path.split('.').reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), obj);
const isSecret = (v) => v !== null && typeof v === 'object' && ('secret' in v || 'ciphertext' in v);
const sealedOf = (v) => (v && (v.ciphertext || v.secret)) || '';
const REFERENCES = { fromSecretsManager: 'Secrets Manager', fromParameterStore: 'Parameter Store', fromVault: 'Vault' };
/** A value read from a secret store when a run starts: kept as written, never a value. */
const isReference = (v) => v !== null && typeof v === 'object' && Object.keys(REFERENCES).some((k) => k in v);
function describeReference(v) {
  const [kind, r] = Object.entries(v).find(([k]) => k in REFERENCES) || ['', {}];
  const what = r.secretId || r.name || `${r.path || ''} ${r.key || ''}`.trim();
  return `from ${REFERENCES[kind]}: ${what}${r.jsonKey ? ` (${r.jsonKey})` : ''}`;
}

/** The settings as the API returned them, minus response-only keys. */
function stored(body) {
  if (!body) return null;
  const { version: _v, source: _s, ...rest } = body;
  return rest;
}

export async function settingsTab(sc) {
  const { ctx, S } = sc;
  let current = null;
  try {
    current = stored(await api(`${S}/deployments/settings`, { signal: ctx.signal }));
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  const root = h('section', { class: 'settings', 'aria-label': 'Settings' });
  const status = h('p', { class: 'status-line', role: 'status' });

  const show = (mode, message = '') => {
    status.textContent = message;
    if (mode === 'form') replace(root, status, formEditor(S, current, onSaved, () => show('view')));
    else if (mode === 'json') replace(root, status, jsonEditor(S, current, onSaved, () => show('view')));
    else replace(root, status, readView(current, show));
    const focusTarget = root.querySelector(mode === 'view' ? '.settings-actions button' : 'input, textarea');
    if (focusTarget && message !== undefined && mode !== 'initial') focusTarget.focus();
  };
  const onSaved = (saved) => {
    current = stored(saved);
    show('view', 'Settings saved.');
  };
  if (current) replace(root, status, readView(current, show));
  else replace(root, status, formEditor(S, null, onSaved, null));
  return root;
}

// ---- Read-only view ----

function readView(s, show) {
  const editForm = h('button', { type: 'button', class: 'btn btn-primary', text: 'Edit' });
  const editJson = h('button', { type: 'button', class: 'btn', text: 'Edit as JSON' });
  editForm.addEventListener('click', () => show('form'));
  editJson.addEventListener('click', () => show('json'));
  const git = get(s, 'sourceContext.git') || {};
  const op = s.operationContext || {};
  const env = Object.entries(op.environmentVariables || {});
  const options = op.options || {};
  const row = (term, ...value) => [h('dt', { text: term }), h('dd', {}, ...value)];
  const text = (v) => (v === undefined || v === null || v === '' ? h('span', { class: 'muted', text: 'not set' }) : h('code', { text: String(v) }));
  const rest = restOf(s);
  return h('div', {},
    h('div', { class: 'settings-actions' }, editForm, editJson),
    h('h2', { text: 'Source' }),
    h('dl', { class: 'props' },
      row('Repository', text(git.repoUrl)),
      row('Branch', text(git.branch)),
      row('Directory', text(git.repoDir)),
      row('Commit', text(git.commit)),
      row('Git access token', isSecret(get(git, 'gitAuth.accessToken')) ? badge('set', 'info') : text(null))),
    h('h2', { text: 'Run' }),
    h('dl', { class: 'props' },
      row('Pre-run commands', (op.preRunCommands || []).length
        ? h('ol', { class: 'commands' }, op.preRunCommands.map((c) => h('li', {}, h('code', { text: c }))))
        : text(null)),
      row('Timeout', options.timeout ? `${options.timeout} s` : text(null)),
      row('Engine', text(options.engine)),
      FLAGS.map(([key, label]) => row(label, options[key] ? 'yes' : 'no'))),
    h('h2', { text: 'Environment variables' }),
    env.length
      ? h('dl', { class: 'props env' }, env.map(([k, v]) => row(k,
        isSecret(v) ? badge('set', 'info')
          : isReference(v) ? h('code', { class: 'reference', text: describeReference(v) })
            : h('code', { text: String(v) }))))
      : empty('None.'),
    Object.keys(rest).length
      ? [h('h2', { text: 'Other settings' }), h('pre', { class: 'json' }, JSON.stringify(maskSecrets(rest), null, 2))]
      : null);
}

// Fields the form edits; everything else is "other", edited as JSON.
const FORM_PATHS = ['sourceContext.git.repoUrl', 'sourceContext.git.branch', 'sourceContext.git.repoDir',
  'sourceContext.git.commit', 'sourceContext.git.gitAuth.accessToken', 'operationContext.preRunCommands',
  'operationContext.environmentVariables', 'operationContext.options.timeout', 'operationContext.options.engine',
  ...FLAGS.map(([k]) => `operationContext.options.${k}`)];

/** The settings without the form's fields (and without objects left empty). */
function restOf(s) {
  const copy = JSON.parse(JSON.stringify(s || {}));
  for (const path of FORM_PATHS) {
    const keys = path.split('.');
    const last = keys.pop();
    const parent = keys.reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), copy);
    if (parent && typeof parent === 'object') delete parent[last];
  }
  const prune = (o) => {
    if (!o || typeof o !== 'object' || Array.isArray(o) || isSecret(o)) return o;
    for (const k of Object.keys(o)) {
      o[k] = prune(o[k]);
      if (o[k] && typeof o[k] === 'object' && !Array.isArray(o[k]) && !Object.keys(o[k]).length) delete o[k];
    }
    return o;
  };
  return prune(copy);
}

/** For display only: a secret shows as "[secret: set]". */
function maskSecrets(v) {
  if (isSecret(v)) return '[secret: set]';
  if (Array.isArray(v)) return v.map(maskSecrets);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, maskSecrets(x)]));
  return v;
}

// ---- Secret input ----

/**
 * A write-only secret: "set" with Replace/Remove when one is stored, else an input. `value()`
 * says what to send: `undefined` keep, `null` remove, `{secret}` a new value.
 */
function secretInput(label, existing, { name, removable = true } = {}) {
  const hadOne = isSecret(existing);
  let mode = hadOne ? 'keep' : 'new';
  const f = field(label, { type: 'password', name, autocomplete: 'new-password' });
  const el = h('div', { class: 'secret-field' });
  const render = () => {
    if (mode === 'keep' || mode === 'remove') {
      const replaceBtn = h('button', { type: 'button', class: 'btn btn-small', text: 'Replace', 'aria-label': `Replace ${label}` });
      const removeBtn = h('button', { type: 'button', class: 'btn btn-small', text: mode === 'remove' ? 'Undo remove' : 'Remove', 'aria-label': `${mode === 'remove' ? 'Undo remove of' : 'Remove'} ${label}` });
      replaceBtn.addEventListener('click', () => {
        mode = 'new';
        render();
        f.input.focus();
      });
      removeBtn.addEventListener('click', () => {
        mode = mode === 'remove' ? 'keep' : 'remove';
        render();
        el.querySelectorAll('button')[1].focus();
      });
      replace(el, h('div', { class: 'field' },
        h('span', { class: 'field-label', text: label }),
        h('span', { class: 'inline' }, mode === 'remove' ? badge('will be removed', 'warn') : badge('set', 'info'), replaceBtn, removable ? removeBtn : null),
        f.error));
    } else {
      const keep = hadOne ? h('button', { type: 'button', class: 'btn btn-small', text: 'Keep current', 'aria-label': `Keep current ${label}` }) : null;
      if (keep) keep.addEventListener('click', () => {
        mode = 'keep';
        f.input.value = '';
        render();
      });
      replace(el, f.el, keep);
    }
  };
  render();
  return {
    el,
    error: f.error,
    input: f.input,
    value() {
      if (mode === 'keep') return undefined;
      if (mode === 'remove') return null;
      const v = f.input.value;
      if (v === '') return hadOne ? undefined : null;
      return { secret: v };
    },
  };
}

// ---- Form editor ----

function formEditor(S, s, onSaved, onCancel) {
  const fields = []; // [{ path, error, input }] for mapping server errors
  const reg = (path, f) => {
    fields.push({ path, error: f.error, input: f.input });
    return f;
  };
  const git = get(s, 'sourceContext.git') || {};
  const op = (s && s.operationContext) || {};
  const options = op.options || {};

  const repoUrl = reg('sourceContext.git.repoUrl', field('Repository URL', { value: git.repoUrl || '', name: 'repoUrl', hint: 'https://…, ssh://…, git@host:path (file:// only if the server allows local repositories).' }));
  const branch = reg('sourceContext.git.branch', field('Branch', { value: git.branch || '', name: 'branch', hint: 'e.g. refs/heads/main or main. Empty: the repository\'s default.' }));
  const repoDir = reg('sourceContext.git.repoDir', field('Directory in the repository', { value: git.repoDir || '', name: 'repoDir', hint: 'Where the program is; empty for the root.' }));
  const commit = reg('sourceContext.git.commit', field('Commit', { value: git.commit || '', name: 'commit', hint: 'Optional: pins every deployment to this commit.' }));
  const token = secretInput('Git access token', get(git, 'gitAuth.accessToken'), { name: 'gitAccessToken' });
  fields.push({ path: 'sourceContext.git.gitAuth', error: token.error, input: token.input });

  const pre = reg('operationContext.preRunCommands', field('Pre-run commands', {
    type: 'textarea', name: 'preRunCommands', value: (op.preRunCommands || []).join('\n'),
    hint: 'One command per line, run in order before the engine.', attrs: { rows: 3 },
  }));
  const timeout = reg('operationContext.options.timeout', field('Timeout (seconds)', {
    type: 'number', name: 'timeout', value: options.timeout ?? '', hint: 'Empty: the server\'s default.', attrs: { min: 1, step: 1 },
  }));
  const engineSelect = select(ENGINES, options.engine || '');
  const engine = reg('operationContext.options.engine', field('Engine', { control: engineSelect }));
  const flags = FLAGS.map(([key, label, hint]) => {
    const f = field(label, { type: 'checkbox', name: key, hint: hint || undefined });
    f.input.checked = !!options[key];
    reg(`operationContext.options.${key}`, f);
    return [key, f];
  });

  // Environment variables: rows of name, value (or "set"), secret, remove.
  const envSlot = errorSlot();
  const envRows = [];
  const envBody = h('div', { class: 'env-rows' });
  const addRow = (name = '', value = '', original = null) => {
    const row = envRowEditor(name, value, original, () => {
      envRows.splice(envRows.indexOf(row), 1);
      row.el.remove();
      addButton.focus();
    });
    envRows.push(row);
    envBody.append(row.el);
    return row;
  };
  const addButton = h('button', { type: 'button', class: 'btn btn-small', text: 'Add variable' });
  addButton.addEventListener('click', () => addRow().name.input.focus());
  const originalEnv = op.environmentVariables || {};
  for (const [k, v] of Object.entries(originalEnv)) addRow(k, v, { name: k, value: v });

  const save = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Save settings' });
  const saveSlot = errorSlot();
  const cancel = onCancel ? h('button', { type: 'button', class: 'btn', text: 'Cancel' }) : null;
  if (cancel) cancel.addEventListener('click', onCancel);

  const form = h('form', { class: 'settings-form', novalidate: true },
    s ? null : h('p', { class: 'notice notice-info', text: 'This stack has no deployment settings yet. Say where its program is; deployments and schedules need them.' }),
    h('fieldset', {}, h('legend', { text: 'Source' }), repoUrl.el, branch.el, repoDir.el, commit.el, token.el),
    h('fieldset', {}, h('legend', { text: 'Run' }), pre.el, timeout.el, engine.el, flags.map(([, f]) => f.el)),
    h('fieldset', {}, h('legend', { text: 'Environment variables' }),
      h('p', { class: 'hint', text: 'Secret values are encrypted by the server and never shown again.' }),
      envBody, addButton, envSlot),
    h('div', { class: 'form-actions' }, save, cancel, saveSlot));

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    for (const f of fields) showError(f.error, null);
    for (const r of envRows) r.clearErrors();
    showError(envSlot, null);
    const patch = {
      sourceContext: {
        git: {
          repoUrl: repoUrl.input.value.trim() || null,
          branch: branch.input.value.trim() || null,
          repoDir: repoDir.input.value.trim() || null,
          commit: commit.input.value.trim() || null,
        },
      },
      operationContext: {
        preRunCommands: pre.input.value.split('\n').map((l) => l.trim()).filter(Boolean),
        options: {
          timeout: timeout.input.value === '' ? null : Number(timeout.input.value),
          engine: engineSelect.value || null,
        },
      },
    };
    if (!patch.operationContext.preRunCommands.length) patch.operationContext.preRunCommands = null;
    for (const [key, f] of flags) patch.operationContext.options[key] = f.input.checked ? true : null;
    const tokenValue = token.value();
    if (tokenValue !== undefined) patch.sourceContext.git.gitAuth = { accessToken: tokenValue };
    // Variables: a merge, so removed names are sent as null; kept secrets are not sent
    // (or, renamed, sent back sealed, which the server accepts as its own ciphertext).
    const env = {};
    for (const name of Object.keys(originalEnv)) env[name] = null;
    for (const r of envRows) {
      const { name, value } = r.read();
      if (!name && (value === undefined || value === '')) continue; // an untouched new row
      if (value === undefined) delete env[name];
      else env[name] = value;
    }
    patch.operationContext.environmentVariables = env;

    withBusy(save, 'Saving…', async () => {
      try {
        const saved = await api(`${S}/deployments/settings`, { method: 'POST', body: patch });
        onSaved(saved);
      } catch (err) {
        if (err.status !== 400) throw err;
        if (!placeError(err.message, fields, envRows, envSlot)) throw err;
      }
    }, saveSlot);
  });
  return form;
}

/** One environment variable row. `original` is { name, value } as stored, or null. */
function envRowEditor(name, value, original, onRemove) {
  if (isReference(value)) return referenceRow(name, value, onRemove);
  const secret = isSecret(value);
  const nameField = field('Name', { value: name, name: 'envName', attrs: { class: 'env-name' } });
  const secretBox = field('Secret', { type: 'checkbox', name: 'envSecret' });
  secretBox.input.checked = secret;
  let valueEditor;
  const valueHolder = h('div', { class: 'env-value' });
  const renderValue = () => {
    if (secretBox.input.checked) {
      valueEditor = secretInput('Value', original && isSecret(original.value) ? original.value : null, { name: 'envValue', removable: false });
      replace(valueHolder, valueEditor.el);
    } else {
      const f = field('Value', { value: secret || typeof value !== 'string' ? '' : value, name: 'envValue' });
      valueEditor = { el: f.el, error: f.error, input: f.input, value: () => f.input.value };
      replace(valueHolder, f.el);
    }
  };
  renderValue();
  secretBox.input.addEventListener('change', renderValue);
  const remove = h('button', { type: 'button', class: 'btn btn-small', text: 'Remove', 'aria-label': `Remove variable ${name || ''}`.trim() });
  remove.addEventListener('click', onRemove);
  const el = h('div', { class: 'env-row', role: 'group', 'aria-label': `Variable ${name || '(new)'}` },
    nameField.el, valueHolder, secretBox.el, remove);
  return {
    el,
    name: nameField,
    get valueError() {
      return valueEditor.error;
    },
    clearErrors() {
      showError(nameField.error, null);
      showError(valueEditor.error, null);
    },
    read() {
      const n = nameField.input.value.trim();
      let v;
      if (secretBox.input.checked) {
        // undefined: keep what is stored; null (nothing typed for a new one): send nothing.
        v = valueEditor.value();
        if (v === null) v = undefined;
        // A kept secret under a new name is sent back sealed (the server accepts its own).
        if (v === undefined && original && isSecret(original.value) && n !== original.name) {
          v = { secret: sealedOf(original.value) };
        }
      } else {
        v = valueEditor.value();
      }
      return { name: n, value: v };
    },
  };
}

/** A reference row: its name may change, its reference is edited as JSON, and it is sent back as it is. */
function referenceRow(name, value, onRemove) {
  const nameField = field('Name', { value: name, name: 'envName', attrs: { class: 'env-name' } });
  const error = errorSlot();
  const shown = h('div', { class: 'env-value' },
    h('code', { class: 'reference', text: describeReference(value) }),
    h('p', { class: 'hint', text: 'Read when a run starts; change it with Edit as JSON.' }), error);
  const remove = h('button', { type: 'button', class: 'btn btn-small', text: 'Remove', 'aria-label': `Remove variable ${name}` });
  remove.addEventListener('click', onRemove);
  return {
    el: h('div', { class: 'env-row', role: 'group', 'aria-label': `Variable ${name}` }, nameField.el, shown, remove),
    name: nameField,
    valueError: error,
    clearErrors() {
      showError(nameField.error, null);
      showError(error, null);
    },
    read() {
      return { name: nameField.input.value.trim(), value };
    },
  };
}

/**
 * Shows a 400 message next to the field whose path it names. Returns false when no field
 * matches (the caller shows it by the Save button).
 */
function placeError(message, fields, envRows, envSlot) {
  const err = new Error(message);
  const badName = /environment variable name '([^']*)'/.exec(message);
  if (badName) {
    const row = envRows.find((r) => r.read().name === badName[1]) || envRows[envRows.length - 1];
    if (row) {
      showError(row.name.error, err);
      row.name.input.focus();
      return true;
    }
  }
  const envPath = /operationContext\.environmentVariables\.([A-Za-z0-9_]+)/.exec(message);
  if (envPath) {
    const row = envRows.find((r) => r.read().name === envPath[1]);
    if (row) {
      showError(row.valueError, err);
      return true;
    }
  }
  if (/environmentVariables/.test(message)) {
    showError(envSlot, err);
    return true;
  }
  // The longest registered path the message names.
  const hit = fields.filter((f) => message.includes(f.path)).sort((a, b) => b.path.length - a.path.length)[0];
  if (!hit) return false;
  showError(hit.error, err);
  if (hit.input && hit.input.isConnected) hit.input.focus();
  return true;
}

// ---- JSON editor ----

/**
 * The whole settings as JSON, replaced on save (PUT). Secrets appear as their sealed
 * `{"ciphertext": ...}`, which the server accepts back as is; a new one is `{"secret": "..."}`.
 */
function jsonEditor(S, s, onSaved, onCancel) {
  const toCiphertext = (v) => {
    if (isSecret(v)) return { ciphertext: sealedOf(v) };
    if (Array.isArray(v)) return v.map(toCiphertext);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toCiphertext(x)]));
    return v;
  };
  const editor = field('Settings (JSON)', {
    type: 'textarea',
    name: 'settingsJson',
    value: JSON.stringify(toCiphertext(s || {}), null, 2),
    hint: 'Saving replaces all the settings with this object. Secrets show as their ciphertext: leave one as it is to keep it, or write {"secret": "new value"} to replace it.',
    attrs: { rows: 18, class: 'code-input' },
  });
  const save = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Save JSON' });
  const cancel = h('button', { type: 'button', class: 'btn', text: 'Cancel' });
  cancel.addEventListener('click', onCancel);
  const slot = errorSlot();
  const form = h('form', { class: 'settings-form', novalidate: true }, editor.el, h('div', { class: 'form-actions' }, save, cancel, slot));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    showError(editor.error, null);
    let body;
    try {
      body = JSON.parse(editor.input.value);
    } catch (err) {
      showError(editor.error, new Error(`Not valid JSON: ${err.message}`));
      editor.input.focus();
      return;
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) {
      showError(editor.error, new Error('The settings must be a JSON object.'));
      return;
    }
    withBusy(save, 'Saving…', async () => {
      onSaved(await api(`${S}/deployments/settings`, { method: 'PUT', body }));
    }, editor.error);
  });
  return form;
}
