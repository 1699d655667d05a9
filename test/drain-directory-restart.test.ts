import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { readEvents } from '../src/directory/index.js';
import type { DrainStatus } from '../src/transport/cluster.js';
import { startCluster } from './support/cluster.js';
import { closeAll, drainOver, echoAll, openMany } from './support/drain.js';
import { SERVICES } from './support/host.js';

/** Drains with real processes: a directory and three hosts on one SQLite Store. */

const services = [`stream=${SERVICES.stream}`];

describe('drain across a directory restart', { timeout: 240_000 }, () => {
  it('a drain completes when the directory restarts in the middle of it', async (t) => {
    const cluster = await startCluster({ hosts: [{ services }, { services }, { services }] });
    t.after(() => cluster.close());
    const [a] = cluster.hosts as [(typeof cluster.hosts)[0]];
    const clients = await openMany(a.clientUrl, 300, { diagnose: cluster.diagnose });
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
