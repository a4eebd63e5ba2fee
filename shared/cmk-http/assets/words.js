// What the page says: labels for the API's values, and failures in words an admin can act on.

export const TYPE_LABELS = {
  'service-managed': 'Service-managed',
  'aws-kms': 'AWS KMS',
  local: 'Local',
  'vault-transit': 'Vault transit',
};

export const STATE_LABELS = {
  active: 'Active',
  reencrypting: 'Re-encrypting',
  disabled: 'Disabled',
};

export const HEALTH_LABELS = {
  ok: 'OK',
  access_denied: 'Access denied',
  key_disabled: 'Key disabled',
  key_not_found: 'Key not found',
  invalid_key_state: 'Invalid key state',
  throttled: 'Throttled',
  unavailable: 'Unavailable',
  unknown: 'Not checked',
};

/** A key's health badge: `unknown` after a check means the check itself got no answer. */
export function healthLabel(health) {
  if (health.status === 'unknown' && health.checked_at) return 'Check failed';
  return HEALTH_LABELS[health.status] || health.status;
}

export const JOB_KIND_LABELS = {
  adopt: 'First key added',
  disable: 'Disable key',
  disable_all: 'Disable all',
  rotate: 'Re-wrap to latest version',
};

/** What to do about a key that cannot be used, by `health.status` / problem `reason`. */
export const REASON_ADVICE = {
  access_denied:
    'The service was denied access to the key. Check that the role trusts the service with the external ID shown here, and that the key policy lets the role encrypt and decrypt.',
  key_disabled: 'The key is disabled in your key management system. Enable it, then try again.',
  key_not_found:
    'The key was not found. Check the Key ARN (or alias ARN), its account and its region.',
  invalid_key_state:
    'The key cannot be used in its current state (for example, pending deletion). Use an enabled symmetric encryption key.',
  throttled: 'The key management system is throttling requests. Wait a moment, then try again.',
  unavailable:
    'The key management system did not answer (unreachable, timed out, or a sealed Vault). Nothing is known to be wrong with the key: try again once it answers.',
  unknown: 'The key could not be used. Check the role and the key, then try again.',
};

/** Advice for `vault-transit` keys, where it differs from AWS KMS's. */
const VAULT_ADVICE = {
  access_denied:
    'Vault denied access. Check that the AppRole or token still has the policy shown in the setup (update on encrypt, decrypt and rewrap of this key), then try again.',
  key_not_found: 'The transit key was not found. Check the address, mount, namespace and key name.',
  invalid_key_state:
    'The transit key cannot serve this: it must be a derived key (derived=true), and no data key may be older than its min_decryption_version.',
};

/** Advice for a key of `type` that cannot be used for `reason`. */
export function adviceFor(reason, type) {
  if (type === 'local' && reason === 'access_denied') {
    return 'Access to this local key was revoked. Restore it (cmk local-key restore), then check it again or retry.';
  }
  if (type === 'vault-transit' && VAULT_ADVICE[reason]) return VAULT_ADVICE[reason];
  return REASON_ADVICE[reason] || REASON_ADVICE.unknown;
}

export function formatCount(n) {
  return Number(n || 0).toLocaleString('en-US');
}

export function plural(n, one, many) {
  return `${formatCount(n)} ${n === 1 ? one : many}`;
}

export function formatTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return d.toLocaleString('en-US', {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
  });
}

/** A failed call as one sentence or two for an admin. */
export function describeError(err, action) {
  const detail = err.detail ? ` (${err.detail})` : '';
  switch (err.code) {
    case 'network':
      return err.detail;
    case 'name_taken':
      return 'A key with this name already exists in this organization. Choose another name.';
    case 'key_limit_reached':
      return `This organization already uses ${err.limit || 'the most'} customer managed keys, the most it may have. Disable a key first (its data is re-encrypted to a key you choose).`;
    case 'key_check_failed': {
      const advice = REASON_ADVICE[err.reason] || REASON_ADVICE.unknown;
      return `The key check failed: ${HEALTH_LABELS[err.reason] || 'unknown reason'}. ${advice} Nothing was added.${detail}`;
    }
    case 'key_unavailable': {
      const advice = REASON_ADVICE[err.reason] || REASON_ADVICE.unknown;
      return `A key cannot be used now: ${HEALTH_LABELS[err.reason] || 'unknown reason'}. ${advice}`;
    }
    case 'reencryption_in_progress':
      return 'A re-encryption is running. Wait until it finishes (see the banner), then try again.';
    case 'key_busy':
      return 'This key is being re-encrypted. Wait until the re-encryption finishes, then try again.';
    case 'key_is_default':
      return 'The default key cannot be disabled. Set another key as default first.';
    case 'key_not_active':
      return `This needs an active key.${detail}`;
    case 'key_is_service_managed':
      return 'The service-managed key cannot be disabled. Use Disable all Customer Managed Keys to return to it.';
    case 'no_reencryption':
      return 'There is no unfinished re-encryption any more.';
    case 'conflict':
      return 'Someone else changed the keys at the same moment. Try again.';
    case 'forbidden':
      return 'Your token does not allow managing the keys of this organization: an admin token is needed.';
    case 'invalid_request':
      return `${action ? `${action} failed: ` : ''}${err.detail || 'the request was refused.'}`;
    default:
      return `${action ? `${action} failed: ` : ''}${err.title || 'error'}${detail}`;
  }
}
