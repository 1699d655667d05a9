import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connect } from '../src/client/node.js';
import type { MigrationRecord } from '../src/transport/cluster.js';
import { connectTransport } from '../src/transport/index.js';
import { migrationRecord, startCluster, whereIs } from './support/cluster.js';
import { within } from './support/deadline.js';
import { closeAll, echoAll, openMany } from './support/drain.js';
import { SERVICES } from './support/host.js';

/** Drains with real processes: a directory and three hosts on one SQLite Store. */

const services = [`stream=${SERVICES.stream}`];

describe('graceful shutdown', { timeout: 240_000 }, () => {
  it('SIGTERM drains a host with 500 streaming sessions before it exits', async (t) => {
    const cluster = await startCluster({ hosts: [{ services }, { services }, { services }] });
    t.after(() => cluster.close());
    const [a] = cluster.hosts as [(typeof cluster.hosts)[0]];
    const clients = await openMany(a.clientUrl, 500, { diagnose: cluster.diagnose });
    t.after(() => closeAll(clients.map((x) => x.session)));
    for (const x of clients) x.session.send('start 50');
    await Promise.all(clients.map((x) => x.until(3)));
    a.kill('SIGTERM');
    const code = await a.exited;
    assert.equal(code, 0);
    // Before the process exited, every client had resumed on another host.
    for (const x of clients) {
      assert.equal(x.session.state, 'open', `session ${x.session.id} is ${x.session.state}`);
      assert.notEqual(x.session.url, a.clientUrl);
    }
    const marks = clients.map((x) => x.received);
    await Promise.all(clients.map((x, i) => x.until((marks[i] as number) + 3)));
    await echoAll(clients);
    for (const x of clients) assert.deepEqual(x.errors, []);
    for (const x of clients) assert.ok(x.control.includes('resumed:migrated'));
  });

  it('a client that resumes after the gap report still frees its stub: SIGTERM then exits without waiting', async (t) => {
    const cluster = await startCluster({
      hosts: [{ services, args: ['--drain-deadline-ms', '120000'] }, { services }],
    });
    t.after(() => cluster.close());
    const [a, b] = cluster.hosts as [(typeof cluster.hosts)[0], (typeof cluster.hosts)[0]];
    // The client cannot reach the destination until the test lets it: it resumes there late.
    let open: () => void = () => {};
    const gate = new Promise<void>((r) => {
      open = r;
    });
    const s = connect(a.clientUrl, {
      service: 'stream',
      connector: async (url, o) => {
        if (url === b.clientUrl) await gate;
        return connectTransport(url, { localAddress: o.localAddress });
      },
    });
    t.after(() => s.close());
    await s.ready;
    const { instance } = await whereIs(cluster, s.id as string);
    const late = await migrationRecord(cluster, t, instance, (m) => m.phases.clientsLate !== undefined);
    const rec = await cluster.api<MigrationRecord>('/api/migrate', { instance, to: b.id });
    assert.equal(rec.outcome, 'committed');
    // The destination gives up waiting for the gap after 10 s and says one client is late.
    const reported = await late.record;
    assert.equal(reported.phases.clientsLate, 1);
    assert.ok((reported.phases.clientGapMs ?? 0) >= 10_000, `gap ${reported.phases.clientGapMs}`);
    const resumed = new Promise<void>((r) =>
      s.on('event', (ev) => {
        if (ev.type === 'resumed' && s.url === b.clientUrl) r();
      }),
    );
    open();
    await resumed;
    // The source heard of that resume too and dropped its stub: nothing holds its shutdown back
    // (before, it waited for the stub to expire, 60 s, or for its drain deadline).
    a.kill('SIGTERM');
    assert.equal(await within('the source exits after SIGTERM', 20_000, a.exited), 0);
  });
});
