// The re-encryption banner: progress, throttling, and retry or cancel of a failed job.

import { isAuthFailure } from './api.js';
import {
  HEALTH_LABELS,
  JOB_KIND_LABELS,
  adviceFor,
  describeError,
  formatCount,
  plural,
} from './words.js';
import { $, alertMessage, el, notice } from './dom.js';
import { keyById, keyName } from './keys.js';
import { refresh, state } from './state.js';

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
    case 'rotate':
      return `Re-wrapping the data keys of ${target} with its latest version; then older versions can be retired (min_decryption_version).`;
    default:
      return `Data keys move to ${target}.`;
  }
}

export function setJob(job) {
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

export async function onRetry() {
  $('banner-retry').disabled = true;
  alertMessage('');
  try {
    const res = await state.api.retry();
    notice('Retrying the re-encryption.');
    setJob(res.reencryption);
  } catch (err) {
    if (!isAuthFailure(err)) alertMessage(describeError(err, 'Retry'));
  } finally {
    $('banner-retry').disabled = false;
  }
  await refresh();
}

export async function onCancel() {
  $('banner-cancel').disabled = true;
  alertMessage('');
  try {
    const res = await state.api.cancel();
    setJob(res.reencryption);
  } catch (err) {
    if (!isAuthFailure(err)) alertMessage(describeError(err, 'Cancel'));
  } finally {
    $('banner-cancel').disabled = false;
  }
  await refresh();
}
