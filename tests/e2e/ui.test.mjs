// End-to-end test of the pages in a real headless Chromium (Debian's), driven by
// playwright-core. Started by scripts/test after the Rust suite, with:
//   INCIDENTPOST_BIN   the built binary
//   CHROMIUM           the browser (default /usr/bin/chromium)
// Screenshots go to target/e2e/screenshots for review. Loopback only, bounded waits.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = process.env.INCIDENTPOST_BIN ?? join(root, 'target', 'debug', 'incidentpost');
const shots = join(root, 'target', 'e2e', 'screenshots');
const TOKEN = 'e2e-token-' + Date.now();
let server, base, browser, dataDir;

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

async function waitReady(url) {
  for (let i = 0; i < 200; i++) {
    try { const r = await fetch(url + '/readyz'); if (r.ok) return; } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('server did not start');
}

const api = (path, init = {}) => fetch(base + path, { ...init, headers: { Authorization: `Bearer ${TOKEN}`, ...(init.headers ?? {}) } });

function pd(type, incident, id, at, title) {
  return JSON.stringify({ event: { id, event_type: type, resource_type: 'incident', occurred_at: at, agent: { summary: 'sarah' },
    data: { id: incident, type: 'incident', title, status: 'triggered', urgency: 'high', service: { summary: 'api' } } } });
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), 'incidentpost-e2e-'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(bin, ['serve'], {
    env: { ...process.env, INCIDENTPOST__SERVER__PORT: String(port), INCIDENTPOST__STORAGE__PATH: dataDir, INCIDENTPOST__API__TOKEN: TOKEN, RUST_LOG: 'warn' },
    stdio: 'ignore',
  });
  await waitReady(base);
  // The seed's pasted timeline, and a PagerDuty incident whose title is hostile HTML.
  const seed = readFileSync(join(root, 'tests', 'fixtures', 'seed-timeline.txt'));
  const imported = await (await api('/incidents/import', { method: 'POST', body: seed })).json();
  assert.equal(imported.events, 13);
  process.env.SEED_ID = imported.incident_id;
  for (const [type, id, at] of [['incident.triggered', 'x1', '2026-01-11T09:00:00Z'], ['incident.resolved', 'x2', '2026-01-11T09:10:00Z']]) {
    const r = await fetch(base + '/webhooks/pagerduty', { method: 'POST', body: pd(type, 'PXSS', id, at, '<script>alert(1)</script> checkout <b>down</b>') });
    assert.equal(r.status, 202);
  }
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  server?.kill('SIGTERM');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function loggedInPage(viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  const page = await context.newPage();
  page.on('dialog', () => { throw new Error('a script ran: a dialog opened'); });
  await page.goto(base + '/ui');
  assert.match(page.url(), /\/ui\/login/);
  await page.fill('#token', TOKEN);
  await page.click('button[type=submit]');
  await page.waitForURL(base + '/ui');
  return { context, page };
}

test('without the token the pages redirect to login; a wrong token is refused', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base + '/ui/incidents/' + process.env.SEED_ID);
  assert.match(page.url(), /\/ui\/login\?next=/);
  await page.fill('#token', 'wrong');
  await page.click('button[type=submit]');
  assert.ok(await page.isVisible('.error'));
  await page.screenshot({ path: join(shots, 'login.png') });
  await context.close();
});

test('list, seed incident with SVG and timeline, edit, download, escaping', async () => {
  const { context, page } = await loggedInPage();
  // The list: both incidents, hostile title shown as text.
  assert.ok(await page.isVisible(`a[href="/ui/incidents/${process.env.SEED_ID}"]`));
  assert.ok((await page.textContent('table.incidents')).includes('<script>alert(1)</script> checkout <b>down</b>'));
  assert.equal(await page.locator('table.incidents b').count(), 0, 'no HTML from a title is interpreted');
  await page.screenshot({ path: join(shots, 'list.png'), fullPage: true });

  // The seed incident: inline SVG and 12+ timeline rows.
  await page.click(`a[href="/ui/incidents/${process.env.SEED_ID}"]`);
  await page.waitForSelector('.svg-wrap svg');
  assert.ok(await page.locator('.svg-wrap svg circle.event').count() >= 12);
  assert.ok(await page.locator('table.timeline tbody tr').count() >= 12);
  // A citation scrolls to its event and highlights it (:target).
  await page.locator('a.cite').first().click();
  assert.match(page.url(), /#ev-/);
  await page.screenshot({ path: join(shots, 'incident.png'), fullPage: true });

  // Edit the root cause through the form; the rendered postmortem changes.
  await page.fill('#f-root', 'A connection leak in user-sync error handling (edited in e2e)');
  await page.fill('#at-0', 'Add connection.close() to every error handler');
  await page.click('form.edit button[type=submit]');
  await page.waitForSelector('article.markdown');
  const md = await page.textContent('article.markdown');
  assert.ok(md.includes('A connection leak in user-sync error handling (edited in e2e)'), md);
  assert.ok((await page.textContent('ul.history')).includes('Root cause (edited)'));
  await page.screenshot({ path: join(shots, 'incident-edited.png'), fullPage: true });

  // Download the pack: seven files.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('a.button[download]')]);
  const zipPath = join(shots, '..', 'pack.zip');
  await download.saveAs(zipPath);
  const listing = execFileSync('python3', ['-c', 'import sys,zipfile; print("\\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))', zipPath]).toString().trim().split('\n');
  assert.deepEqual(listing.sort(), ['events.ndjson', 'hn-post.txt', 'incident.json', 'manifest.json', 'postmortem.md', 'timeline.svg', 'twitter-thread.txt']);

  // The hostile title on its own page: text, not markup, and no script ran.
  await page.goto(base + '/ui/incidents/PXSS');
  assert.ok((await page.textContent('h1')).includes('<script>alert(1)</script>'));
  assert.equal(await page.locator('main b').count(), 0);
  await page.screenshot({ path: join(shots, 'hostile-title.png'), fullPage: true });
  await context.close();
});

test('paste a timeline and land on its incident; a phone-sized screen works', async () => {
  const { context, page } = await loggedInPage({ width: 390, height: 844 });
  await page.goto(base + '/ui/import');
  await page.fill('#timeline', 'March 3, 2026\n09:00 UTC [PagerDuty] CRITICAL: Search is down\nnot a line\n09:30 UTC [PagerDuty] Incident resolved\n');
  await page.click('form.import button[type=submit]');
  // One unreadable line: it is shown with its number, then the page goes on.
  assert.ok((await page.textContent('.skipped')).includes('line 3'));
  await page.screenshot({ path: join(shots, 'import-skipped.png'), fullPage: true });
  await page.click('.skipped a');
  await page.waitForSelector('h1');
  assert.ok((await page.textContent('h1')).includes('Search is down'));
  await page.screenshot({ path: join(shots, 'imported-phone.png'), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `page is wider than a phone by ${overflow}px`);
  await context.close();
});
