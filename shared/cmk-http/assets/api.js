// The HTTP API of API.md, as the page uses it: every call carries the admin's bearer token and
// every failure becomes an ApiError holding the problem's code, detail and reason.

/** A failed call: `status` 0 means the service did not answer. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = problem?.code || (status ? `http_${status}` : 'network');
    this.title = problem?.title || '';
    this.detail = problem?.detail || '';
    this.reason = problem?.reason || null;
    this.keyId = problem?.key_id || null;
    this.limit = problem?.limit || null;
    // Validation problems name the request field at fault (`name`, `role_arn`, ...).
    this.field = problem?.field || null;
  }
}

/**
 * Whether a failure ended the session (401 or 403): `onAuthFailure` has already answered it
 * (back to sign-in, or a message), so a caller shows nothing more.
 */
export function isAuthFailure(err) {
  return err?.status === 401 || err?.status === 403;
}

/**
 * A client for one org. `onAuthFailure(err)` is called on 401 and 403 before the error is
 * thrown, so the page can ask for another token.
 */
export function createApi({ org, token, onAuthFailure }) {
  const base = `/v1/orgs/${encodeURIComponent(org)}`;
  const enc = encodeURIComponent;

  async function call(method, path, body, asText = false) {
    const headers = { authorization: `Bearer ${token}`, accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(base + path, init);
    } catch {
      throw new ApiError(0, {
        detail: 'The service did not answer. Check that it is running, then try again.',
      });
    }
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!response.ok) {
      const err = new ApiError(response.status, json ?? { detail: text.slice(0, 300) });
      if (isAuthFailure(err)) onAuthFailure?.(err);
      throw err;
    }
    return asText ? text : json;
  }

  return {
    org,
    keys: () => call('GET', '/keys'),
    /** Setup values; the Vault policy names `vaultKeyName` at `vaultMount` where given. */
    setup: (vaultKeyName, vaultMount) => {
      const q = [];
      if (vaultKeyName) q.push(`vault_key_name=${enc(vaultKeyName)}`);
      if (vaultMount) q.push(`vault_mount=${enc(vaultMount)}`);
      return call('GET', q.length ? `/keys/setup?${q.join('&')}` : '/keys/setup');
    },
    /** The setup kit (CloudFormation YAML) of a trust mode, with a new KMS key or for an existing one. */
    setupKit: (trust, createKey) =>
      call('GET', `/keys/setup/cloudformation?trust=${enc(trust)}&create_key=${createKey}`, undefined, true),
    addKey: (body) => call('POST', '/keys', body),
    setDefault: (id) => call('POST', `/keys/${enc(id)}/default`),
    setRate: (id, limit) => call('PATCH', `/keys/${enc(id)}`, { rewrap_rate_limit: limit }),
    disable: (id, reencryptTo) => call('POST', `/keys/${enc(id)}/disable`, { reencrypt_to: reencryptTo }),
    disableAll: () => call('POST', '/keys/disable-all'),
    check: (id) => call('POST', `/keys/${enc(id)}/check`),
    rewrap: (id) => call('POST', `/keys/${enc(id)}/rewrap`),
    reencryption: () => call('GET', '/reencryption'),
    retry: () => call('POST', '/reencryption/retry'),
    cancel: () => call('POST', '/reencryption/cancel'),
  };
}

/** The claims of a JWT, read without checking the signature (the API checks it), or null. */
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    return JSON.parse(atob(padded));
  } catch {
    return null;
  }
}
