// The dialogs that change keys: disable one key, set its re-encryption rate, disable all.

import { isAuthFailure } from './api.js';
import { TYPE_LABELS, describeError, formatCount, plural } from './words.js';
import { setJob } from './banner.js';
import { openDialog } from './dialogs.js';
import { $, el, notice } from './dom.js';
import { eligibleTargets, keyName } from './keys.js';
import { refresh, state } from './state.js';

// ---- disable

export function openDisable(k) {
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

export async function submitDisable(e) {
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
    if (!isAuthFailure(err)) {
      $('disable-error').textContent = describeError(err, 'Disabling the key');
    }
  } finally {
    $('disable-submit').disabled = false;
  }
}

// ---- re-encryption rate

export function openRate(k) {
  state.rateKey = k;
  $('rate-title').textContent = `Re-encryption rate of “${k.name}”`;
  $('rate-limit').value = String(k.rewrap_rate_limit || '');
  $('rate-limit-error').textContent = '';
  $('rate-error').textContent = '';
  $('rate-submit').disabled = false;
  openDialog($('rate-dialog'));
  $('rate-limit').focus();
}

export async function submitRate(e) {
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
    if (!isAuthFailure(err)) {
      $('rate-error').textContent = describeError(err, 'Setting the rate');
    }
  } finally {
    $('rate-submit').disabled = false;
  }
}

// ---- disable all

export function openDisableAll() {
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

export async function submitDisableAll(e) {
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
    if (!isAuthFailure(err)) {
      $('disable-all-error').textContent = describeError(err, 'Disabling all keys');
    }
  } finally {
    $('disable-all-submit').disabled = false;
  }
}
