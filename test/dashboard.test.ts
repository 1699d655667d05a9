import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join, resolve } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import type { Page } from 'playwright-core';
import { connect } from '../src/client/node.js';
import { DASHBOARD_FILES } from '../src/dashboard/index.js';
import { Directory, type DirectoryLogger, type InstanceInfo } from '../src/directory/index.js';
import { openSqliteStore } from '../src/store/index.js';
import { clusterFetch, type MigrationRecord } from '../src/transport/cluster.js';
import { browserMissing, launchBrowser, openPage } from './support/browser.js';
import { startCluster } from './support/cluster.js';
import { SERVICES } from './support/host.js';
import { tempDir } from './support/server.js';
import { type StreamClient, streamClient } from './support/stream-client.js';

/** The dashboard: how the directory serves it, and the page itself in a real Chromium. */

const ARTIFACTS = resolve(import.meta.dirname, '../test-artifacts');
const SECRET = new Uint8Array(32).fill(5);
const TOKEN = 'dashboard-test-token';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/**
 * One raw HTTP request, the path sent exactly as given (fetch would normalize `..`). An event
 * stream is read up to its first event, then dropped.
 */
function raw(base: string, path: string, opts: { method?: string; headers?: Record<string, string> } = {}) {
  const u = new URL(base);
  return new Promise<Reply>((done, fail) => {
    const req = httpRequest(
      { host: u.hostname, port: u.port, path, method: opts.method ?? 'GET', headers: opts.headers },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
          if (String(res.headers['content-type']).startsWith('text/event-stream') && body.includes('\n\n')) {
            res.destroy();
            done({ status: res.statusCode ?? 0, headers: res.headers, body });
          }
        });
        res.on('end', () => done({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on('error', fail);
      },
    );
    req.on('error', fail);
    req.end();
  });
}

async function startDirectory(t: TestContext, opts: { token?: string; logger?: DirectoryLogger } = {}) {
  const tmp = await tempDir('roam-dashboard-');
  const store = await openSqliteStore({ path: join(tmp.path, 'directory.db') });
  const dir = await Directory.start({ store, secret: SECRET, ...opts });
  t.after(async () => {
    await dir.close();
    await store.close();
    await tmp.cleanup();
  });
  return dir;
}

/** Waits until `selector` matches exactly `n` elements (the page re-renders as events arrive). */
async function count(page: Page, selector: string, n: number, timeout = 45_000): Promise<void> {
  await page.waitForFunction(([sel, want]) => document.querySelectorAll(sel as string).length === want, [selector, n], {
    timeout,
    polling: 100,
  });
}

describe('dashboard: served by the directory', () => {
  it('serves every listed file with its type, no-cache and an ETag; repeat visits get 304', async (t) => {
    const dir = await startDirectory(t);
    const index = await raw(dir.url, '/');
    assert.equal(index.status, 200);
    assert.equal(index.headers['content-type'], 'text/html; charset=utf-8');
    assert.equal(index.headers['cache-control'], 'no-cache');
    assert.equal(index.headers['x-content-type-options'], 'nosniff');
    assert.match(String(index.headers['content-security-policy']), /default-src 'none'.*script-src 'self'/);
    assert.match(index.body, /\/api\/hosts/, 'without JavaScript, / still points at the API');

    // Everything the page loads is served (a module missing from the whitelist would 404).
    const wanted = new Set(['/']);
    for (const m of index.body.matchAll(/(?:href|src)="(dashboard\/[^"]+)"/g)) wanted.add(`/${m[1]}`);
    for (const path of Object.keys(DASHBOARD_FILES)) {
      const r = await raw(dir.url, path);
      assert.equal(r.status, 200, path);
      for (const m of r.body.matchAll(/^import .* from '\.\/([^']+)'/gm)) wanted.add(`/dashboard/${m[1]}`);
      const type = path.endsWith('.js') ? 'text/javascript' : path.endsWith('.css') ? 'text/css' : 'text/html';
      assert.equal(r.headers['content-type'], `${type}; charset=utf-8`, path);
      assert.match(String(r.headers.etag), /^"[\w-]{22}"$/);
      assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.body), path);
    }
    assert.ok(wanted.size >= 6);
    for (const path of wanted) assert.ok(Object.hasOwn(DASHBOARD_FILES, path), `${path} is loaded but not served`);

    const etag = String(index.headers.etag);
    const again = await raw(dir.url, '/', { headers: { 'if-none-match': etag } });
    assert.equal(again.status, 304);
    assert.equal(again.body, '');
    const head = await raw(dir.url, '/dashboard/app.js', { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
    assert.ok(Number(head.headers['content-length']) > 1000);
  });

  it('serves nothing outside its list: traversal, encodings, other methods are 404', async (t) => {
    const dir = await startDirectory(t);
    for (const path of [
      '/dashboard/../package.json',
      '/dashboard/%2e%2e/package.json',
      '/dashboard/..%2fpackage.json',
      '/dashboard/%2e%2e%2f%2e%2e%2fpackage.json',
      '/dashboard/..\\..\\package.json',
      '/dashboard/static/app.js',
      '/dashboard/index.ts',
      '/dashboard/',
      '/dashboard/app.js/',
      '/dashboard/APP.JS',
      '/dashboard/app.js%00.html',
      '/dashboard/constructor',
      '/dashboard/__proto__',
      '//etc/passwd',
      '/index.html',
      '/src/dashboard/static/app.js',
    ]) {
      const r = await raw(dir.url, path);
      assert.equal(r.status, 404, `${path}: ${r.status} ${r.body.slice(0, 100)}`);
      assert.equal(JSON.parse(r.body).error.code, 'NOT_FOUND', path);
      assert.doesNotMatch(r.body, /"name": "roam"|root:/);
    }
    for (const method of ['POST', 'PUT', 'DELETE']) {
      assert.equal((await raw(dir.url, '/dashboard/app.js', { method })).status, 404, method);
      assert.equal((await raw(dir.url, '/', { method })).status, 404, method);
    }
  });

  it('with a token: the page is public, the API is not; ?token= works on /api/events only and is never logged', async (t) => {
    const logged: string[] = [];
    const logger: DirectoryLogger = {
      debug: (o) => logged.push(JSON.stringify(o)),
      info: (o) => logged.push(JSON.stringify(o)),
      warn: (o) => logged.push(JSON.stringify(o)),
      error: (o) => logged.push(JSON.stringify(o)),
      child: () => logger,
    };
    const dir = await startDirectory(t, { token: TOKEN, logger });
    assert.equal((await raw(dir.url, '/')).status, 200);
    assert.equal((await raw(dir.url, '/dashboard/app.js')).status, 200);
    assert.equal((await raw(dir.url, '/api/hosts')).status, 401);
    assert.equal((await raw(dir.url, `/api/hosts?token=${TOKEN}`)).status, 401, 'query token: events only');
    assert.equal((await raw(dir.url, `/api/migrations?token=${TOKEN}`)).status, 401, 'query token: events only');
    assert.equal((await raw(dir.url, '/api/hosts', { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200);
    assert.equal((await raw(dir.url, '/api/events')).status, 401);
    const wrong = await raw(dir.url, '/api/events?token=not-the-token-secret');
    assert.equal(wrong.status, 401);
    assert.equal(JSON.parse(wrong.body).error.code, 'UNAUTHORIZED');
    assert.equal((await raw(dir.url, `/api/events?token=${TOKEN}x`)).status, 401);
    assert.equal((await raw(dir.url, '/api/events?token=')).status, 401);
    const ok = await raw(dir.url, `/api/events?types=drain&token=${encodeURIComponent(TOKEN)}`);
    assert.equal(ok.status, 200);
    assert.match(String(ok.headers['content-type']), /^text\/event-stream/);
    assert.match(ok.body, /^event: hello\n/);
    const log = logged.join('\n');
    assert.match(log, /token=…/, 'refusals are logged, with the token redacted');
    assert.doesNotMatch(log, /not-the-token-secret|dashboard-test-token/);
  });
});

describe('dashboard: in Chromium', { skip: browserMissing() }, () => {
  it('asks for the operator token, keeps it for the tab, and goes live with it', async (t) => {
    const dir = await startDirectory(t, { token: TOKEN });
    const browser = await launchBrowser(t);
    const { page, errors, failed } = await openPage(browser, t);
    await page.goto(dir.url);
    await page.getByTestId('token-form').waitFor();
    assert.equal(await page.getByTestId('main').isHidden(), true);

    await page.getByTestId('token-input').fill('wrong');
    await page.getByTestId('token-submit').click();
    await page.getByTestId('token-error').getByText('refused').waitFor();

    await page.getByTestId('token-input').fill(TOKEN);
    await page.getByTestId('token-submit').click();
    await page.getByTestId('main').waitFor();
    await page.locator('[data-testid="live-status"][data-state="live"]').waitFor();
    await page.getByTestId('hosts-empty').waitFor();
    await page.getByTestId('decisions-empty').getByText('No policy decisions yet').waitFor();
    await page.getByTestId('bundles-unavailable').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('roam.dashboard.token')), TOKEN);

    // A reload keeps the token (same tab): straight to the live view.
    await page.reload();
    await page.locator('[data-testid="live-status"][data-state="live"]').waitFor();
    assert.equal(await page.getByTestId('token-form').isHidden(), true);
    assert.deepEqual(errors, []);
    // Refused without the token, and with the wrong one; the bundle API does not exist yet.
    assert.deepEqual([...new Set(failed)].sort(), ['401 /api/hosts', '404 /api/bundles']);
  });

  it('shows pushed events live: migrations in flight, aborted and refused ones with their reason, decisions', async (t) => {
    const dir = await startDirectory(t);
    const browser = await launchBrowser(t);
    const { page, errors } = await openPage(browser, t);
    await page.goto(dir.url);
    await page.locator('[data-testid="live-status"][data-state="live"]').waitFor();
    await page.getByTestId('migrations-empty').waitFor();
    const from = 'a'.repeat(32);
    const to = 'b'.repeat(32);
    const record = (id: string, more: Partial<MigrationRecord>): MigrationRecord => ({
      id,
      instances: ['room-1', 'room-2'],
      service: 'room',
      from,
      to,
      reason: 'operator',
      outcome: 'committed',
      startedAt: 1_700_000_000_000,
      endedAt: 1_700_000_000_180,
      sessions: 3,
      stateBytes: 4096,
      bytesSent: 5120,
      rounds: [
        { bytes: 4096, keys: 12, ms: 4 },
        { bytes: 1024, keys: 3, ms: 1 },
      ],
      finalDirtyBytes: 0,
      throttleSteps: 0,
      phases: { negotiateMs: 3, precopyMs: 5, freezeMs: 2, commitMs: 4 },
      epoch: 2,
      ...more,
    });
    const push = (events: unknown[]) => clusterFetch(dir.url, '/cluster/events', { secret: SECRET, body: { events } });

    await push([
      { type: 'migration.progress', id: 'm1', instances: ['room-1'], phase: 'precopy', round: 1, etaMs: 40 },
    ]);
    await page.getByTestId('migration-progress').getByText('moving room-1: precopy, round 1, ETA 40 ms').waitFor();

    await push([
      { type: 'migration', migration: record('m1', {}) },
      {
        type: 'migration',
        migration: record('m2', {
          outcome: 'aborted',
          code: 'MIGRATION_REFUSED',
          message: 'destination is full',
          endedAt: 1_700_000_001_000,
        }),
      },
      {
        type: 'migration',
        migration: record('m3', { outcome: 'refused', reason: 'policy', endedAt: 1_700_000_002_000, rounds: [] }),
      },
      {
        type: 'decision',
        at: 1_700_000_003_000,
        action: 'migrate',
        reason: 'host cpu over 0.9 for 30 s',
        instance: 'room-1',
        host: from,
      },
    ]);
    await count(page, '[data-testid="migration-row"]', 3);
    await count(page, '[data-testid="migration-progress"]', 0);
    const rows = page.getByTestId('migration-row');
    // Newest first.
    assert.deepEqual(await rows.evaluateAll((els) => els.map((e) => e.getAttribute('data-outcome'))), [
      'refused',
      'aborted',
      'committed',
    ]);
    const committed = page.locator('[data-testid="migration-row"][data-id="m1"]');
    assert.match(
      (await committed.textContent()) ?? '',
      /room-1 \+1 more.*aaaaaaaa → bbbbbbbb.*operator.*180 ms total.*3 sessions.*5\.0 KiB sent/,
    );
    assert.match((await committed.textContent()) ?? '', /rounds: 4\.0 KiB · 1\.0 KiB/);
    // negotiate, two pre-copy rounds, freeze, commit.
    assert.equal(await committed.locator('svg rect').count(), 5);
    assert.match(
      (await page.locator('[data-testid="migration-row"][data-id="m2"]').textContent()) ?? '',
      /MIGRATION_REFUSED: destination is full/,
    );
    assert.match(
      (await page.locator('[data-testid="migration-row"][data-id="m3"]').textContent()) ?? '',
      /no reason given/,
    );
    const failedFill = await page
      .locator('[data-testid="migration-row"][data-id="m2"] svg rect')
      .first()
      .evaluate((r) => getComputedStyle(r).fill);
    const okFill = await committed
      .locator('svg rect')
      .first()
      .evaluate((r) => getComputedStyle(r).fill);
    assert.notEqual(failedFill, okFill, 'a failed migration is drawn in another colour');

    // The destination reports the client gap later, under the same id: the row is redrawn with it.
    await push([
      {
        type: 'migration',
        migration: record('m1', {
          phases: { negotiateMs: 3, precopyMs: 5, freezeMs: 2, commitMs: 4, clientGapMs: 30 },
        }),
      },
    ]);
    await committed.getByText('client gap 30 ms', { exact: true }).waitFor();
    assert.equal(await committed.locator('svg rect.ph-gap').count(), 1);
    await count(page, '[data-testid="migration-row"]', 3);

    await page.getByTestId('decision').getByText('host cpu over 0.9 for 30 s').waitFor();
    assert.equal(await page.getByTestId('decisions-empty').isHidden(), true);
    assert.deepEqual(errors, []);
  });

  it('drains a host of 20 sessions from the Drain button and migrates one instance from Migrate…', async (t) => {
    const services = [`stream=${SERVICES.stream}`];
    const cluster = await startCluster({ hosts: [{ services }, { services }, { services }] });
    t.after(() => cluster.close());
    const [a, b, c] = cluster.hosts.map((h) => h.id) as [string, string, string];

    const clients: StreamClient[] = [];
    t.after(() => {
      for (const x of clients) x.session.close();
    });
    for (let i = 0; i < 20; i++) {
      clients.push(
        streamClient(
          connect(cluster.hosts[0]?.clientUrl as string, {
            service: 'stream',
            reconnect: { initialDelayMs: 5, maxDelayMs: 200 },
          }),
        ),
      );
    }
    await Promise.all(clients.map((x) => x.session.ready));
    for (const x of clients) x.session.send('start 100');
    await Promise.all(clients.map((x) => x.until(2)));

    const browser = await launchBrowser(t);
    const { page, errors, failed } = await openPage(browser, t);
    await page.goto(cluster.directory.url);
    await page.locator('[data-testid="live-status"][data-state="live"]').waitFor();
    await count(page, '[data-testid="host-row"]', 3);
    for (const id of [a, b, c]) {
      await page.locator(`[data-testid="host-row"][data-host="${id}"][data-status="up"]`).waitFor();
    }
    await count(page, `[data-testid="instance-row"][data-host="${a}"]`, 20);
    await count(page, '[data-testid="session-row"]', 20);
    await page.getByTestId('migrations-empty').waitFor();

    // Drain host a: confirm, then watch the instances leave it.
    const rowA = page.locator(`[data-testid="host-row"][data-host="${a}"]`);
    let confirmed = '';
    page.once('dialog', (d) => {
      confirmed = d.message();
      void d.accept();
    });
    await rowA.getByTestId('drain-button').click();
    await count(page, `[data-testid="instance-row"][data-host="${a}"]`, 0);
    await count(page, '[data-testid="instance-row"]', 20);
    assert.match(confirmed, /^Drain host /);
    await rowA.locator('[data-testid="drain-progress"][data-state="done"]').waitFor();
    assert.match((await rowA.getByTestId('drain-progress').textContent()) ?? '', /drain done: 20 moved/);
    await page.locator(`[data-testid="host-row"][data-host="${a}"][data-status="leaving"]`).waitFor();
    assert.equal(await rowA.getByTestId('drain-button').isDisabled(), true);
    const drained = page.locator('[data-testid="migration-row"][data-outcome="committed"]');
    await drained.first().waitFor();
    assert.match((await drained.first().textContent()) ?? '', /drain/);
    assert.ok((await drained.first().locator('svg rect').count()) >= 3, 'the bar shows its phases');
    await count(page, `[data-testid="session-row"][data-host="${a}"]`, 0);
    // Every client resumed at its new host (session states come with the 5 s refresh).
    await count(page, '[data-testid="session-row"][data-state="attached"]', 20);

    assert.doesNotMatch((await page.getByTestId('main').textContent()) ?? '', /\b(null|undefined|NaN)\b/);
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-drain.png'), fullPage: true });

    // Migrate… one instance to the other remaining host, chosen in the dialog.
    const first = page.getByTestId('instance-row').first();
    const instance = (await first.getAttribute('data-instance')) as string;
    const from = (await first.getAttribute('data-host')) as string;
    const to = from === b ? c : b;
    await first.getByTestId('migrate-button').click();
    const dialog = page.getByTestId('migrate-dialog');
    await dialog.waitFor();
    const options = await dialog.locator('option').evaluateAll((os) => os.map((o) => (o as HTMLOptionElement).value));
    assert.deepEqual(options, ['', to], 'auto, or the one other host that is up (not the owner, not the drained host)');
    await page.getByTestId('migrate-destination').selectOption(to);
    await page.getByTestId('migrate-confirm').click();
    await count(page, `[data-testid="instance-row"][data-instance="${instance}"][data-host="${to}"]`, 1);
    await count(page, `[data-testid="instance-row"][data-instance="${instance}"]`, 1);
    await page.getByTestId('notice').getByText(`Migrated ${instance}`).waitFor();
    await page.locator('[data-testid="migration-row"]').filter({ hasText: 'operator' }).first().waitFor();
    const { instances } = await cluster.api<{ instances: InstanceInfo[] }>('/api/instances');
    assert.equal(instances.find((i) => i.instance === instance)?.host, to);
    const { migrations } = await cluster.api<{ migrations: MigrationRecord[] }>('/api/migrations');
    assert.equal(migrations[0]?.reason, 'operator');

    // Every client kept its stream through all of it.
    await Promise.all(clients.map((x) => x.until(x.received + 3)));
    assert.deepEqual(
      clients.flatMap((x) => x.errors),
      [],
    );
    assert.deepEqual(errors, []);
    assert.deepEqual(failed, ['404 /api/bundles'], 'no failed request but the probe for the bundle API');
  });
});
