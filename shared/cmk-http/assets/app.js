// The Customer Managed Keys page: sign-in from the URL fragment, the keys table, the dialogs,
// the settings menu and the re-encryption banner. Plain DOM, no framework, no build step.

import { tokenClaims } from './api.js';
import {
  copyFrom,
  downloadKit,
  loadVaultSetup,
  openAdd,
  showKitCommand,
  showTrustFields,
  showTypeFields,
  showVaultAuthFields,
  submitAdd,
} from './add-dialog.js';
import { onCancel, onRetry } from './banner.js';
import { openDisableAll, submitDisable, submitDisableAll, submitRate } from './disable-dialogs.js';
import { $ } from './dom.js';
import { closeMenu, wireMenu } from './menu.js';
import {
  ORG_KEY,
  TOKEN_KEY,
  readLogin,
  refresh,
  showLogin,
  signOut,
  startSession,
} from './session.js';
import { renderKeys } from './keys-table.js';
import { connect, state } from './state.js';

function init() {
  connect({ refresh, renderKeys });
  $('add-key').addEventListener('click', openAdd);
  $('add-form').addEventListener('submit', submitAdd);
  for (const r of document.querySelectorAll('#add-form input[name="type"]')) {
    r.addEventListener('change', showTypeFields);
  }
  for (const r of document.querySelectorAll('#add-form input[name="vault-auth"]')) {
    r.addEventListener('change', showVaultAuthFields);
  }
  for (const id of ['add-vault-key-name', 'add-vault-mount']) {
    $(id).addEventListener('change', loadVaultSetup);
  }
  $('kit-download').addEventListener('click', downloadKit);
  $('kit-create-key').addEventListener('change', showKitCommand);
  for (const r of document.querySelectorAll('#add-form input[name="trust"]')) {
    r.addEventListener('change', showTrustFields);
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
