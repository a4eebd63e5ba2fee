// The page's wording for failures, checked without a browser: every problem code the page can
// meet becomes words an admin can act on (the key check cannot fail on local keys in the
// browser suite, so its reasons are checked here).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { adviceFor, describeError, formatCount, plural } from '../../shared/cmk-http/assets/words.js';

const problem = (code, extra = {}) => ({ code, status: 409, detail: 'the detail', title: 'T', ...extra });

test('a failed key check says why and what to do, for every reason', () => {
  const expect = {
    access_denied: /denied access.*trusts the service with the external ID/,
    key_disabled: /disabled.*Enable it/,
    key_not_found: /not found.*Check the Key ARN/,
    invalid_key_state: /current state.*enabled symmetric/,
    throttled: /throttling.*try again/,
    unavailable: /did not answer.*try again/,
    unknown: /could not be used/,
  };
  for (const [reason, words] of Object.entries(expect)) {
    const text = describeError(problem('key_check_failed', { status: 422, reason }), 'Adding the key');
    assert.match(text, /^The key check failed: /, text);
    assert.match(text, words, text);
    assert.match(text, /Nothing was added/, text);
  }
});

test('conflicts and refusals are explained, not just named', () => {
  assert.match(describeError(problem('name_taken')), /already exists.*Choose another name/);
  assert.match(describeError(problem('reencryption_in_progress')), /Wait until it finishes/);
  assert.match(describeError(problem('key_is_default')), /Set another key as default first/);
  assert.match(describeError(problem('key_busy')), /being re-encrypted/);
  assert.match(describeError(problem('forbidden', { status: 403 })), /admin token is needed/);
  assert.match(describeError(problem('invalid_request', { detail: 'name must be 1 to 64 characters' }), 'Adding the key'), /^Adding the key failed: name must be/);
  assert.match(describeError({ code: 'network', detail: 'The service did not answer.' }), /did not answer/);
});

test('local keys get advice that fits them', () => {
  assert.match(adviceFor('access_denied', 'local'), /cmk local-key restore/);
  assert.match(adviceFor('access_denied', 'vault-transit'), /AppRole or token/);
  assert.match(adviceFor('invalid_key_state', 'vault-transit'), /derived=true/);
  assert.match(adviceFor('access_denied', 'aws-kms'), /external ID/);
  assert.equal(formatCount(1234567), '1,234,567');
  assert.equal(plural(1, 'data key', 'data keys'), '1 data key');
  assert.equal(plural(2000, 'data key', 'data keys'), '2,000 data keys');
});
