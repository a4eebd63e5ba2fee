// What the page knows about the org's keys, read from the state: names, which actions a key
// allows now and why not.

import { state } from './state.js';

export function keyById(id) {
  return state.listing?.keys.find((k) => k.id === id) || null;
}

export function keyName(id) {
  const k = keyById(id);
  if (k) return k.type === 'service-managed' ? 'the service-managed key' : `“${k.name}”`;
  return id === 'service' ? 'the service-managed key' : id;
}

export function jobUnfinished() {
  return state.job && (state.job.state === 'running' || state.job.state === 'failed');
}

/** Why Set as default is unavailable for `k`, or null. */
export function whyNoDefault(k) {
  if (k.default) return 'Already the default key.';
  if (k.state === 'disabled') return 'A disabled key cannot become the default.';
  if (k.busy || k.state === 'reencrypting') return 'Unavailable while this key is being re-encrypted.';
  if (k.state !== 'active') return 'Only an active key can become the default.';
  return null;
}

export function eligibleTargets(k) {
  return (state.listing?.keys || []).filter((t) => t.id !== k.id && t.state === 'active');
}

/** Why Disable is unavailable for `k`, or null. */
export function whyNoDisable(k) {
  if (k.type === 'service-managed') return 'The service-managed key cannot be disabled.';
  if (k.state === 'disabled') return 'Already disabled.';
  if (k.busy || k.state === 'reencrypting') return 'Unavailable while this key is being re-encrypted.';
  if (k.default) return 'The default key cannot be disabled. Set another key as default first.';
  if (jobUnfinished()) return 'Unavailable until the current re-encryption finishes.';
  if (eligibleTargets(k).length === 0) return 'No other active key can take over its data keys.';
  return null;
}

/** Why the re-encryption rate of `k` cannot be set, or null. */
export function whyNoRate(k) {
  if (k.type !== 'aws-kms' && k.type !== 'vault-transit') return 'Only AWS KMS and Vault transit keys have a re-encryption rate.';
  return null;
}

/** Why `k`'s data keys cannot be re-wrapped to its latest version, or null. AWS KMS keys
 * are offered: the service answers why nothing needs doing. */
export function whyNoRewrap(k) {
  if (k.type !== 'vault-transit' && k.type !== 'aws-kms') return 'Only Vault transit keys have versions to re-wrap to.';
  if (k.state !== 'active') return 'Only an active key is re-wrapped.';
  if (k.type === 'vault-transit' && jobUnfinished()) return 'Unavailable until the current re-encryption finishes.';
  return null;
}

export function whyNoDisableAll() {
  if (jobUnfinished()) return 'Unavailable until the current re-encryption finishes.';
  const active = (state.listing?.keys || []).filter(
    (k) => k.type !== 'service-managed' && k.state === 'active',
  );
  if (active.length === 0) return 'No Customer Managed Key is active.';
  return null;
}
