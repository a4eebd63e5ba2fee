// The Customer Managed Keys page: sign-in from the URL fragment, the keys table, the dialogs,
// the settings menu and the re-encryption banner. Plain DOM, no framework, no build step.

import { createApi, tokenClaims } from './api.js';
import {
  HEALTH_LABELS,
  JOB_KIND_LABELS,
  STATE_LABELS,
  TYPE_LABELS,
  adviceFor,
  describeError,
  formatCount,
  formatTime,
  plural,
} from './words.js';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'cmk.token';
const ORG_KEY = 'cmk.org';
const POLL_RUNNING_MS = 1000;
const POLL_FAILED_MS = 3000;
const POLL_IDLE_MS = 10000;

const state = {
  api: null,
  org: null,
  listing: null,
  job: null,
  // The id of a job seen unfinished in this tab, to announce how it ended.
  watchedJobId: null,
  pollTimer: null,
  openMenu: null,
  disableKey: null,
  pendingRender: false,
};

// ---------------------------------------------------------------- small DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svgIcon(pathD) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('width', '20');
  svg.setAttribute('height', '20');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('fill', 'currentColor');
  path.setAttribute('d', pathD);
  svg.append(path);
  return svg;
}

const DOTS = 'M12 7a2 2 0 1 1 0-4 2 2 0 0 1 0 4Zm0 7a2 2 0 1 1 0-4 2 2 0 0 1 0 4Zm0 7a2 2 0 1 1 0-4 2 2 0 0 1 0 4Z';

let noticeTimer = null;
function notice(text) {
  const box = $('notice');
  box.textContent = text;
  clearTimeout(noticeTimer);
  if (text) noticeTimer = setTimeout(() => (box.textContent = ''), 12000);
}

function alertMessage(text) {
  $('alert').textContent = text || '';
}

// ---------------------------------------------------------------- sign-in

/** Takes a token from the URL fragment into this tab's session storage, then clears the fragment. */
function readLogin() {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ''));
  const fragToken = fragment.get('token');
  if (fragToken) {
    const org = fragment.get('org') || tokenClaims(fragToken)?.org || '';
    sessionStorage.setItem(TOKEN_KEY, fragToken);
    sessionStorage.setItem(ORG_KEY, org);
  }
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  const token = sessionStorage.getItem(TOKEN_KEY);
  const org = sessionStorage.getItem(ORG_KEY) || (token && tokenClaims(token)?.org) || '';
  return { token, org, fragmentOrg: fragment.get('org') };
}

function showLogin(reason, org) {
  stopPolling();
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
  closeMenu();
  state.api = null;
  $('app').hidden = true;
  $('top-actions').hidden = true;
  $('org-chip').hidden = true;
  $('login').hidden = false;
  $('login-reason').textContent = reason || '';
  $('login-reason').hidden = !reason;
  const shownOrg = org || '<org>';
  $('login-command').textContent = `cmk token --org ${shownOrg} --role admin`;
  $('login-link').textContent = `${location.origin}/#org=${shownOrg}&token=<token>`;
  if (org) $('login-org').value = org;
  document.title = 'Sign in · Customer Managed Keys';
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(reason, state.org);
}

function onAuthFailure(err) {
  const org = state.org;
  sessionStorage.removeItem(TOKEN_KEY);
  if (err.status === 401) {
    showLogin(
      'Your token has expired or is not valid. Get a new admin token and sign in again.',
      org,
    );
  } else {
    showLogin(
      `This token cannot manage the keys of “${org}”: it must be an admin token of this organization.`,
      org,
    );
  }
}

function startSession(token, org) {
  const claims = tokenClaims(token);
  if (!claims) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('That is not a valid token. Copy the whole token printed by cmk token.', org);
    return;
  }
  if (typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now()) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('Your token has expired. Get a new admin token and sign in again.', org);
    return;
  }
  if (!org) {
    showLogin('The token names no organization. Enter the organization below.', '');
    return;
  }
  state.org = org;
  state.api = createApi({ org, token, onAuthFailure });
  $('login').hidden = true;
  $('app').hidden = false;
  $('top-actions').hidden = false;
  $('org-chip').hidden = false;
  $('org-chip').textContent = org;
  document.title = `Customer Managed Keys · ${org}`;
  refresh();
}

// ---------------------------------------------------------------- loading and polling

function stopPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

function schedule() {
  stopPolling();
  if (!state.api) return;
  const job = state.job;
  const delay =
    job?.state === 'running' ? POLL_RUNNING_MS : job?.state === 'failed' ? POLL_FAILED_MS : POLL_IDLE_MS;
  state.pollTimer = setTimeout(refresh, delay);
}

let refreshing = null;
let refreshAgain = false;

async function loadOnce(api) {
  try {
    const listing = await api.keys();
    if (api !== state.api) return;
    state.listing = listing;
    setJob(listing.reencryption);
    renderKeys();
    if ($('alert').dataset.source === 'poll') {
      alertMessage('');
      delete $('alert').dataset.source;
    }
  } catch (err) {
    if (api !== state.api) return;
    if (err.status !== 401 && err.status !== 403) {
      alertMessage(`Could not load the keys: ${describeError(err)}`);
      $('alert').dataset.source = 'poll';
    }
  }
}

/**
 * Loads the keys and the job. A call made while a load is in flight loads once more after it,
 * so what an action changed is always shown.
 */
function refresh() {
  if (!state.api) return Promise.resolve();
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  const api = state.api;
  refreshing = (async () => {
    do {
      refreshAgain = false;
      await loadOnce(api);
    } while (refreshAgain && api === state.api);
  })().finally(() => {
    refreshing = null;
    if (api === state.api) schedule();
  });
  return refreshing;
}

// ---------------------------------------------------------------- keys table

function keyById(id) {
  return state.listing?.keys.find((k) => k.id === id) || null;
}

function keyName(id) {
  const k = keyById(id);
  if (k) return k.type === 'service-managed' ? 'the service-managed key' : `“${k.name}”`;
  return id === 'service' ? 'the service-managed key' : id;
}

function jobUnfinished() {
  return state.job && (state.job.state === 'running' || state.job.state === 'failed');
}

/** Why Set as default is unavailable for `k`, or null. */
function whyNoDefault(k) {
  if (k.default) return 'Already the default key.';
  if (k.state === 'disabled') return 'A disabled key cannot become the default.';
  if (k.busy || k.state === 'reencrypting') return 'Unavailable while this key is being re-encrypted.';
  if (k.state !== 'active') return 'Only an active key can become the default.';
  return null;
}

function eligibleTargets(k) {
  return (state.listing?.keys || []).filter((t) => t.id !== k.id && t.state === 'active');
}

/** Why Disable is unavailable for `k`, or null. */
function whyNoDisable(k) {
  if (k.type === 'service-managed') return 'The service-managed key cannot be disabled.';
  if (k.state === 'disabled') return 'Already disabled.';
  if (k.busy || k.state === 'reencrypting') return 'Unavailable while this key is being re-encrypted.';
  if (k.default) return 'The default key cannot be disabled. Set another key as default first.';
  if (jobUnfinished()) return 'Unavailable until the current re-encryption finishes.';
  if (eligibleTargets(k).length === 0) return 'No other active key can take over its data keys.';
  return null;
}

/** Why the re-encryption rate of `k` cannot be set, or null. */
function whyNoRate(k) {
  if (k.type !== 'aws-kms') return 'Only AWS KMS keys have a re-encryption rate.';
  return null;
}

function whyNoDisableAll() {
  if (jobUnfinished()) return 'Unavailable until the current re-encryption finishes.';
  const active = (state.listing?.keys || []).filter(
    (k) => k.type !== 'service-managed' && k.state === 'active',
  );
  if (active.length === 0) return 'No Customer Managed Key is active.';
  return null;
}

function badge(text, tone) {
  return el('span', { class: `badge ${tone || ''}`.trim() }, text);
}

const HEALTH_TONES = { ok: 'good', unknown: 'neutral', throttled: 'warn' };
const STATE_TONES = { active: 'good', reencrypting: 'info', disabled: 'neutral' };

function rowFor(k) {
  const id = k.id;
  const typeCell = el(
    'td',
    { role: 'cell', 'data-label': 'Type' },
    el('span', { class: 'type-label' }, TYPE_LABELS[k.type] || k.type),
    k.aws ? el('span', { class: 'sub wrap' }, k.aws.key_arn) : null,
    k.rewrap_rate_limit
      ? el('span', { class: 'sub' }, `Re-encrypts at up to ${formatCount(k.rewrap_rate_limit)} requests/s`)
      : null,
  );
  const healthTone = HEALTH_TONES[k.health.status] || 'bad';
  const healthCell = el(
    'td',
    { role: 'cell', 'data-label': 'Health' },
    badge(HEALTH_LABELS[k.health.status] || k.health.status, healthTone),
    k.health.message && k.health.status !== 'ok'
      ? el('span', { class: 'sub' }, k.health.message)
      : null,
    k.health.checked_at ? el('span', { class: 'sub checked' }, `Checked ${formatTime(k.health.checked_at)}`) : null,
  );

  const noDefault = whyNoDefault(k);
  const defaultWhyId = `why-default-${id}`;
  const setDefault = el(
    'button',
    {
      type: 'button',
      class: 'btn small',
      disabled: Boolean(noDefault),
      'aria-describedby': noDefault ? defaultWhyId : null,
      title: noDefault,
      dataset: { focus: `default:${id}` },
      onclick: () => onSetDefault(k, setDefault),
    },
    'Set as default',
  );

  const noDisable = whyNoDisable(k);
  const disableWhyId = `why-disable-${id}`;
  const menuId = `menu-${id}`;
  const disableItem = el(
    'button',
    {
      type: 'button',
      role: 'menuitem',
      class: 'menu-item',
      'aria-disabled': noDisable ? 'true' : null,
      'aria-describedby': noDisable ? disableWhyId : null,
      title: noDisable,
      tabindex: '-1',
      onclick: () => {
        if (noDisable) return;
        closeMenu();
        openDisable(k);
      },
    },
    el('span', { class: 'menu-label' }, 'Disable'),
    noDisable ? el('span', { class: 'menu-why', id: disableWhyId, 'aria-hidden': 'true' }, noDisable) : null,
  );
  const checkItem = el(
    'button',
    {
      type: 'button',
      role: 'menuitem',
      class: 'menu-item',
      tabindex: '-1',
      onclick: () => {
        closeMenu();
        onCheck(k);
      },
    },
    el('span', { class: 'menu-label' }, 'Check health'),
  );
  const noRate = whyNoRate(k);
  const rateWhyId = `why-rate-${id}`;
  const rateItem = el(
    'button',
    {
      type: 'button',
      role: 'menuitem',
      class: 'menu-item',
      'aria-disabled': noRate ? 'true' : null,
      'aria-describedby': noRate ? rateWhyId : null,
      title: noRate,
      tabindex: '-1',
      onclick: () => {
        if (noRate) return;
        closeMenu();
        openRate(k);
      },
    },
    el('span', { class: 'menu-label' }, 'Set re-encryption rate'),
    noRate ? el('span', { class: 'menu-why', id: rateWhyId, 'aria-hidden': 'true' }, noRate) : null,
  );
  const menu = el(
    'div',
    { class: 'menu', id: menuId, role: 'menu', 'aria-label': `Actions for ${k.name}`, hidden: true },
    disableItem,
    checkItem,
    rateItem,
  );
  const menuButton = el(
    'button',
    {
      type: 'button',
      class: 'icon-btn',
      'aria-label': `Actions for ${k.name}`,
      'aria-haspopup': 'menu',
      'aria-expanded': 'false',
      'aria-controls': menuId,
      dataset: { focus: `menu:${id}` },
    },
    svgIcon(DOTS),
  );
  wireMenu(menuButton, menu);

  const actions = el(
    'td',
    { role: 'cell', class: 'actions' },
    el('div', { class: 'action-row' }, setDefault, el('div', { class: 'menu-wrap' }, menuButton, menu)),
    noDefault ? el('span', { class: 'reason', id: defaultWhyId }, noDefault) : null,
  );

  return el(
    'tr',
    { role: 'row', dataset: { keyId: id }, class: k.state === 'disabled' ? 'is-disabled' : null },
    el('th', { role: 'rowheader', scope: 'row', class: 'name' }, k.name),
    typeCell,
    el(
      'td',
      { role: 'cell', 'data-label': 'Default' },
      k.default ? badge('Default', 'primary') : el('span', { class: 'muted' }, 'No'),
    ),
    el('td', { role: 'cell', 'data-label': 'State' }, badge(STATE_LABELS[k.state] || k.state, STATE_TONES[k.state])),
    healthCell,
    el('td', { role: 'cell', 'data-label': 'Data keys', class: 'num' }, formatCount(k.data_keys)),
    actions,
  );
}

function renderKeys() {
  // Never pull a menu out from under the admin: render when it closes.
  if (state.openMenu) {
    state.pendingRender = true;
    return;
  }
  state.pendingRender = false;
  const listing = state.listing;
  if (!listing) return;
  const focused = document.activeElement?.dataset?.focus || null;
  const body = $('keys-body');
  body.replaceChildren(...listing.keys.map(rowFor));
  body.closest('table').setAttribute('aria-busy', 'false');
  if (focused) {
    const again = body.querySelector(`[data-focus="${CSS.escape(focused)}"]`);
    if (again && !again.disabled) again.focus();
    else if (focused.includes(':')) {
      body.querySelector(`[data-focus="menu:${CSS.escape(focused.split(':')[1])}"]`)?.focus();
    }
  }
  const why = whyNoDisableAll();
  const item = $('disable-all-item');
  if (why) item.setAttribute('aria-disabled', 'true');
  else item.removeAttribute('aria-disabled');
  item.title = why || '';
  $('disable-all-why').textContent = why || '';
  $('disable-all-why').hidden = !why;
}

// ---------------------------------------------------------------- menus

function menuItems(menu) {
  return [...menu.querySelectorAll('[role="menuitem"]')];
}

function openMenuFor(button, menu, focusLast = false) {
  closeMenu();
  menu.hidden = false;
  button.setAttribute('aria-expanded', 'true');
  state.openMenu = { button, menu };
  const items = menuItems(menu);
  (focusLast ? items[items.length - 1] : items[0])?.focus();
}

function closeMenu(returnFocus = false) {
  const open = state.openMenu;
  if (!open) return;
  open.menu.hidden = true;
  open.button.setAttribute('aria-expanded', 'false');
  state.openMenu = null;
  if (returnFocus) open.button.focus();
  if (state.pendingRender) renderKeys();
}

function wireMenu(button, menu) {
  button.addEventListener('click', () => {
    if (state.openMenu?.menu === menu) closeMenu(true);
    else openMenuFor(button, menu);
  });
  button.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      openMenuFor(button, menu, e.key === 'ArrowUp');
    }
  });
  menu.addEventListener('keydown', (e) => {
    const items = menuItems(menu);
    const i = items.indexOf(document.activeElement);
    if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      closeMenu(true);
    } else if (e.key === 'ArrowDown') {
      e.preventDefault();
      items[(i + 1) % items.length]?.focus();
    } else if (e.key === 'ArrowUp') {
      e.preventDefault();
      items[(i - 1 + items.length) % items.length]?.focus();
    } else if (e.key === 'Home') {
      e.preventDefault();
      items[0]?.focus();
    } else if (e.key === 'End') {
      e.preventDefault();
      items[items.length - 1]?.focus();
    } else if (e.key === 'Tab') {
      closeMenu(false);
    }
  });
}

document.addEventListener('click', (e) => {
  const open = state.openMenu;
  if (open && !open.menu.contains(e.target) && !open.button.contains(e.target)) closeMenu();
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && state.openMenu) closeMenu(true);
});

// ---------------------------------------------------------------- actions on a row

async function onSetDefault(k, button) {
  button.disabled = true;
  alertMessage('');
  try {
    await state.api.setDefault(k.id);
    notice(`“${k.name}” is now the default key. New data keys are encrypted with it.`);
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) {
      alertMessage(`Could not set “${k.name}” as default: ${describeError(err)}`);
    }
  }
  await refresh();
}

async function onCheck(k) {
  alertMessage('');
  notice(`Checking “${k.name}”…`);
  try {
    const { key } = await state.api.check(k.id);
    const label = HEALTH_LABELS[key.health.status] || key.health.status;
    if (key.health.status === 'ok') notice(`“${k.name}” works: health OK.`);
    else {
      notice('');
      alertMessage(
        `“${k.name}” cannot be used: ${label}. ${adviceFor(key.health.status, key.type)}`.trim(),
      );
    }
  } catch (err) {
    notice('');
    if (err.status !== 401 && err.status !== 403) {
      alertMessage(`Could not check “${k.name}”: ${describeError(err)}`);
    }
  }
  await refresh();
}

// ---------------------------------------------------------------- dialogs

function openDialog(dialog) {
  closeMenu();
  if (!dialog.open) dialog.showModal();
}

for (const dialog of document.querySelectorAll('dialog')) {
  for (const b of dialog.querySelectorAll('[data-close]')) {
    b.addEventListener('click', () => dialog.close());
  }
}

function setFieldError(input, errorEl, message) {
  errorEl.textContent = message || '';
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}

// ---- add

const NAME_RE = /^[\p{L}\p{N} _.:/()-]+$/u;
const ROLE_ARN_RE = /^arn:aws(-cn|-us-gov)?:iam::\d{12}:role\/[A-Za-z0-9+=,.@_/-]+$/;
const KEY_ARN_RE =
  /^arn:aws(-cn|-us-gov)?:kms:[a-z0-9-]+:\d{12}:(key\/[A-Za-z0-9-]{1,64}|alias\/[A-Za-z0-9/_-]{1,250})$/;

function acceptedTypes() {
  return (document.body.dataset.keyTypes || '').split(/\s+/).filter(Boolean);
}

function selectedType() {
  return document.querySelector('#add-form input[name="type"]:checked')?.value || 'aws-kms';
}

function showTypeFields() {
  $('add-aws').hidden = selectedType() !== 'aws-kms';
}

async function loadSetup() {
  $('setup-error').textContent = '';
  try {
    const s = await state.api.setup();
    $('external-id').textContent = s.external_id;
    $('trust-policy').textContent = JSON.stringify(s.trust_policy, null, 2);
    $('key-policy').textContent = JSON.stringify(s.key_policy_statement, null, 2);
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) {
      $('setup-error').textContent = `Could not load the setup values: ${describeError(err)}`;
    }
  }
}

function openAdd() {
  const form = $('add-form');
  form.reset();
  for (const [input, error] of [
    ['add-name', 'add-name-error'],
    ['add-role-arn', 'add-role-arn-error'],
    ['add-key-arn', 'add-key-arn-error'],
  ]) {
    setFieldError($(input), $(error), '');
  }
  $('add-error').textContent = '';
  const types = acceptedTypes();
  const localOk = types.includes('local');
  $('add-type-local-row').hidden = !localOk;
  $('add-type-local-hint').hidden = !localOk;
  const awsHint = $('add-type-aws-hint');
  awsHint.textContent = types.includes('aws-kms')
    ? 'A key in your AWS account, used through a role you create.'
    : 'A key in your AWS account, used through a role you create. This service runs on local backends and accepts local keys only: choose Local key to try it.';
  $('add-type-aws').checked = true;
  showTypeFields();
  $('add-submit').disabled = false;
  $('add-submit').textContent = 'Add key';
  openDialog($('add-dialog'));
  $('add-name').focus();
  loadSetup();
}

function validateAdd() {
  const name = $('add-name').value.trim();
  let first = null;
  const fail = (input, error, message) => {
    setFieldError($(input), $(error), message);
    if (message && !first) first = $(input);
  };
  if (!name) fail('add-name', 'add-name-error', 'Enter a name for the key.');
  else if ([...name].length > 64) fail('add-name', 'add-name-error', 'The name can be at most 64 characters.');
  else if (!NAME_RE.test(name))
    fail('add-name', 'add-name-error', 'Use letters, digits, spaces and - _ . : / ( ) only.');
  else fail('add-name', 'add-name-error', '');
  if (selectedType() === 'aws-kms') {
    const role = $('add-role-arn').value.trim();
    const key = $('add-key-arn').value.trim();
    if (!role) fail('add-role-arn', 'add-role-arn-error', 'Enter the ARN of the role the service assumes.');
    else if (!ROLE_ARN_RE.test(role))
      fail(
        'add-role-arn',
        'add-role-arn-error',
        'This is not an IAM role ARN. It looks like arn:aws:iam::111122223333:role/cmk-access.',
      );
    else fail('add-role-arn', 'add-role-arn-error', '');
    if (!key) fail('add-key-arn', 'add-key-arn-error', 'Enter the ARN of the KMS key or of its alias.');
    else if (!KEY_ARN_RE.test(key))
      fail(
        'add-key-arn',
        'add-key-arn-error',
        'This is not a KMS key or alias ARN. It looks like arn:aws:kms:us-east-1:111122223333:key/… or …:alias/cmk.',
      );
    else fail('add-key-arn', 'add-key-arn-error', '');
  }
  return first;
}

async function submitAdd(e) {
  e.preventDefault();
  $('add-error').textContent = '';
  const invalid = validateAdd();
  if (invalid) {
    invalid.focus();
    return;
  }
  const type = selectedType();
  const body = { name: $('add-name').value.trim(), type };
  if (type === 'aws-kms') {
    body.role_arn = $('add-role-arn').value.trim();
    body.key_arn = $('add-key-arn').value.trim();
  }
  const submit = $('add-submit');
  submit.disabled = true;
  submit.textContent = 'Checking the key…';
  try {
    const res = await state.api.addKey(body);
    $('add-dialog').close();
    const job = res.reencryption;
    notice(
      job
        ? `“${res.key.name}” was added and is now the default. Its re-encryption of ${plural(job.total, 'data key', 'data keys')} has started.`
        : `“${res.key.name}” was added.`,
    );
    if (job) setJob(job);
    await refresh();
  } catch (err) {
    if (err.status === 401 || err.status === 403) return;
    const message = describeError(err, 'Adding the key');
    if (err.code === 'name_taken') {
      setFieldError($('add-name'), $('add-name-error'), message);
      $('add-name').focus();
    } else if (err.code === 'invalid_request' && /role_arn/.test(err.detail)) {
      setFieldError($('add-role-arn'), $('add-role-arn-error'), err.detail);
      $('add-role-arn').focus();
    } else if (err.code === 'invalid_request' && /key_arn/.test(err.detail)) {
      setFieldError($('add-key-arn'), $('add-key-arn-error'), err.detail);
      $('add-key-arn').focus();
    } else if (err.code === 'invalid_request' && /^name/.test(err.detail)) {
      setFieldError($('add-name'), $('add-name-error'), err.detail);
      $('add-name').focus();
    } else {
      $('add-error').textContent = message;
    }
  } finally {
    submit.disabled = false;
    submit.textContent = 'Add key';
  }
}

async function copyFrom(id, button) {
  const text = $(id).textContent;
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // No clipboard permission: select the text so the admin can copy it by hand.
    const range = document.createRange();
    range.selectNodeContents($(id));
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }
  button.textContent = ok ? 'Copied' : 'Selected';
  setTimeout(() => (button.textContent = 'Copy'), 2000);
}

// ---- disable

function openDisable(k) {
  state.disableKey = k;
  $('disable-title').textContent = `Disable “${k.name}”`;
  $('disable-desc').textContent =
    `New data keys will no longer use “${k.name}”. Its ${plural(k.data_keys, 'data key', 'data keys')} ` +
    'are re-encrypted with the key you choose below; the encrypted data itself does not change. ' +
    'A banner shows the progress.';
  const list = $('disable-targets');
  list.replaceChildren(
    ...eligibleTargets(k).map((t) =>
      el(
        'div',
        { class: 'radio' },
        el('input', { type: 'radio', name: 'reencrypt_to', id: `target-${t.id}`, value: t.id }),
        el(
          'label',
          { for: `target-${t.id}` },
          t.name,
          el(
            'span',
            { class: 'muted' },
            ` · ${TYPE_LABELS[t.type] || t.type}${t.default ? ' · default' : ''}`,
          ),
        ),
      ),
    ),
  );
  $('disable-target-error').textContent = '';
  $('disable-error').textContent = '';
  $('disable-submit').disabled = false;
  openDialog($('disable-dialog'));
  list.querySelector('input')?.focus();
}

async function submitDisable(e) {
  e.preventDefault();
  const k = state.disableKey;
  const chosen = document.querySelector('#disable-targets input:checked');
  $('disable-error').textContent = '';
  if (!chosen) {
    $('disable-target-error').textContent = 'Choose the key that re-encrypts this key’s data keys.';
    $('disable-targets').querySelector('input')?.focus();
    return;
  }
  $('disable-target-error').textContent = '';
  $('disable-submit').disabled = true;
  try {
    const res = await state.api.disable(k.id, chosen.value);
    $('disable-dialog').close();
    notice(`Disabling “${k.name}”: its data keys are being re-encrypted with ${keyName(chosen.value)}.`);
    setJob(res.reencryption);
    await refresh();
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) {
      $('disable-error').textContent = describeError(err, 'Disabling the key');
    }
  } finally {
    $('disable-submit').disabled = false;
  }
}

// ---- re-encryption rate

function openRate(k) {
  state.rateKey = k;
  $('rate-title').textContent = `Re-encryption rate of “${k.name}”`;
  $('rate-limit').value = String(k.rewrap_rate_limit || '');
  $('rate-limit-error').textContent = '';
  $('rate-error').textContent = '';
  $('rate-submit').disabled = false;
  openDialog($('rate-dialog'));
  $('rate-limit').focus();
}

async function submitRate(e) {
  e.preventDefault();
  const k = state.rateKey;
  const raw = $('rate-limit').value.trim();
  const limit = Number(raw);
  $('rate-error').textContent = '';
  if (!/^[0-9]+$/.test(raw) || limit < 1 || limit > 10000) {
    $('rate-limit-error').textContent = 'Enter a whole number from 1 to 10,000.';
    $('rate-limit').focus();
    return;
  }
  $('rate-limit-error').textContent = '';
  $('rate-submit').disabled = true;
  try {
    await state.api.setRate(k.id, limit);
    $('rate-dialog').close();
    notice(`“${k.name}” now re-encrypts at up to ${formatCount(limit)} requests per second.`);
    await refresh();
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) {
      $('rate-error').textContent = describeError(err, 'Setting the rate');
    }
  } finally {
    $('rate-submit').disabled = false;
  }
}

// ---- disable all

function openDisableAll() {
  const active = (state.listing?.keys || []).filter(
    (k) => k.type !== 'service-managed' && k.state === 'active',
  );
  const total = active.reduce((n, k) => n + k.data_keys, 0);
  $('disable-all-summary').textContent =
    `${plural(active.length, 'key', 'keys')} will be disabled (${active.map((k) => `“${k.name}”`).join(', ')}), ` +
    `and ${plural(total, 'data key', 'data keys')} re-encrypted. A banner shows the progress.`;
  $('disable-all-error').textContent = '';
  $('disable-all-submit').disabled = false;
  openDialog($('disable-all-dialog'));
  $('disable-all-submit').focus();
}

async function submitDisableAll(e) {
  e.preventDefault();
  $('disable-all-submit').disabled = true;
  $('disable-all-error').textContent = '';
  try {
    const res = await state.api.disableAll();
    $('disable-all-dialog').close();
    notice('Disabling all Customer Managed Keys: data keys are being re-encrypted with the service-managed key.');
    setJob(res.reencryption);
    await refresh();
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) {
      $('disable-all-error').textContent = describeError(err, 'Disabling all keys');
    }
  } finally {
    $('disable-all-submit').disabled = false;
  }
}

// ---------------------------------------------------------------- the banner

function describeJob(job) {
  const sources = job.source_key_ids.map(keyName);
  const target = keyName(job.target_key_id);
  switch (job.kind) {
    case 'adopt':
      return `The first Customer Managed Key was added: data keys move from the service-managed key to ${target}.`;
    case 'disable':
      return `Disabling ${sources.join(', ')}: its data keys move to ${target}.`;
    case 'disable_all':
      return 'Disabling all Customer Managed Keys: data keys return to the service-managed key.';
    default:
      return `Data keys move to ${target}.`;
  }
}

function setJob(job) {
  state.job = job || null;
  if (job && (job.state === 'running' || job.state === 'failed')) {
    state.watchedJobId = job.id;
  } else if (job && state.watchedJobId === job.id) {
    state.watchedJobId = null;
    if (job.state === 'completed') {
      notice(`Re-encryption complete: ${plural(job.done, 'data key', 'data keys')} re-encrypted.`);
    } else if (job.state === 'cancelled') {
      notice('Re-encryption cancelled. Every data key is still readable with its current key.');
    }
  }
  renderBanner();
}

function renderBanner() {
  const job = state.job;
  const banner = $('banner');
  if (!job || (job.state !== 'running' && job.state !== 'failed')) {
    banner.hidden = true;
    return;
  }
  const failed = job.state === 'failed';
  banner.hidden = false;
  banner.classList.toggle('is-failed', failed);
  $('banner-title').textContent = failed ? 'Re-encryption stopped with failures' : 'Re-encryption in progress';
  $('banner-kind').textContent = JOB_KIND_LABELS[job.kind] || job.kind;
  $('banner-desc').textContent = describeJob(job);
  const total = Math.max(job.total, 0);
  const done = Math.min(job.done, total);
  const bar = $('banner-progress');
  bar.setAttribute('aria-valuemax', String(total));
  bar.setAttribute('aria-valuenow', String(done));
  bar.setAttribute('aria-valuetext', `${formatCount(done)} of ${formatCount(total)} data keys`);
  const pct = total === 0 ? 100 : Math.floor((done / total) * 100);
  $('banner-fill').style.width = `${pct}%`;
  $('banner-count').textContent = `${formatCount(done)} of ${formatCount(total)} data keys re-encrypted (${pct}%).`;
  $('banner-failed').textContent = job.failed ? `${plural(job.failed, 'data key', 'data keys')} failed.` : '';
  const throttled = $('banner-throttled');
  throttled.hidden = !job.throttled;
  throttled.textContent = job.throttled
    ? `Your key management system is throttling this re-encryption: it runs at ${formatCount(
        job.throttled_rate || 0,
      )} requests per second and speeds up again by itself.`
    : '';

  const errorsBox = $('banner-errors');
  if (job.errors?.length) {
    errorsBox.hidden = false;
    $('banner-errors-title').textContent = failed
      ? 'These keys could not be used. Fix access to them, then retry; or cancel: every data key stays readable with its current key.'
      : 'Some data keys failed so far:';
    const groups = new Map();
    for (const e of job.errors) {
      const key = `${e.key_id}|${e.reason}`;
      const g = groups.get(key) || { ...e, count: 0 };
      g.count += 1;
      groups.set(key, g);
    }
    $('banner-errors-list').replaceChildren(
      ...[...groups.values()].slice(0, 5).map((g) =>
        el(
          'li',
          {},
          el('strong', {}, `${keyName(g.key_id)}: ${HEALTH_LABELS[g.reason] || g.reason}`),
          ` (${plural(g.count, 'data key', 'data keys')} in the first errors). `,
          adviceFor(g.reason, keyById(g.key_id)?.type),
          g.message ? el('span', { class: 'sub' }, g.message) : null,
        ),
      ),
    );
  } else {
    errorsBox.hidden = true;
  }
  $('banner-actions').hidden = !failed;
}

async function onRetry() {
  $('banner-retry').disabled = true;
  alertMessage('');
  try {
    const res = await state.api.retry();
    notice('Retrying the re-encryption.');
    setJob(res.reencryption);
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) alertMessage(describeError(err, 'Retry'));
  } finally {
    $('banner-retry').disabled = false;
  }
  await refresh();
}

async function onCancel() {
  $('banner-cancel').disabled = true;
  alertMessage('');
  try {
    const res = await state.api.cancel();
    setJob(res.reencryption);
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) alertMessage(describeError(err, 'Cancel'));
  } finally {
    $('banner-cancel').disabled = false;
  }
  await refresh();
}

// ---------------------------------------------------------------- wiring

function init() {
  $('add-key').addEventListener('click', openAdd);
  $('add-form').addEventListener('submit', submitAdd);
  for (const r of document.querySelectorAll('#add-form input[name="type"]')) {
    r.addEventListener('change', showTypeFields);
  }
  for (const b of document.querySelectorAll('[data-copy]')) {
    b.addEventListener('click', () => copyFrom(b.dataset.copy, b));
  }
  $('disable-form').addEventListener('submit', submitDisable);
  $('disable-all-form').addEventListener('submit', submitDisableAll);
  $('rate-form').addEventListener('submit', submitRate);
  $('banner-retry').addEventListener('click', onRetry);
  $('banner-cancel').addEventListener('click', onCancel);
  $('sign-out').addEventListener('click', () => signOut('You signed out.'));
  wireMenu($('settings-button'), $('settings-menu'));
  $('disable-all-item').addEventListener('click', () => {
    if ($('disable-all-item').getAttribute('aria-disabled') === 'true') return;
    closeMenu();
    openDisableAll();
  });
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('login-token').value.trim();
    const org = $('login-org').value.trim() || tokenClaims(token)?.org || '';
    if (!token) {
      $('login-error').textContent = 'Paste an admin token.';
      $('login-token').focus();
      return;
    }
    $('login-error').textContent = '';
    $('login-token').value = '';
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(ORG_KEY, org);
    startSession(token, org);
  });
  // Poll right away when the tab comes back to the front.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.api) refresh();
  });
  window.addEventListener('hashchange', () => {
    const { token, org } = readLogin();
    if (token) startSession(token, org);
  });

  const { token, org } = readLogin();
  if (token) startSession(token, org);
  else showLogin('', org);
}

init();
