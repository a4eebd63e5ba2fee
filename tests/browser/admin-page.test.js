// The Customer Managed Keys page in a real browser: every flow of the seed, clicked through by
// role and accessible name, with `cmk verify` proving after each flow that every sample
// ciphertext still decrypts; axe scans and screenshots at 1280×800 and 390×844.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';

import {
  DESKTOP,
  PHONE,
  assertAccessible,
  cmk,
  eventually,
  launchBrowser,
  newPage,
  screenshot,
  startServer,
  tempDir,
  verify,
} from './lib/harness.js';

// Enough data keys, rewrapped in small batches, that a job runs for a few seconds and its
// progress can be seen.
const DATA_KEYS = Number(process.env.CMK_BROWSER_DATA_KEYS || 20000);
const BATCH_SIZE = process.env.CMK_BROWSER_BATCH_SIZE || '10';
const JOB_TIMEOUT = 120_000;

let dataDir;
let server;
let browser;
let page;

const banner = () => page.getByRole('region', { name: /re-encryption/i });
const row = (name) => page.getByRole('row').filter({ has: page.getByRole('rowheader', { name, exact: true }) });
const dialog = (name) => page.getByRole('dialog', { name });

async function assertNoPageProblems(p = page) {
  assert.deepEqual(p.problems, [], 'no page errors or CSP violations');
}

/** Waits until the banner has shown a job and the job ended (the banner is gone). */
async function waitBannerGone() {
  await banner().waitFor({ state: 'hidden', timeout: JOB_TIMEOUT });
}

async function keyId(name) {
  const id = await row(name).getAttribute('data-key-id');
  assert.ok(id, `row ${name} has a key id`);
  return id;
}

async function cellText(name, column) {
  // The columns, in order: Name (row header), Type, Default, State, Health, Data keys, actions.
  const index = { Type: 0, Default: 1, State: 2, Health: 3, 'Data keys': 4 }[column];
  return (await row(name).getByRole('cell').nth(index).innerText()).trim();
}

async function addLocalKey(name) {
  await page.getByRole('button', { name: 'Add Customer Managed Key', exact: true }).click();
  const d = dialog('Add Customer Managed Key');
  await d.waitFor();
  await d.getByRole('textbox', { name: 'Name', exact: true }).fill(name);
  await d.getByRole('radio', { name: 'Local key' }).check();
  await d.getByRole('button', { name: 'Add key' }).click();
  await d.waitFor({ state: 'hidden' });
  await row(name).waitFor();
}

describe('the Customer Managed Keys page', { timeout: 600_000 }, () => {
  before(async () => {
    dataDir = tempDir('cmk-browser-');
    const seeded = cmk(dataDir, ['seed', '--org', 'acme', '--data-keys', String(DATA_KEYS)]);
    assert.ok(seeded.ok, seeded.out);
    server = await startServer(dataDir, ['--batch-size', BATCH_SIZE, '--worker-concurrency', '1']);
    browser = await launchBrowser();
    page = await newPage(browser, DESKTOP);
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  });

  test('without a token, or with an expired one, the page says how to get one', async () => {
    const p = await newPage(browser, DESKTOP);
    await p.goto(server.base);
    const heading = p.getByRole('heading', { name: 'Sign in to manage Customer Managed Keys' });
    await heading.waitFor();
    assert.match(await p.locator('#login').innerText(), /cmk token --org <org> --role admin/);
    await screenshot(p, 'login-no-token-desktop');
    await assertAccessible(p, 'login-no-token-desktop');

    // An expired token (0 h lifetime): the page explains, and the token leaves the address bar.
    const expired = cmk(dataDir, ['token', '--org', 'acme', '--role', 'admin', '--ttl-hours', '0']);
    assert.ok(expired.ok, expired.out);
    await p.goto(`${server.base}/#org=acme&token=${expired.stdout.trim()}`);
    await heading.waitFor();
    await eventually(async () => assert.match(await p.locator('#login-reason').innerText(), /expired/));
    assert.match(await p.locator('#login').innerText(), /cmk token --org acme --role admin/);
    assert.ok(!p.url().includes('token='), `the token left the address bar: ${p.url()}`);

    // A token the service refuses (401): the same explanation.
    const good = new URL(server.link).hash;
    const forged = good.slice(0, -4) + (good.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    await p.goto(`${server.base}/${forged}`);
    await eventually(async () =>
      assert.match(await p.locator('#login-reason').innerText(), /expired or is not valid/),
    );
    await screenshot(p, 'login-refused-token-desktop');

    // A member's token is refused (403) with its own explanation.
    const member = cmk(dataDir, ['token', '--org', 'acme', '--role', 'member']).stdout.trim();
    await p.goto(`${server.base}/#org=acme&token=${member}`);
    await eventually(async () =>
      assert.match(await p.locator('#login-reason').innerText(), /admin token of this organization/),
    );
    await assertNoPageProblems(p);
    await p.context().close();
  });

  test('the printed link signs in and leaves the token out of the address bar', async () => {
    await page.goto(server.link);
    await page.getByRole('heading', { name: 'Customer Managed Keys', exact: true }).waitFor();
    assert.ok(!page.url().includes('token'), `address bar: ${page.url()}`);
    const stored = await page.evaluate(() => sessionStorage.getItem('cmk.token'));
    assert.ok(stored && stored.length > 20, 'the token is kept for the tab');
    for (const name of ['Name', 'Type', 'Default', 'State', 'Health', 'Data keys']) {
      await page.getByRole('columnheader', { name, exact: true }).waitFor();
    }
    await row('Service-managed key').waitFor();
    assert.equal(await cellText('Service-managed key', 'Default'), 'Default');
    assert.equal(await cellText('Service-managed key', 'Data keys'), DATA_KEYS.toLocaleString('en-US'));
    // The default key cannot be set as default again, and says why.
    const setDefault = row('Service-managed key').getByRole('button', { name: 'Set as default' });
    assert.ok(await setDefault.isDisabled());
    const why = await setDefault.getAttribute('aria-describedby');
    assert.match(await page.locator(`#${why}`).innerText(), /Already the default key/);
    // A reload keeps the session.
    await page.reload();
    await row('Service-managed key').waitFor();
    await screenshot(page, 'keys-initial-desktop');
    await assertAccessible(page, 'keys-initial-desktop');
    await assertNoPageProblems();
  });

  test('add the first key: validation in the dialog, then a banner with progress that disappears', async () => {
    const add = page.getByRole('button', { name: 'Add Customer Managed Key', exact: true });
    // Keyboard: the button is reachable and opens the dialog; Escape closes it.
    await add.focus();
    await page.keyboard.press('Enter');
    const d = dialog('Add Customer Managed Key');
    await d.waitFor();
    await page.keyboard.press('Escape');
    await d.waitFor({ state: 'hidden' });

    await add.click();
    await d.waitFor();
    // The org's setup values, with copy buttons: OpenID Connect first (this service is an
    // OIDC issuer), the external ID on request.
    const trustPolicy = () => d.getByRole('region', { name: 'Trust policy of the role' }).innerText();
    await eventually(async () => assert.match(await trustPolicy(), /AssumeRoleWithWebIdentity/));
    assert.ok(await d.getByRole('radio', { name: 'OpenID Connect (recommended)' }).isChecked());
    assert.match(await d.locator('#provider-url').innerText(), /^http:\/\/127\.0\.0\.1:\d+\/oidc$/);
    assert.equal(await d.locator('#audience').innerText(), 'aws:acme');
    assert.match(await trustPolicy(), /cmk:org:acme/);
    for (const name of ['Copy provider URL', 'Copy audience', 'Copy trust policy', 'Copy key permissions']) {
      await d.getByRole('button', { name }).waitFor();
    }
    assert.ok(await d.getByRole('button', { name: 'Copy external ID' }).isHidden());
    await screenshot(page, 'add-dialog-desktop');
    await assertAccessible(page, 'add-dialog-desktop');
    // The setup kit: a CloudFormation template of the selected mode, and the commands.
    assert.match(await d.locator('#kit-command').innerText(), /aws cloudformation deploy --template-file cmk-access-acme\.yaml/);
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      d.getByRole('button', { name: 'Download template' }).click(),
    ]);
    assert.equal(download.suggestedFilename(), 'cmk-access-acme.yaml');
    const kit = fs.readFileSync(await download.path(), 'utf8');
    assert.match(kit, /AWS::IAM::OIDCProvider/);
    assert.match(kit, /cmk:org:acme/);
    assert.match(kit, /AWS::KMS::Key/);
    // For an existing key: the template asks for its ARN, and the command passes it.
    await d.getByRole('checkbox', { name: 'The template creates a new KMS key' }).uncheck();
    assert.match(await d.locator('#kit-command').innerText(), /--parameter-overrides KeyArn=/);
    const [existing] = await Promise.all([
      page.waitForEvent('download'),
      d.getByRole('button', { name: 'Download template' }).click(),
    ]);
    const existingKit = fs.readFileSync(await existing.path(), 'utf8');
    assert.match(existingKit, /KeyArn/);
    assert.doesNotMatch(existingKit, /AWS::KMS::Key/);
    await d.getByRole('radio', { name: 'External ID' }).check();
    assert.match(await d.locator('#external-id').innerText(), /\S{8,}/);
    assert.match(await trustPolicy(), /sts:ExternalId/);
    assert.ok(await d.getByRole('button', { name: 'Copy audience' }).isHidden());
    await screenshot(page, 'add-dialog-external-id-desktop');

    // Vault / OpenBao transit: the policy for the key named, the login method's fields, and
    // checks in the page.
    await d.getByRole('radio', { name: 'Vault / OpenBao transit' }).check();
    assert.ok(await d.getByRole('textbox', { name: 'Role ARN' }).isHidden());
    const vaultPolicy = () => d.getByRole('region', { name: /Policy to grant the service/ }).innerText();
    await eventually(async () => assert.match(await vaultPolicy(), /path "transit\/encrypt\/cmk"/));
    assert.match(await d.locator('#vault-requirement').innerText(), /derived=true/);
    await d.getByRole('textbox', { name: 'Key name' }).fill('orders');
    await d.getByRole('textbox', { name: 'Key name' }).press('Tab');
    await eventually(async () => assert.match(await vaultPolicy(), /path "transit\/rewrap\/orders"/));
    assert.match(await d.locator('#vault-commands').innerText(), /derived=true/);
    await d.getByRole('button', { name: 'Copy Vault policy' }).waitFor();
    await d.getByRole('textbox', { name: 'Address' }).fill('vault.example.com');
    await d.getByRole('button', { name: 'Add key' }).click();
    assert.match(await d.locator('#add-vault-address-error').innerText(), /not a URL/);
    assert.match(await d.locator('#add-vault-secret-id-error').innerText(), /secret ID/);
    await d.getByRole('radio', { name: 'Token' }).check();
    assert.ok(await d.getByLabel('Secret ID').isHidden());
    await d.getByLabel('Vault token').waitFor();
    await screenshot(page, 'add-dialog-vault-desktop');
    await assertAccessible(page, 'add-dialog-vault-desktop');
    // The service's own check refuses what the page cannot know: a plain-http remote address.
    await d.getByRole('textbox', { name: 'Name', exact: true }).fill('vault');
    await d.getByRole('textbox', { name: 'Address' }).fill('http://vault.example.com:8200');
    await d.getByLabel('Vault token').fill('hvs.example');
    await d.getByRole('button', { name: 'Add key' }).click();
    await eventually(async () => assert.match(await d.locator('#add-vault-address-error').innerText(), /https/));
    await d.getByRole('textbox', { name: 'Name', exact: true }).fill('');

    // Validation in the page, in words an admin can act on.
    await d.getByRole('radio', { name: 'AWS KMS' }).check();
    await d.getByRole('textbox', { name: 'Role ARN' }).fill('my-role');
    await d.getByRole('button', { name: 'Add key' }).click();
    assert.match(await d.locator('#add-name-error').innerText(), /Enter a name/);
    assert.match(await d.locator('#add-role-arn-error').innerText(), /not an IAM role ARN/);
    assert.match(await d.locator('#add-key-arn-error').innerText(), /Enter the ARN of the KMS key/);
    assert.equal(await d.getByRole('textbox', { name: 'Name', exact: true }).getAttribute('aria-invalid'), 'true');
    await screenshot(page, 'add-dialog-validation-desktop');

    // A refusal by the service is shown in the dialog: this service takes local keys only.
    await d.getByRole('textbox', { name: 'Name', exact: true }).fill('prod');
    await d.getByRole('textbox', { name: 'Role ARN' }).fill('arn:aws:iam::111122223333:role/cmk-access');
    await d.getByRole('textbox', { name: 'Key ARN' }).fill('arn:aws:kms:us-east-1:111122223333:alias/cmk');
    await d.getByRole('button', { name: 'Add key' }).click();
    await eventually(async () => assert.match(await d.locator('#add-error').innerText(), /use type "local"/));
    await screenshot(page, 'add-dialog-refused-desktop');

    // The local key: added, made the default, and its adopt job shows in the banner.
    await d.getByRole('radio', { name: 'Local key' }).check();
    assert.ok(await d.getByRole('textbox', { name: 'Role ARN' }).isHidden());
    await d.getByRole('button', { name: 'Add key' }).click();
    await d.waitFor({ state: 'hidden' });
    await banner().waitFor();
    const bar = banner().getByRole('progressbar');
    assert.equal(await bar.getAttribute('aria-valuemax'), String(DATA_KEYS));
    const now = Number(await bar.getAttribute('aria-valuenow'));
    assert.ok(now >= 0 && now <= DATA_KEYS, `progress ${now}`);
    assert.match(await banner().innerText(), /First key added/);
    assert.match(await banner().innerText(), /of 20,000 data keys re-encrypted|of [\d,]+ data keys re-encrypted/);
    await screenshot(page, 'banner-adopt-running-desktop');
    await assertAccessible(page, 'banner-adopt-running-desktop');
    await waitBannerGone();
    await eventually(async () => assert.match(await page.locator('#notice').innerText(), /Re-encryption complete/));
    assert.equal(await cellText('prod', 'Default'), 'Default');
    assert.equal(await cellText('prod', 'Data keys'), DATA_KEYS.toLocaleString('en-US'));
    assert.equal(await cellText('Service-managed key', 'Data keys'), '0');
    await screenshot(page, 'first-key-done-desktop');
    verify(dataDir);
    await assertNoPageProblems();
  });

  test('a second key, and Set as default', async () => {
    await addLocalKey('stage');
    assert.ok(await banner().isHidden(), 'a second key starts no re-encryption');
    assert.equal(await cellText('stage', 'Default'), 'No');

    // Its name must be unique: the dialog says so next to the field.
    await page.getByRole('button', { name: 'Add Customer Managed Key', exact: true }).click();
    const d = dialog('Add Customer Managed Key');
    await d.getByRole('textbox', { name: 'Name', exact: true }).fill('PROD');
    await d.getByRole('radio', { name: 'Local key' }).check();
    await d.getByRole('button', { name: 'Add key' }).click();
    await eventually(async () => assert.match(await d.locator('#add-name-error').innerText(), /already exists/));
    await d.getByRole('button', { name: 'Cancel' }).click();
    await d.waitFor({ state: 'hidden' });

    await row('stage').getByRole('button', { name: 'Set as default' }).click();
    await eventually(async () => assert.equal(await cellText('stage', 'Default'), 'Default'));
    assert.equal(await cellText('prod', 'Default'), 'No');
    assert.ok(await row('stage').getByRole('button', { name: 'Set as default' }).isDisabled());
    assert.ok(await row('prod').getByRole('button', { name: 'Set as default' }).isEnabled());
    await screenshot(page, 'second-key-default-desktop');
    verify(dataDir);
    await assertNoPageProblems();
  });

  test('the three-dot menu works by keyboard and says why Disable is unavailable', async () => {
    const menuButton = page.getByRole('button', { name: 'Actions for stage' });
    await menuButton.focus();
    await page.keyboard.press('Enter');
    const menu = page.getByRole('menu', { name: 'Actions for stage' });
    await menu.waitFor();
    const disable = menu.getByRole('menuitem', { name: 'Disable', exact: true });
    assert.equal(await disable.getAttribute('aria-disabled'), 'true');
    assert.ok(await disable.evaluate((el) => el === document.activeElement), 'focus moves into the menu');
    const why = await disable.getAttribute('aria-describedby');
    assert.match(await page.locator(`#${why}`).innerText(), /default key cannot be disabled/);
    await screenshot(page, 'menu-disable-unavailable-desktop');
    await assertAccessible(page, 'menu-open-desktop');
    await page.keyboard.press('ArrowDown');
    assert.ok(await menu.getByRole('menuitem', { name: 'Check health' }).evaluate((el) => el === document.activeElement));
    // A local key has no re-encryption rate (only AWS KMS and transit keys do), and the menu says so.
    await page.keyboard.press('ArrowDown');
    const rate = menu.getByRole('menuitem', { name: 'Set re-encryption rate' });
    assert.ok(await rate.evaluate((el) => el === document.activeElement));
    assert.equal(await rate.getAttribute('aria-disabled'), 'true');
    const rateWhy = await rate.getAttribute('aria-describedby');
    assert.match(await page.locator(`#${rateWhy}`).innerText(), /Only AWS KMS and Vault transit keys/);
    // Re-wrapping to a latest version is for keys with versions, and the menu says so.
    await page.keyboard.press('ArrowDown');
    const rewrap = menu.getByRole('menuitem', { name: 'Re-wrap to latest version' });
    assert.ok(await rewrap.evaluate((el) => el === document.activeElement));
    assert.equal(await rewrap.getAttribute('aria-disabled'), 'true');
    const rewrapWhy = await rewrap.getAttribute('aria-describedby');
    assert.match(await page.locator(`#${rewrapWhy}`).innerText(), /Only Vault transit keys have versions/);
    await page.keyboard.press('Escape');
    await menu.waitFor({ state: 'hidden' });
    assert.ok(await menuButton.evaluate((el) => el === document.activeElement), 'Escape returns focus');
    assert.equal(await menuButton.getAttribute('aria-expanded'), 'false');
  });

  test('disable a key with a re-encryption key', async () => {
    await page.getByRole('button', { name: 'Actions for prod' }).click();
    await page.getByRole('menu', { name: 'Actions for prod' }).getByRole('menuitem', { name: 'Disable', exact: true }).click();
    const d = dialog('Disable “prod”');
    await d.waitFor();
    // Only active keys other than prod are offered.
    const choices = await d.getByRole('radio').evaluateAll((els) => els.map((e) => e.labels[0].innerText));
    assert.equal(choices.length, 2, `choices: ${choices}`);
    assert.ok(choices.some((c) => c.startsWith('stage')) && choices.some((c) => c.startsWith('Service-managed key')));
    // A choice is required.
    await d.getByRole('button', { name: 'Disable', exact: true }).click();
    assert.match(await d.locator('#disable-target-error').innerText(), /Choose the key/);
    await screenshot(page, 'disable-dialog-desktop');
    await assertAccessible(page, 'disable-dialog-desktop');
    await d.getByRole('radio', { name: /^stage/ }).check();
    await d.getByRole('button', { name: 'Disable', exact: true }).click();
    await d.waitFor({ state: 'hidden' });
    await banner().waitFor();
    assert.match(await banner().innerText(), /Disabling “prod”/);
    await screenshot(page, 'banner-disable-running-desktop');
    await waitBannerGone();
    await eventually(async () => assert.equal(await cellText('prod', 'State'), 'Disabled'));
    assert.equal(await cellText('stage', 'Data keys'), DATA_KEYS.toLocaleString('en-US'));
    const setDefault = row('prod').getByRole('button', { name: 'Set as default' });
    assert.ok(await setDefault.isDisabled());
    assert.match(await page.locator(`#${await setDefault.getAttribute('aria-describedby')}`).innerText(), /disabled key/);
    await screenshot(page, 'key-disabled-desktop');
    verify(dataDir);
    await assertNoPageProblems();
  });

  test('disable all Customer Managed Keys from the settings wheel', async () => {
    await page.getByRole('button', { name: 'Settings', exact: true }).click();
    const item = page.getByRole('menuitem', { name: 'Disable all Customer Managed Keys' });
    await item.waitFor();
    await screenshot(page, 'settings-menu-desktop');
    await item.click();
    const d = dialog('Disable all Customer Managed Keys?');
    await d.waitFor();
    assert.match(await d.innerText(), /returns to the\s+service-managed key/);
    await screenshot(page, 'disable-all-dialog-desktop');
    await assertAccessible(page, 'disable-all-dialog-desktop');
    await d.getByRole('button', { name: 'Disable all', exact: true }).click();
    await d.waitFor({ state: 'hidden' });
    await banner().waitFor();
    assert.match(await banner().innerText(), /Disable all/);
    await screenshot(page, 'banner-disable-all-running-desktop');
    await waitBannerGone();
    await eventually(async () => assert.equal(await cellText('stage', 'State'), 'Disabled'));
    assert.equal(await cellText('Service-managed key', 'Default'), 'Default');
    assert.equal(await cellText('Service-managed key', 'Data keys'), DATA_KEYS.toLocaleString('en-US'));
    // Nothing left to disable: the menu item says why.
    await page.getByRole('button', { name: 'Settings', exact: true }).click();
    assert.equal(await item.getAttribute('aria-disabled'), 'true');
    assert.match(await item.innerText(), /No Customer Managed Key is active/);
    await page.keyboard.press('Escape');
    await screenshot(page, 'all-disabled-desktop');
    verify(dataDir);
    await assertNoPageProblems();
  });

  test('a revoked key shows its health; the failed job is retried once access returns', async () => {
    await addLocalKey('recovery');
    await waitBannerGone();
    const id = await keyId('recovery');
    verify(dataDir);

    const revoked = cmk(dataDir, ['local-key', 'revoke', '--org', 'acme', '--key', id]);
    assert.ok(revoked.ok, revoked.out);
    await page.getByRole('button', { name: 'Actions for recovery' }).click();
    await page.getByRole('menuitem', { name: 'Check health' }).click();
    await eventually(async () => assert.match(await cellText('recovery', 'Health'), /Access denied/));
    assert.match(await page.getByRole('alert').filter({ hasText: 'recovery' }).innerText(), /cannot be used/);
    await screenshot(page, 'key-revoked-health-desktop');

    // Disabling all needs the revoked key: the job fails, and the banner offers Retry and Cancel.
    await page.getByRole('button', { name: 'Settings', exact: true }).click();
    await page.getByRole('menuitem', { name: 'Disable all Customer Managed Keys' }).click();
    await dialog('Disable all Customer Managed Keys?').getByRole('button', { name: 'Disable all', exact: true }).click();
    await eventually(
      async () => assert.match(await banner().innerText(), /stopped with failures/),
      JOB_TIMEOUT,
      250,
    );
    const text = await banner().innerText();
    assert.match(text, /Access denied/);
    assert.match(text, /data keys? failed/);
    await banner().getByRole('button', { name: 'Retry' }).waitFor();
    await banner().getByRole('button', { name: 'Cancel' }).waitFor();
    await screenshot(page, 'banner-failed-desktop');
    await assertAccessible(page, 'banner-failed-desktop');

    const restored = cmk(dataDir, ['local-key', 'restore', '--org', 'acme', '--key', id]);
    assert.ok(restored.ok, restored.out);
    // The server trusts a local key's revocation state for 200 ms before it looks again.
    await page.waitForTimeout(400);
    await banner().getByRole('button', { name: 'Retry' }).click();
    await waitBannerGone();
    await eventually(async () => assert.equal(await cellText('recovery', 'State'), 'Disabled'));
    assert.equal(await cellText('Service-managed key', 'Data keys'), DATA_KEYS.toLocaleString('en-US'));
    // Health is back after a check.
    await page.getByRole('button', { name: 'Actions for recovery' }).click();
    await page.getByRole('menuitem', { name: 'Check health' }).click();
    await eventually(async () => assert.match(await cellText('recovery', 'Health'), /^OK/));
    assert.match(await cellText('recovery', 'Health'), /Last failed .*: Access denied/, 'the last failure stays in view');
    await screenshot(page, 'retried-desktop');
    verify(dataDir);
    await assertNoPageProblems();
  });

  test('at 390×844 the keys become cards, and menus, dialogs and the banner fit', async () => {
    const phone = await newPage(browser, PHONE);
    await phone.goto(server.link);
    const p = phone;
    await p.getByRole('heading', { name: 'Customer Managed Keys', exact: true }).waitFor();
    await p.getByRole('rowheader', { name: 'recovery', exact: true }).waitFor();
    const noHorizontalScroll = async () =>
      assert.ok(
        await p.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1),
        'no horizontal scrolling',
      );
    await noHorizontalScroll();
    await screenshot(p, 'keys-phone');
    await assertAccessible(p, 'keys-phone');

    await p.getByRole('button', { name: 'Actions for recovery' }).click();
    await p.getByRole('menu', { name: 'Actions for recovery' }).waitFor();
    await screenshot(p, 'menu-phone');
    await p.keyboard.press('Escape');

    await p.getByRole('button', { name: 'Settings', exact: true }).click();
    await p.getByRole('menuitem', { name: 'Disable all Customer Managed Keys' }).waitFor();
    await screenshot(p, 'settings-menu-phone');
    await p.keyboard.press('Escape');

    await p.getByRole('button', { name: 'Add Customer Managed Key', exact: true }).click();
    const d = p.getByRole('dialog', { name: 'Add Customer Managed Key' });
    await d.waitFor();
    await eventually(async () => assert.match(await d.locator('#external-id').innerText(), /\S{8,}/));
    await screenshot(p, 'add-dialog-phone');
    await assertAccessible(p, 'add-dialog-phone');
    await d.getByRole('textbox', { name: 'Name', exact: true }).fill('phone');
    await d.getByRole('radio', { name: 'Local key' }).check();
    await d.getByRole('button', { name: 'Add key' }).click();
    const b = p.getByRole('region', { name: /re-encryption/i });
    await b.waitFor();
    await noHorizontalScroll();
    await screenshot(p, 'banner-running-phone');
    await assertAccessible(p, 'banner-running-phone');
    await b.waitFor({ state: 'hidden', timeout: JOB_TIMEOUT });

    await p.getByRole('button', { name: 'Settings', exact: true }).click();
    await p.getByRole('menuitem', { name: 'Disable all Customer Managed Keys' }).click();
    const all = p.getByRole('dialog', { name: 'Disable all Customer Managed Keys?' });
    await all.waitFor();
    await screenshot(p, 'disable-all-dialog-phone');
    await assertAccessible(p, 'disable-all-dialog-phone');
    await all.getByRole('button', { name: 'Disable all', exact: true }).click();
    await eventually(
      async () => assert.match(await p.getByRole('row').filter({ hasText: 'phone' }).innerText(), /Disabled/),
      JOB_TIMEOUT,
      250,
    );
    await b.waitFor({ state: 'hidden', timeout: JOB_TIMEOUT });
    await screenshot(p, 'all-disabled-phone');
    verify(dataDir);
    await assertNoPageProblems(p);
    await p.context().close();
  });
});
