// The "Add customer managed key" dialog: its fields per key type, checks, and the request.

import { isAuthFailure } from './api.js';
import { describeError, plural } from './words.js';
import { setJob } from './banner.js';
import { openDialog, setFieldError } from './dialogs.js';
import { $, notice } from './dom.js';
import { refresh, state } from './state.js';

// ---- add

// The form's input for each request field a problem can name.
const FIELD_INPUTS = {
  name: 'add-name',
  role_arn: 'add-role-arn',
  key_arn: 'add-key-arn',
  address: 'add-vault-address',
  mount: 'add-vault-mount',
  key_name: 'add-vault-key-name',
  namespace: 'add-vault-namespace',
  role_id: 'add-vault-role-id',
  secret_id: 'add-vault-secret-id',
  token: 'add-vault-token-value',
};
const VAULT_INPUTS = Object.values(FIELD_INPUTS).filter((id) => id.startsWith('add-vault-'));
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

export function showTypeFields() {
  $('add-aws').hidden = selectedType() !== 'aws-kms';
  $('add-vault').hidden = selectedType() !== 'vault-transit';
}

function vaultAuth() {
  return document.querySelector('#add-form input[name="vault-auth"]:checked')?.value || 'approle';
}

/** AppRole's role and secret ids, or a token. */
export function showVaultAuthFields() {
  const token = vaultAuth() === 'token';
  $('add-vault-role-id-row').hidden = token;
  $('add-vault-secret-id-row').hidden = token;
  $('add-vault-token-row').hidden = !token;
}

/** The Vault policy and commands for the key name and mount typed so far. */
export async function loadVaultSetup() {
  $('vault-setup-error').textContent = '';
  try {
    const s = await state.api.setup($('add-vault-key-name').value.trim(), $('add-vault-mount').value.trim());
    if (!s.vault) return;
    $('vault-requirement').textContent = s.vault.requirement;
    $('vault-policy').textContent = s.vault.policy;
    $('vault-commands').textContent = s.vault.commands;
  } catch (err) {
    if (!isAuthFailure(err)) {
      $('vault-setup-error').textContent = `Could not load the Vault policy: ${describeError(err)}`;
    }
  }
}

/** What `keys/setup` answered, for the trust mode shown. */
let setup = null;

function selectedTrust() {
  return document.querySelector('#add-form input[name="trust"]:checked')?.value || 'external_id';
}

/** The setup values of the selected trust mode: OIDC's provider and audience, or the external ID. */
export function showTrustFields() {
  const oidc = selectedTrust() === 'oidc';
  for (const id of ['provider-url-row', 'audience-row', 'setup-hint-oidc']) $(id).hidden = !oidc;
  for (const id of ['external-id-row', 'setup-hint-external']) $(id).hidden = oidc;
  if (!setup) return;
  const policy = oidc && setup.oidc ? setup.oidc.trust_policy : setup.trust_policy;
  $('trust-policy').textContent = JSON.stringify(policy, null, 2);
}

/** The file name of the setup kit, and the commands that deploy it and read its outputs. */
function kitName() {
  return `cmk-access-${state.api.org}`;
}

function showKitCommand() {
  const name = kitName();
  const existing = $('kit-create-key').checked ? '' : ' --parameter-overrides KeyArn=<your key ARN>';
  $('kit-command').textContent = [
    `aws cloudformation deploy --template-file ${name}.yaml --stack-name ${name} --capabilities CAPABILITY_NAMED_IAM${existing}`,
    `aws cloudformation describe-stacks --stack-name ${name} --query "Stacks[0].Outputs"`,
    '# then enter RoleArn and KeyArn below',
  ].join('\n');
}

export { showKitCommand };

/** Downloads the setup kit of the selected trust mode (the request carries the token). */
export async function downloadKit() {
  $('setup-error').textContent = '';
  try {
    const yaml = await state.api.setupKit(selectedTrust(), $('kit-create-key').checked);
    const url = URL.createObjectURL(new Blob([yaml], { type: 'application/yaml' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = `${kitName()}.yaml`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (err) {
    if (!isAuthFailure(err)) {
      $('setup-error').textContent = `Could not make the template: ${describeError(err)}`;
    }
  }
}

async function loadSetup() {
  $('setup-error').textContent = '';
  setup = null;
  try {
    const s = await state.api.setup();
    setup = s;
    $('external-id').textContent = s.external_id;
    showKitCommand();
    $('key-policy').textContent = JSON.stringify(s.key_policy_statement, null, 2);
    $('add-trust-oidc-row').hidden = !s.oidc;
    $('add-trust-oidc-hint').hidden = !s.oidc;
    if (s.oidc) {
      $('provider-url').textContent = s.oidc.provider_url;
      $('audience').textContent = s.oidc.audience;
    }
    $(s.default_trust === 'oidc' && s.oidc ? 'add-trust-oidc' : 'add-trust-external').checked = true;
    showTrustFields();
  } catch (err) {
    if (!isAuthFailure(err)) {
      $('setup-error').textContent = `Could not load the setup values: ${describeError(err)}`;
    }
  }
}

export function openAdd() {
  const form = $('add-form');
  form.reset();
  for (const [input, error] of [
    ['add-name', 'add-name-error'],
    ['add-role-arn', 'add-role-arn-error'],
    ['add-key-arn', 'add-key-arn-error'],
    ...VAULT_INPUTS.map((id) => [id, `${id}-error`]),
  ]) {
    setFieldError($(input), $(error), '');
  }
  $('add-error').textContent = '';
  const types = acceptedTypes();
  const localOk = types.includes('local');
  $('add-type-local-row').hidden = !localOk;
  $('add-type-local-hint').hidden = !localOk;
  const vaultOk = types.includes('vault-transit');
  $('add-type-vault-row').hidden = !vaultOk;
  $('add-type-vault-hint').hidden = !vaultOk;
  $('add-vault-approle').checked = true;
  showVaultAuthFields();
  if (vaultOk) loadVaultSetup();
  const awsHint = $('add-type-aws-hint');
  awsHint.textContent = types.includes('aws-kms')
    ? 'A key in your AWS account, used through a role you create.'
    : 'A key in your AWS account, used through a role you create. This service runs on local backends and accepts local keys only: choose Local key to try it.';
  $('add-type-aws').checked = true;
  $('add-trust-external').checked = true;
  showTypeFields();
  showTrustFields();
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
  if (selectedType() === 'vault-transit') {
    const need = (id, message) => fail(id, `${id}-error`, $(id).value.trim() ? '' : message);
    const address = $('add-vault-address').value.trim();
    if (!address) fail('add-vault-address', 'add-vault-address-error', 'Enter the Vault server\'s URL.');
    else if (!/^https?:\/\/[^\s/?#@]+/.test(address))
      fail('add-vault-address', 'add-vault-address-error', 'This is not a URL: give the scheme (https) and the host, such as vault.example.com:8200.');
    else fail('add-vault-address', 'add-vault-address-error', '');
    need('add-vault-key-name', 'Enter the transit key\'s name.');
    if (vaultAuth() === 'token') need('add-vault-token-value', 'Enter the token the service uses.');
    else {
      need('add-vault-role-id', 'Enter the AppRole\'s role ID.');
      need('add-vault-secret-id', 'Enter a secret ID of the AppRole.');
    }
  }
  return first;
}

export async function submitAdd(e) {
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
    body.trust = selectedTrust();
  }
  if (type === 'vault-transit') {
    body.address = $('add-vault-address').value.trim();
    body.key_name = $('add-vault-key-name').value.trim();
    const mount = $('add-vault-mount').value.trim();
    if (mount) body.mount = mount;
    const namespace = $('add-vault-namespace').value.trim();
    if (namespace) body.namespace = namespace;
    body.auth =
      vaultAuth() === 'token'
        ? { method: 'token', token: $('add-vault-token-value').value.trim() }
        : {
            method: 'approle',
            role_id: $('add-vault-role-id').value.trim(),
            secret_id: $('add-vault-secret-id').value.trim(),
          };
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
    if (isAuthFailure(err)) return;
    const message = describeError(err, 'Adding the key');
    // The problem names the field at fault (`field`); the page never reads `detail` for it.
    const input = err.code === 'name_taken' ? 'name' : err.code === 'invalid_request' && err.field;
    const target = FIELD_INPUTS[input];
    if (target) {
      setFieldError($(target), $(`${target}-error`), err.code === 'name_taken' ? message : err.detail);
      $(target).focus();
    } else {
      $('add-error').textContent = message;
    }
  } finally {
    submit.disabled = false;
    submit.textContent = 'Add key';
  }
}

export async function copyFrom(id, button) {
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
