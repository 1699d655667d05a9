import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { openSqliteStore } from '../src/store/index.js';
import { ClusterKeys, type MigrationRecord } from '../src/transport/cluster.js';
import { type ClusterHost, holders, location, startCluster, streaming } from './support/cluster.js';
import { within } from './support/deadline.js';
import { SERVICES } from './support/host.js';
import { openStream } from './support/stream-client.js';

/**
 * A host dies at each step of a migration (fault injection: the process SIGKILLs itself at the
 * named point). Whatever happens, the instance ends up served by exactly one host and the client
 * sees every message once, in order.
 */

const services = [`stream=${SERVICES.stream}`];

describe('migration faults: the source side', { timeout: 180_000 }, () => {
  it('the source dies right after the commit: the destination serves', async (t) => {
    const cluster = await startCluster({ hosts: [{ services }, { services }] });
    t.after(() => cluster.close());
    const [a, b] = cluster.hosts as [ClusterHost, ClusterHost];
    const { c, instance } = await streaming(t, cluster, a);
    const rec = await cluster.api<MigrationRecord>('/api/migrate', { instance, to: b.id });
    assert.equal(rec.outcome, 'committed');
    a.kill('SIGKILL');
    await a.exited;
    await c.flowsOn(200);
    assert.deepEqual(c.errors, []);
    assert.deepEqual(await holders(cluster, instance), [b.id]);
    assert.deepEqual(
      [(await location(cluster, instance))?.host, (await location(cluster, instance))?.epoch],
      [b.id, 1],
    );
  });

  it('the source dies between commit and MOVE: through the gateway, the client finds the destination', async (t) => {
    // One host first, so the gateway has to place the session on the one that will crash.
    const cluster = await startCluster({ hosts: [{ services, env: { ROAM_TEST_FAULT: 'source-after-commit' } }] });
    t.after(() => cluster.close());
    const [a] = cluster.hosts as [ClusterHost];
    const gw = await cluster.startGateway();
    const c = await openStream(t, gw.urls[0] as string, { tickMs: 1, dirtyBytes: 1024, sendMs: 2, upTo: 30 });
    const s = c.session;
    const { sessions } = await cluster.api<{ sessions: Array<{ instance: string; host: string }> }>(
      `/api/sessions?id=${s.id}`,
    );
    assert.equal(sessions[0]?.host, a.id, 'the gateway placed the session on a');
    const instance = sessions[0]?.instance as string;
    const b = await cluster.addHost({ services });
    // The source dies before it can answer: the request fails, the instance is b's.
    await within('the migrate request', 45_000, assert.rejects(cluster.api('/api/migrate', { instance, to: b.id })));
    assert.notEqual(await within('the source exiting', 45_000, a.exited), 0);
    await within(
      'the client flowing on b',
      45_000,
      c.flowsOn(200),
      () => `${s.state}, index ${c.received}, events: ${c.events.join(' ')}`,
    );
    assert.deepEqual(c.errors, []);
    assert.deepEqual(await holders(cluster, instance), [b.id]);
    assert.equal((await location(cluster, instance))?.host, b.id);
  });

  it('a host whose epoch is stale stops serving the instance (fencing)', async (t) => {
    const cluster = await startCluster({ hosts: [{ services }, { services }] });
    t.after(() => cluster.close());
    const [a, b] = cluster.hosts as [ClusterHost, ClusterHost];
    const { s, instance } = await streaming(t, cluster, a);
    const lost = new Promise<string>((resolve) =>
      s.on('event', (ev) => {
        if (ev.type === 'lost') resolve(ev.code);
      }),
    );
    // Someone else (a split-brain peer) took the instance: the location names b at a newer epoch.
    const store = await openSqliteStore({ path: cluster.dbPath });
    t.after(() => store.close());
    const cur = await store.get(ClusterKeys.location(instance));
    await store.compareAndSet(
      ClusterKeys.location(instance),
      cur?.revision ?? 0,
      new TextEncoder().encode(JSON.stringify({ instance, service: 'stream', host: b.id, epoch: 7 })),
    );
    assert.equal(await lost, 'FENCED');
    assert.deepEqual(await holders(cluster, instance), []);
  });
});
