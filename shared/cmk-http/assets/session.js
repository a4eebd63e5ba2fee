// The session: sign-in from the URL fragment or the form, and loading and polling the org's
// keys and re-encryption.

import { createApi, isAuthFailure, tokenClaims } from './api.js';
import { describeError } from './words.js';
import { setJob } from './banner.js';
import { $, alertMessage } from './dom.js';
import { renderKeys } from './keys-table.js';
import { state } from './state.js';
import { closeMenu } from './menu.js';

export const TOKEN_KEY = 'cmk.token';
export const ORG_KEY = 'cmk.org';
const POLL_RUNNING_MS = 1000;
const POLL_FAILED_MS = 3000;
const POLL_IDLE_MS = 10000;

/** Takes a token from the URL fragment into this tab's session storage, then clears the fragment. */
export function readLogin() {
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

export function showLogin(reason, org) {
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

export function signOut(reason) {
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

export function startSession(token, org) {
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
    if (!isAuthFailure(err)) {
      alertMessage(`Could not load the keys: ${describeError(err)}`);
      $('alert').dataset.source = 'poll';
    }
  }
}

/**
 * Loads the keys and the job. A call made while a load is in flight loads once more after it,
 * so what an action changed is always shown.
 */
export function refresh() {
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
