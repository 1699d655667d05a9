import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { startCluster } from './support/cluster.js';
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
});
