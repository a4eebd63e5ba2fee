// What the browser suite needs around the page: the `cmk` binary (serve, seed, verify, token,
// local-key), Debian's Chromium driven by playwright-core, axe scans and screenshots.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import AxeBuilder from '@axe-core/playwright';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..', '..');
export const CMK = path.resolve(REPO, process.env.CMK_BIN || 'target/debug/cmk');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const SHOTS = path.join(REPO, 'test-artifacts', 'screenshots');
export const AXE_DIR = path.join(REPO, 'test-artifacts', 'axe');

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/** Runs `cmk --data-dir DIR ARGS…` to completion. */
export function cmk(dataDir, args) {
  const r = spawnSync(CMK, ['--data-dir', dataDir, ...args], {
    encoding: 'utf8',
    env: { ...process.env, RUST_LOG: 'warn', NO_COLOR: '1' },
    timeout: 120_000,
  });
  return { ok: r.status === 0, status: r.status, stdout: r.stdout || '', out: (r.stdout || '') + (r.stderr || '') };
}

/** `cmk verify --org ORG` must exit 0: every sample ciphertext still decrypts. */
export function verify(dataDir, org = 'acme') {
  const r = cmk(dataDir, ['verify', '--org', org]);
  assert.ok(r.ok, `cmk verify failed:\n${r.out}`);
  assert.match(r.out, / 0 failed/, r.out);
  return r.out;
}

/**
 * Starts `cmk serve` on a free loopback port with `dataDir`; resolves with its base URL, the
 * printed admin login link and a `stop()`.
 */
export async function startServer(dataDir, extraArgs = []) {
  assert.ok(fs.existsSync(CMK), `no cmk binary at ${CMK} (build it with cargo build, or set CMK_BIN)`);
  const child = spawn(CMK, ['--data-dir', dataDir, 'serve', '--addr', '127.0.0.1:0', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: 'warn', NO_COLOR: '1' },
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 20_000) stderr = stderr.slice(-10_000);
  });
  const lines = readline.createInterface({ input: child.stdout });
  const started = new Promise((resolve, reject) => {
    let base = null;
    const timer = setTimeout(() => reject(new Error(`cmk serve did not start in time:\n${stderr}`)), 30_000);
    child.once('exit', (code) => reject(new Error(`cmk serve exited with ${code}:\n${stderr}`)));
    lines.on('line', (line) => {
      if (!base) base = line.match(/http:\/\/[^\s)]+/)?.[0] ?? null;
      const link = line.match(/^open (http:\/\/\S+)$/)?.[1];
      if (link) {
        clearTimeout(timer);
        resolve({ base, link });
      }
    });
  });
  const { base, link } = await started;
  return {
    base,
    link,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Debian's Chromium, headless, with nothing that reaches the network by itself. */
export async function launchBrowser() {
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  // playwright gives every launch a fresh, empty --user-data-dir of its own.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * A page in a fresh context of `viewport`. Uncaught page errors and Content-Security-Policy
 * violations are collected in `page.problems`.
 */
export async function newPage(browser, viewport) {
  const context = await browser.newContext({ viewport, reducedMotion: 'reduce' });
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) page.problems.push(`CSP: ${m.text()}`);
  });
  page.setDefaultTimeout(15_000);
  return page;
}

export async function screenshot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** Runs axe on the page; fails on any serious or critical violation. Saves the full result. */
export async function assertAccessible(page, name) {
  const result = await new AxeBuilder({ page }).analyze();
  fs.mkdirSync(AXE_DIR, { recursive: true });
  fs.writeFileSync(path.join(AXE_DIR, `${name}.json`), JSON.stringify(result.violations, null, 2));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  const report = bad
    .map((v) => `${v.impact} ${v.id}: ${v.help}\n  ${v.nodes.map((n) => n.target.join(' ')).join('\n  ')}`)
    .join('\n');
  assert.equal(bad.length, 0, `axe (${name}) found serious or critical violations:\n${report}`);
}

/** Retries `check` until it stops throwing, or rethrows its last error after `timeout` ms. */
export async function eventually(check, timeout = 15_000, every = 100) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, every));
    }
  }
}
