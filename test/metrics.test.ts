import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { connect } from '../src/client/node.js';
import { Directory } from '../src/directory/index.js';
import { startAdmin } from '../src/host/admin.js';
import { Host, type IncomingMigration, type Logger, silentLogger } from '../src/host/index.js';
import { openSqliteStore, type Store } from '../src/store/index.js';
import {
  AUTH_HEADER,
  loadOrCreateIdentity,
  type MigrationRecord,
  newClusterSecret,
  parseClusterSecret,
  signRequest,
} from '../src/transport/cluster.js';
import { SERVICES } from './support/host.js';
import { tempDir } from './support/server.js';
import { streamClient } from './support/stream-client.js';

/**
 * Prometheus metrics end to end: a directory and two hosts in this process, one client, one
 * migration; every figure is read the way Prometheus reads it, over HTTP in the text format.
 */

type Sample = { name: string; labels: Record<string, string>; value: number };

/** Parses the Prometheus text format (what a scraper sees). */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1] as string] = l[2] as string;
    }
    out.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return out;
}

/** The value of the one series of `name` whose labels include `labels` (0 when there is none). */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(hits.length <= 1, `${name} ${JSON.stringify(labels)} matches ${hits.length} series`);
  return hits[0]?.value ?? 0;
}

async function scrape(url: string, headers: Record<string, string> = {}): Promise<Sample[]> {
  const res = await fetch(url, { headers });
  assert.equal(res.status, 200, `${url}: ${res.status}`);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parse(await res.text());
}

/** A pino logger whose JSON lines land in `lines`. */
function capture(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: 'info' },
    {
      write(s: string) {
        lines.push(JSON.parse(s) as Record<string, unknown>);
      },
    },
  );
  return { logger, lines };
}

describe('metrics: directory and hosts', { timeout: 120_000 }, () => {
  const secret = parseClusterSecret(newClusterSecret());
  let store: Store;
  let dir: Directory;
  let a: Host;
  let b: Host;
  let peerA: string;
  let peerB: string;
  let clientA: string;
  const logsA = capture();
  const logsB = capture();
  let cleanup: () => Promise<void>;

  before(async () => {
    const tmp = await tempDir('roam-metrics-');
    store = await openSqliteStore({ path: `${tmp.path}/roam.db`, synchronous: 'normal' });
    dir = await Directory.start({ store, secret });
    const start = (logger: Logger) =>
      Host.start({
        store,
        logger,
        services: [{ name: 'stream', module: SERVICES.stream }],
        cluster: { secret, identity: loadOrCreateIdentity(), directory: dir.url },
      });
    a = await start(logsA.logger);
    b = await start(logsB.logger);
    clientA = (await a.listen('ws://127.0.0.1:0')).url;
    await b.listen('ws://127.0.0.1:0');
    peerA = (await a.join()).peerUrl;
    peerB = (await b.join()).peerUrl;
    cleanup = async () => {
      await a.close();
      await b.close();
      await dir.close();
      await store.close();
      await tmp.cleanup();
    };
  });
  after(() => cleanup());

  it('counts a migration on both hosts and the directory, and moves the sessions gauge', async (t) => {
    const s = connect(clientA, { service: 'stream', reconnect: { initialDelayMs: 5, maxDelayMs: 50 } });
    t.after(() => s.close());
    await s.ready;
    const c = streamClient(s);
    c.sendNext();
    await c.untilEchoed();

    let beforeA = await scrape(`${peerA}/metrics`);
    let beforeB = await scrape(`${peerB}/metrics`);
    assert.equal(value(beforeA, 'roam_host_sessions', { state: 'attached' }), 1);
    assert.equal(value(beforeB, 'roam_host_sessions', { state: 'attached' }), 0);
    assert.equal(value(beforeA, 'roam_host_instances', { service: 'stream' }), 1);
    assert.equal(value(beforeA, 'roam_host_client_handshakes_total', { kind: 'hello' }), 1);
    assert.ok(value(beforeA, 'roam_host_client_bytes_total', { direction: 'in' }) > 0);
    assert.ok(value(beforeA, 'roam_host_client_bytes_total', { direction: 'out' }) > 0);
    assert.equal(value(beforeA, 'roam_host_info', { host: a.id }), 1);
    assert.ok(value(beforeA, 'process_cpu_user_seconds_total') > 0, 'default process metrics');

    const [row] = await a.describeInstances();
    assert.ok(row);
    // The source reports a committed migration twice; the second carries the clients' gap.
    const gapOnSource = new Promise<MigrationRecord>((resolve) =>
      a.on('migration', (m) => {
        if (m.phases.clientGapMs !== undefined) resolve(m);
      }),
    );
    const onDirectory: MigrationRecord[] = [];
    const gapOnDirectory = new Promise<void>((resolve) =>
      dir.events.on('migration', (e) => {
        onDirectory.push(e.migration);
        if (e.migration.phases.clientGapMs !== undefined) resolve();
      }),
    );
    const arrived = new Promise<IncomingMigration>((resolve) => b.on('migrationIn', resolve));
    const rec = await a.migrate(row.instance, { to: b.id });
    assert.equal(rec.outcome, 'committed');
    const withGap = await gapOnSource;
    assert.equal((await arrived).outcome, 'committed');
    await gapOnDirectory;
    // Each report keeps what was known when it was made: the commit's has no gap yet (the host
    // sends both in one batch when the gap comes quickly; a shared record made both say "gap").
    const reports = onDirectory.filter((m) => m.id === rec.id);
    assert.equal(reports[0]?.phases.clientGapMs, undefined, 'the commit, reported before the gap was known');
    assert.equal(reports.at(-1)?.phases.clientGapMs, withGap.phases.clientGapMs);
    c.sendNext();
    await c.untilEchoed();
    assert.deepEqual(c.errors, []);

    beforeA = await scrape(`${peerA}/metrics`);
    beforeB = await scrape(`${peerB}/metrics`);
    const [mA, mB] = [beforeA, beforeB];
    // Source.
    assert.equal(
      value(mA, 'roam_host_migrations_total', { direction: 'out', outcome: 'committed', reason: 'operator' }),
      1,
    );
    assert.equal(value(mA, 'roam_host_migration_client_gap_seconds_count'), 1);
    assert.ok(
      Math.abs(value(mA, 'roam_host_migration_client_gap_seconds_sum') - (withGap.phases.clientGapMs ?? 0) / 1000) <
        1e-9,
    );
    assert.equal(value(mA, 'roam_host_migration_freeze_seconds_count'), 1);
    assert.equal(value(mA, 'roam_host_migration_downtime_seconds_count'), 1);
    assert.ok(
      Math.abs(
        value(mA, 'roam_host_migration_downtime_seconds_sum') - (rec.phases.freezeSteps?.downtimeMs ?? -1) / 1000,
      ) < 1e-9,
    );
    assert.equal(value(mA, 'roam_host_migration_precopy_rounds_count'), 1);
    assert.equal(value(mA, 'roam_host_migration_bytes_total', { direction: 'out' }), rec.bytesSent);
    assert.equal(value(mA, 'roam_host_sessions', { state: 'attached' }), 0);
    assert.equal(value(mA, 'roam_host_instances', { service: 'stream' }), 0);
    assert.ok(value(mA, 'roam_host_store_op_duration_seconds_count', { op: 'get' }) > 0);
    // Destination.
    assert.equal(
      value(mB, 'roam_host_migrations_total', { direction: 'in', outcome: 'committed', reason: 'operator' }),
      1,
    );
    assert.ok(value(mB, 'roam_host_migration_bytes_total', { direction: 'in' }) > 0);
    assert.equal(value(mB, 'roam_host_sessions', { state: 'attached' }), 1);
    assert.equal(value(mB, 'roam_host_instances', { service: 'stream' }), 1);
    assert.ok(value(mB, 'roam_host_client_handshakes_total', { kind: 'resume' }) >= 1);
    assert.equal(value(mB, 'roam_host_store_op_duration_seconds_count', { op: 'casMany' }), 1);
    assert.equal(value(mB, 'roam_host_store_errors_total', { op: 'casMany' }), 0);

    // Directory: open without a token, like /api.
    const d = await scrape(`${dir.url}/metrics`);
    assert.equal(value(d, 'roam_directory_hosts', { status: 'up' }), 2);
    assert.equal(value(d, 'roam_directory_hosts', { status: 'suspect' }), 0);
    assert.equal(value(d, 'roam_directory_host_registrations_total'), 2);
    assert.equal(value(d, 'roam_directory_migrations_total', { outcome: 'committed', reason: 'operator' }), 1);
    assert.equal(value(d, 'roam_directory_migration_client_gap_seconds_count'), 1);
    assert.ok(value(d, 'roam_directory_requests_total', { route: 'POST /cluster/register', status: '200' }) >= 2);
    assert.ok(value(d, 'roam_directory_request_duration_seconds_count', { route: 'POST /cluster/events' }) >= 1);

    // Logs: structured, with the host and the migration id on both ends.
    const out = logsA.lines.find((l) => l.msg === 'migration committed');
    assert.equal(out?.migration, rec.id);
    assert.equal(out?.host, a.id);
    assert.deepEqual(out?.instances, [row.instance]);
    assert.equal(logsA.lines.find((l) => l.msg === 'migration client gap')?.migration, rec.id);
    const inb = logsB.lines.find((l) => l.msg === 'incoming migration committed');
    assert.equal(inb?.migration, rec.id);
    assert.equal(inb?.from, a.id);
    assert.equal(inb?.host, b.id);
  });

  it('serves /metrics on the peer endpoint without a signature; every other peer route still wants one', async () => {
    const open = await fetch(`${peerA}/metrics`);
    assert.equal(open.status, 200);
    await open.text();
    for (const [method, path] of [
      ['GET', '/peer/info'],
      ['GET', '/peer/instances'],
      ['POST', '/peer/migrate'],
      ['POST', '/metrics'],
      ['GET', '/metricsx'],
    ] as const) {
      const res = await fetch(`${peerA}${path}`, { method });
      assert.equal(res.status, 401, `${method} ${path}`);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'UNAUTHORIZED');
    }
    const signed = await fetch(`${peerA}/peer/info`, {
      headers: { [AUTH_HEADER]: signRequest(secret, 'GET', '/peer/info') },
    });
    assert.equal(signed.status, 200);
    await signed.text();
  });

  it('docs/observability.md lists every roam metric', () => {
    // Cells are compared with their padding folded, so a formatter may align the table.
    const doc = readFileSync(new URL('../docs/observability.md', import.meta.url), 'utf8').replace(/ *\| */g, ' | ');
    const names = [...a.metrics.registry.getMetricsAsArray(), ...dir.metrics.registry.getMetricsAsArray()]
      .map((m) => m.name)
      .filter((n) => n.startsWith('roam_'));
    assert.ok(names.length > 20);
    for (const n of names) assert.ok(doc.includes(`| \`${n}\` |`), `docs/observability.md is missing ${n}`);
  });

  it('serves /metrics on the admin API under its bearer token', async (t) => {
    const admin = await startAdmin(a, { token: 'tok' });
    t.after(() => admin.close());
    const res = await fetch(`${admin.url}/metrics`);
    assert.equal(res.status, 401);
    await res.text();
    const m = await scrape(`${admin.url}/metrics`, { authorization: 'Bearer tok' });
    assert.equal(value(m, 'roam_host_info', { host: a.id }), 1);
  });
});

describe('metrics: outside a cluster, and a directory with a token', () => {
  it('a host without a cluster has /metrics on its admin API', async (t) => {
    const tmp = await tempDir('roam-metrics-');
    const store = await openSqliteStore({ path: `${tmp.path}/roam.db` });
    const host = await Host.start({
      store,
      logger: silentLogger(),
      services: [{ name: 'stream', module: SERVICES.stream }],
      metrics: { process: false },
    });
    const admin = await startAdmin(host);
    t.after(async () => {
      await admin.close();
      await host.close();
      await store.close();
      await tmp.cleanup();
    });
    const url = (await host.listen('ws://127.0.0.1:0')).url;
    const s = connect(url, { service: 'stream' });
    await s.ready;
    const c = streamClient(s);
    c.sendNext();
    await c.untilEchoed();
    assert.equal(await host.suspendSession(s.id ?? ''), true);
    s.close();
    const m = await scrape(`${admin.url}/metrics`);
    assert.equal(value(m, 'roam_host_continuations_suspended_total', { kind: 'session' }), 1);
    assert.ok(value(m, 'roam_host_store_op_duration_seconds_count', { op: 'blob' }) >= 1);
    assert.ok(value(m, 'roam_host_store_op_duration_seconds_count', { op: 'put' }) >= 1);
    assert.equal(value(m, 'process_cpu_user_seconds_total'), 0, 'process metrics were turned off');
  });

  it('a directory with a token wants it on /metrics too', async (t) => {
    const tmp = await tempDir('roam-metrics-');
    const store = await openSqliteStore({ path: `${tmp.path}/roam.db` });
    const dir = await Directory.start({ store, secret: parseClusterSecret(newClusterSecret()), token: 'op' });
    t.after(async () => {
      await dir.close();
      await store.close();
      await tmp.cleanup();
    });
    const res = await fetch(`${dir.url}/metrics`);
    assert.equal(res.status, 401);
    await res.text();
    const m = await scrape(`${dir.url}/metrics`, { authorization: 'Bearer op' });
    assert.equal(value(m, 'roam_directory_hosts', { status: 'up' }), 0);
    assert.equal(value(m, 'roam_directory_requests_total', { route: 'GET /metrics', status: '401' }), 1);
    assert.equal(value(m, 'roam_directory_event_streams'), 0);
  });
});
