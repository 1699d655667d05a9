import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '../src/client/node.js';
import type { MigrationRecord } from '../src/transport/cluster.js';
import { type Cluster, migrationRecord, startCluster, whereIs } from './support/cluster.js';
import { SERVICES } from './support/host.js';
import { openStream } from './support/stream-client.js';

/**
 * Live migration between real host processes, through the directory's API, with a client that
 * streams both ways at 1 kHz. Every index and every echo must arrive exactly once, in order.
 */

interface InstanceRow {
  instance: string;
  service: string;
  host: string;
  sessions: number;
}

async function instancesOf(cluster: Cluster, service: string): Promise<InstanceRow[]> {
  const { instances } = await cluster.api<{ instances: InstanceRow[] }>('/api/instances');
  return instances.filter((i) => i.service === service);
}

const streamServices = [`stream=${SERVICES.stream}`, `counter=${SERVICES.counter}`];

describe('live migration', { timeout: 180_000 }, () => {
  let cluster: Cluster;
  before(async () => {
    cluster = await startCluster({
      hosts: [
        { services: [...streamServices, `needy=${SERVICES.needy}`], labels: { zone: 'a', region: 'eu' } },
        { services: streamServices, labels: { zone: 'b' } },
        // Same service name, other compat tags and version: can never receive a stream instance.
        { services: [`stream=${new URL('./support/services/stream-v2.ts', import.meta.url).pathname}`] },
      ],
    });
  });
  after(() => cluster.close());

  it('moves an instance 50 times back and forth at 1 kHz each way: nothing lost, duplicated or reordered', async (t) => {
    const [a, b] = cluster.hosts as [(typeof cluster.hosts)[0], (typeof cluster.hosts)[0]];
    const c = await openStream(t, a.clientUrl, { tickMs: 1, upTo: 50 });
    const s = c.session;
    const { instance } = await whereIs(cluster, s.id as string);
    const records: MigrationRecord[] = [];
    let onHost = a.id;
    for (let i = 0; i < 50; i++) {
      const to = onHost === a.id ? b.id : a.id;
      const before = c.received;
      records.push(await cluster.api<MigrationRecord>('/api/migrate', { instance, to }));
      onHost = to;
      // The stream goes on at the destination before the next move.
      await c.until(before + 20);
    }
    c.stopSending();
    await c.untilEchoed();
    assert.deepEqual(c.errors, []);
    assert.ok(c.received > 1000, `only ${c.received} indices in 50 migrations`);
    assert.equal(c.echoed, c.sent);
    assert.equal(records.length, 50);
    for (const r of records) {
      assert.equal(r.outcome, 'committed');
      assert.ok(r.rounds.length >= 1, 'at least round 0');
      assert.equal(r.sessions, 1);
      // The freeze, step by step: the source's three steps are the freeze; the destination's
      // share of the wait came with its verdict.
      const f = r.phases.freezeSteps;
      assert.ok(f, 'freeze steps recorded');
      const sum = f.workerMs + f.sendMs + f.waitMs;
      assert.ok(sum <= r.phases.freezeMs + 0.01 && sum > 0, `steps ${sum} ms, freeze ${r.phases.freezeMs} ms`);
      const { installMs, casMs, servingMs, destinationMs, downtimeMs } = f;
      assert.ok(
        installMs !== undefined &&
          casMs !== undefined &&
          servingMs !== undefined &&
          destinationMs !== undefined &&
          downtimeMs !== undefined,
        JSON.stringify(f),
      );
      // The install overlaps the commit and the clients' resumption: the destination serves
      // once it has committed, and answers once the worker has installed.
      assert.ok(casMs <= servingMs && servingMs <= installMs && installMs <= destinationMs, JSON.stringify(f));
      assert.ok(destinationMs <= f.waitMs, JSON.stringify(f));
      // The downtime ends at the destination, before the verdict is back at the source.
      assert.ok(downtimeMs > servingMs && downtimeMs <= r.phases.freezeMs + 0.01, JSON.stringify(f));
    }
    // Epochs rise by one per move.
    assert.deepEqual(
      records.map((r) => r.epoch),
      records.map((_, i) => i + 1),
    );
    // The service saw the moves (resume hook with how = migrated), and timers kept going.
    assert.equal(c.control.filter((m) => m === 'resumed:migrated').length, 50);
    const where = await whereIs(cluster, s.id as string);
    assert.equal(where.host, onHost);
    assert.equal((await instancesOf(cluster, 'stream')).filter((i) => i.instance === instance).length, 1);
  });

  it('a service moves its own instance (ctx.moveTo) to a host with the labels it asks for', async (t) => {
    const [a, b] = cluster.hosts as [(typeof cluster.hosts)[0], (typeof cluster.hosts)[0]];
    const c = await openStream(t, a.clientUrl);
    const s = c.session;
    const { instance } = await whereIs(cluster, s.id as string);
    const { record } = await migrationRecord(cluster, t, instance);
    const moved = new Promise<string>((resolve) =>
      s.on('event', (ev) => {
        if (ev.type === 'moved') resolve(ev.url);
      }),
    );
    s.send('moveto label zone=b');
    assert.equal(await moved, b.clientUrl);
    await c.flowsOn(20);
    assert.deepEqual(c.errors, []);
    assert.equal((await whereIs(cluster, s.id as string)).host, b.id);
    const m = await record;
    assert.equal(m.reason, 'self');
    assert.equal(m.to, b.id);
  });

  it('a client that changes local address while its session migrates resumes on the destination', async (t) => {
    const [a, b] = cluster.hosts as [(typeof cluster.hosts)[0], (typeof cluster.hosts)[0]];
    const c = await openStream(t, a.clientUrl, { localAddress: '127.0.0.2', upTo: 20 });
    const s = c.session;
    const { instance, host } = await whereIs(cluster, s.id as string);
    const to = host === a.id ? b.id : a.id;
    const moving = cluster.api<MigrationRecord>('/api/migrate', { instance, to });
    // The network changes under the client while the instance moves.
    s.setLocalAddress('127.0.0.3');
    s.reconnectNow();
    const rec = await moving;
    assert.equal(rec.outcome, 'committed');
    await c.flowsOn(50);
    assert.deepEqual(c.errors, []);
    const { sessions } = await cluster.api<{ sessions: Array<{ session: string; host: string; remote: string }> }>(
      `/api/sessions?id=${s.id}`,
    );
    assert.equal(sessions[0]?.host, to);
    assert.match(String(sessions[0]?.remote), /127\.0\.0\.3/);
  });

  it('a migration the destination refuses (compat tags, unmet requires) leaves the instance serving on the source', async (t) => {
    const [a, , v2] = cluster.hosts as [
      (typeof cluster.hosts)[0],
      (typeof cluster.hosts)[0],
      (typeof cluster.hosts)[0],
    ];
    const c = await openStream(t, a.clientUrl);
    const s = c.session;
    const { instance } = await whereIs(cluster, s.id as string);
    const { record } = await migrationRecord(cluster, t, instance, (m) => m.outcome === 'refused');
    await assert.rejects(cluster.api('/api/migrate', { instance, to: v2.id }), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'MIGRATION_REFUSED');
      assert.match(err.message, /compat/);
      return true;
    });
    const before = c.received;
    await c.until(before + 20);
    assert.equal((await whereIs(cluster, s.id as string)).host, a.id);
    c.stopSending();
    await c.untilEchoed();
    assert.deepEqual(c.errors, []);
    const refused = await record;
    assert.equal(refused.to, v2.id, 'the refusal is recorded');

    // Unmet requires: `needy` wants label region=eu, which the v2 host lacks.
    const n = connect(a.clientUrl, { service: 'needy', reconnect: { initialDelayMs: 5, maxDelayMs: 50 } });
    t.after(() => n.close());
    await n.ready;
    const echo = () =>
      new Promise<string>((resolve) => {
        n.once('message', (d) => resolve(new TextDecoder().decode(d)));
        n.send('ping');
      });
    assert.equal(await echo(), 'ping');
    const needy = await whereIs(cluster, n.id as string);
    await assert.rejects(
      cluster.api('/api/migrate', { instance: needy.instance, to: v2.id }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'MIGRATION_REFUSED');
        assert.match(err.message, /region=eu/);
        return true;
      },
    );
    assert.equal(await echo(), 'ping', 'still served by the source');
    assert.equal((await whereIs(cluster, n.id as string)).host, a.id);
  });
});
