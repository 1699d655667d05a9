import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connect, type Session } from '../src/client/node.js';
import { readEvents } from '../src/directory/index.js';
import type { DrainStatus } from '../src/transport/cluster.js';
import { type Cluster, startCluster } from './support/cluster.js';
import { SERVICES } from './support/host.js';
import { LinkEmulator } from './support/link-emulator.js';
import { type StreamClient, streamClient } from './support/stream-client.js';

/** Drains with real processes: a directory and three hosts on one SQLite Store. */

const services = [`stream=${SERVICES.stream}`];

/** Opens `n` stream sessions on `url`, `concurrency` handshakes at a time. */
async function openMany(url: string, n: number, concurrency = 50): Promise<StreamClient[]> {
  const out: StreamClient[] = [];
  for (let i = 0; i < n; i += concurrency) {
    const batch = Array.from({ length: Math.min(concurrency, n - i) }, () =>
      streamClient(connect(url, { service: 'stream', reconnect: { initialDelayMs: 5, maxDelayMs: 200 } })),
    );
    await Promise.all(batch.map((c) => c.session.ready));
    out.push(...batch);
  }
  return out;
}

/** Waits for a drain event of `host` that is over, from the directory's live stream. */
async function drainOver(cluster: Cluster, host: string, signal: AbortSignal): Promise<DrainStatus> {
  for (;;) {
    try {
      for await (const ev of readEvents(cluster.directory.url, {
        secret: cluster.secretBytes,
        types: ['drain'],
        signal,
      })) {
        if (ev.type === 'drain' && ev.drain.host === host && ev.drain.state !== 'running') return ev.drain;
      }
    } catch (err) {
      // The directory restarted under us: read the stream of the new one.
      if (signal.aborted) throw err;
    }
    // The stream ended (directory restarted): the drain may have ended meanwhile.
    const { drains } = await cluster.api<{ drains: DrainStatus[] }>('/api/drains').catch(() => ({ drains: [] }));
    const d = drains.find((x) => x.host === host && x.state !== 'running');
    if (d) return d;
  }
}

async function echoAll(clients: StreamClient[]): Promise<void> {
  for (const c of clients) c.sendNext();
  await Promise.all(clients.map((c) => c.untilEchoed()));
}

function closeAll(sessions: Session[]): void {
  for (const s of sessions) s.close();
}

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
    const clients = await openMany(a.clientUrl, 1000);
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

  it('SIGTERM drains a host with 500 streaming sessions before it exits', async (t) => {
    const cluster = await startCluster({ hosts: [{ services }, { services }, { services }] });
    t.after(() => cluster.close());
    const [a] = cluster.hosts as [(typeof cluster.hosts)[0]];
    const clients = await openMany(a.clientUrl, 500);
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

  it('a drain completes when the directory restarts in the middle of it', async (t) => {
    const cluster = await startCluster({ hosts: [{ services }, { services }, { services }] });
    t.after(() => cluster.close());
    const [a] = cluster.hosts as [(typeof cluster.hosts)[0]];
    const clients = await openMany(a.clientUrl, 300);
    t.after(() => closeAll(clients.map((x) => x.session)));
    await echoAll(clients);
    const ac = new AbortController();
    t.after(() => ac.abort());
    // Small batches, one at a time: the drain is still running when the directory goes down.
    const { id } = await cluster.api<DrainStatus>('/api/drain', { host: a.id, concurrency: 1, batchSize: 5 });
    for await (const ev of readEvents(cluster.directory.url, {
      secret: cluster.secretBytes,
      types: ['drain'],
      signal: ac.signal,
    })) {
      if (ev.type === 'drain' && ev.drain.id === id && ev.drain.moved > 0) break;
    }
    await cluster.restartDirectory();
    const done = await drainOver(cluster, a.id, ac.signal);
    assert.equal(done.state, 'done', done.message);
    assert.equal(done.moved, 300);
    await echoAll(clients);
    for (const x of clients) assert.deepEqual(x.errors, []);
    const { sessions } = await cluster.api<{ sessions: Array<{ host: string }> }>('/api/sessions');
    assert.equal(sessions.filter((s) => s.host === a.id).length, 0);
    assert.equal(sessions.length, 300);
    // The new directory has the migration history the host reported, including moves made while it was down.
    const { migrations } = await cluster.api<{
      migrations: Array<{ from: string; outcome: string; instances: string[] }>;
    }>('/api/migrations?limit=1000');
    const moved = migrations.filter((m) => m.from === a.id && m.outcome === 'committed').flatMap((m) => m.instances);
    assert.equal(new Set(moved).size, 300);
  });
});
