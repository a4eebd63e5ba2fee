// The keys table: one row per key with its badges and menu, and the actions of a row.

import { isAuthFailure } from './api.js';
import {
  HEALTH_LABELS,
  STATE_LABELS,
  TYPE_LABELS,
  adviceFor,
  describeError,
  formatCount,
  formatTime,
  healthLabel,
} from './words.js';
import { openDisable, openRate } from './disable-dialogs.js';
import { DOTS, $, alertMessage, el, notice, svgIcon } from './dom.js';
import { closeMenu, wireMenu } from './menu.js';
import { whyNoDefault, whyNoDisable, whyNoDisableAll, whyNoRate, whyNoRewrap } from './keys.js';
import { setJob } from './banner.js';
import { refresh, state } from './state.js';

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
    k.vault ? el('span', { class: 'sub wrap' }, `${k.vault.address} · ${k.vault.mount}/${k.vault.key_name}`) : null,
    k.vault
      ? el('span', { class: 'sub' }, `Logs in: ${k.vault.auth.method === 'token' ? 'token' : 'AppRole'} ${k.vault.auth.fingerprint}`)
      : null,
    k.aws ? el('span', { class: 'sub wrap' }, k.aws.key_arn) : null,
    k.aws
      ? el('span', { class: 'sub' }, k.aws.trust === 'oidc' ? 'Trusts: OpenID Connect' : 'Trusts: external ID')
      : null,
    k.rewrap_rate_limit
      ? el('span', { class: 'sub' }, `Re-encrypts at up to ${formatCount(k.rewrap_rate_limit)} requests/s`)
      : null,
  );
  const healthTone = HEALTH_TONES[k.health.status] || 'bad';
  const healthCell = el(
    'td',
    { role: 'cell', 'data-label': 'Health' },
    badge(healthLabel(k.health), healthTone),
    k.health.message && k.health.status !== 'ok'
      ? el('span', { class: 'sub' }, k.health.message)
      : null,
    k.health.checked_at ? el('span', { class: 'sub checked' }, `Checked ${formatTime(k.health.checked_at)}`) : null,
    k.health.status === 'ok' && k.health.last_failure
      ? el(
          'span',
          { class: 'sub', title: k.health.last_failure.message || '' },
          `Last failed ${formatTime(k.health.last_failure.at)}: ${
            HEALTH_LABELS[k.health.last_failure.status] || k.health.last_failure.status
          }`,
        )
      : null,
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
  const noRewrap = whyNoRewrap(k);
  const rewrapWhyId = `why-rewrap-${id}`;
  const rewrapItem = el(
    'button',
    {
      type: 'button',
      role: 'menuitem',
      class: 'menu-item',
      'aria-disabled': noRewrap ? 'true' : null,
      'aria-describedby': noRewrap ? rewrapWhyId : null,
      title: noRewrap,
      tabindex: '-1',
      onclick: () => {
        if (noRewrap) return;
        closeMenu();
        onRewrap(k);
      },
    },
    el('span', { class: 'menu-label' }, 'Re-wrap to latest version'),
    noRewrap ? el('span', { class: 'menu-why', id: rewrapWhyId, 'aria-hidden': 'true' }, noRewrap) : null,
  );
  const menu = el(
    'div',
    { class: 'menu', id: menuId, role: 'menu', 'aria-label': `Actions for ${k.name}`, hidden: true },
    disableItem,
    checkItem,
    rateItem,
    rewrapItem,
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

export function renderKeys() {
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



async function onSetDefault(k, button) {
  button.disabled = true;
  alertMessage('');
  try {
    await state.api.setDefault(k.id);
    notice(`“${k.name}” is now the default key. New data keys are encrypted with it.`);
  } catch (err) {
    if (!isAuthFailure(err)) {
      alertMessage(`Could not set “${k.name}” as default: ${describeError(err)}`);
    }
  }
  await refresh();
}

/** After the customer rotated the key: a job re-wraps its data keys (or, for AWS KMS, why
 * nothing needs doing). */
async function onRewrap(k) {
  alertMessage('');
  try {
    const res = await state.api.rewrap(k.id);
    if (res.explanation) notice(res.explanation);
    if (res.reencryption) {
      notice(`Re-wrapping the data keys of “${k.name}” with its latest version.`);
      setJob(res.reencryption);
    }
  } catch (err) {
    if (!isAuthFailure(err)) {
      alertMessage(`Could not re-wrap “${k.name}”: ${describeError(err)}`);
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
    if (!isAuthFailure(err)) {
      alertMessage(`Could not check “${k.name}”: ${describeError(err)}`);
    }
  }
  await refresh();
}
