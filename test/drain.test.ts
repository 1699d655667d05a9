import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DrainStatus } from '../src/transport/cluster.js';
import { startCluster } from './support/cluster.js';
import { closeAll, drainOver, echoAll, openMany } from './support/drain.js';
import { SERVICES } from './support/host.js';
import { LinkEmulator } from './support/link-emulator.js';

/** Drains with real processes: a directory and three hosts on one SQLite Store. */

const services = [`stream=${SERVICES.stream}`];

describe('drain', { timeout: 240_000 }, () => {
  it('drains 1,000 sessions to two hosts 20 ms away; each client keeps its session', async (t) => {
    // Peer links to b and c cross a link emulator adding 20 ms each way.
    const emus = await Promise.all(
      [0, 1].map(() => LinkEmulator.start({ target: { host: '127.0.0.1', port: 1 }, delayMs: 20 })),
    );
    t.after(() => Promise.all(emus.map((e) => e.close())));
    const cluster = await startCluster({
      hosts: [
        { services },
        { services, advertisePeer: `http://127.0.0.1:${emus[0]?.port}` },
        { services, advertisePeer: `http://127.0.0.1:${emus[1]?.port}` },
      ],
    });
    t.after(() => cluster.close());
    const [a, b, c] = cluster.hosts as [
      (typeof cluster.hosts)[0],
      (typeof cluster.hosts)[0],
      (typeof cluster.hosts)[0],
    ];
    // The hosts advertised the emulators before they knew their own ports; point the emulators at them now.
    emus[0]?.retarget({ host: '127.0.0.1', port: Number(new URL(b.peerUrl).port) });
    emus[1]?.retarget({ host: '127.0.0.1', port: Number(new URL(c.peerUrl).port) });
    const clients = await openMany(a.clientUrl, 1000, { diagnose: cluster.diagnose });
    t.after(() => closeAll(clients.map((x) => x.session)));
    await echoAll(clients);
    const ac = new AbortController();
    t.after(() => ac.abort());
    const over = drainOver(cluster, a.id, ac.signal);
    const started = await cluster.api<DrainStatus>('/api/drain', { host: a.id });
    assert.equal(started.state, 'running');
    assert.equal(started.total, 1000);
    const done = await over;
    assert.equal(done.state, 'done', done.message);
    assert.equal(done.moved, 1000);
    await echoAll(clients);
    for (const x of clients) assert.deepEqual(x.errors, []);
    const { sessions } = await cluster.api<{ sessions: Array<{ host: string }> }>('/api/sessions');
    const onA = sessions.filter((s) => s.host === a.id).length;
    const onB = sessions.filter((s) => s.host === b.id).length;
    const onC = sessions.filter((s) => s.host === c.id).length;
    assert.equal(onA, 0);
    assert.equal(onB + onC, 1000);
    assert.ok(onB > 200 && onC > 200, `placement spread the load: ${onB} / ${onC}`);
    assert.ok(emus[0] && emus[0].bytesForwarded.up > 0, 'migrations to b crossed the emulated link');
  });
});
