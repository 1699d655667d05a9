import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { describe, it } from 'node:test';
import type { DevInfo } from '../src/cli/dev.js';
import { connect } from '../src/client/node.js';
import type { InstanceInfo } from '../src/directory/index.js';
import { clusterFetch, type HostRecord, parseClusterSecret } from '../src/transport/cluster.js';
import { roam } from './support/cli.js';
import { type RoamProcess, startRoam } from './support/cluster.js';

/** `roam dev` (what `npm start` runs): a whole local cluster in one process. */

const dec = new TextDecoder();

/** SIGINT, then the exit code — failing if the process takes longer than `ms` to stop. */
async function interrupt(p: RoamProcess, ms = 10_000): Promise<number | null> {
  p.kill('SIGINT');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`roam dev did not stop within ${ms} ms of SIGINT`)), ms);
  });
  try {
    return await Promise.race([p.exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

function api<T>(info: DevInfo, path: string): Promise<T> {
  return clusterFetch<T>(info.directory, path, { secret: parseClusterSecret(info.secret) });
}

describe('roam dev', { timeout: 180_000 }, () => {
  it('runs a directory, three hosts, a gateway and the demo load; SIGINT stops it all cleanly', async (t) => {
    const p = await startRoam(['dev', '--port', '0', '--gateway-port', '0', '--json', '--hosts', '3']);
    t.after(() => p.kill());
    let log = '';
    p.child.stderr?.on('data', (d: Buffer) => {
      log += d.toString();
    });
    const info = p.info as unknown as DevInfo;
    assert.match(info.directory, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.match(info.gateway, /^ws:\/\/127\.0\.0\.1:\d+$/);
    assert.deepEqual(info.services, ['counter', 'chat', 'stream']);
    assert.equal(info.demo, true);

    const { hosts } = await api<{ hosts: HostRecord[] }>(info, '/api/hosts');
    assert.equal(hosts.length, 3);
    assert.ok(hosts.every((h) => h.status === 'up'));
    assert.deepEqual(hosts.map((h) => h.labels.zone).sort(), ['a', 'b', 'c']);
    assert.deepEqual(hosts.map((h) => h.id).sort(), info.hosts.map((h) => h.id).sort());

    // A client through the gateway.
    const s = connect(info.gateway, { service: 'counter' });
    t.after(() => s.close());
    const got: number[] = [];
    const three = new Promise<void>((resolve) =>
      s.on('message', (d, ch) => {
        if (ch === 0 && got.push(Number(dec.decode(d))) === 3) resolve();
      }),
    );
    await s.ready;
    s.send('start 5');
    await three;
    assert.deepEqual(got.slice(0, 3), [1, 2, 3]);

    // The demo's clients are connected before the JSON line is printed.
    const { instances } = await api<{ instances: InstanceInfo[] }>(info, '/api/instances');
    const services = new Set(instances.map((i) => i.service));
    assert.deepEqual([...services].sort(), ['chat', 'counter', 'stream']);
    assert.ok(instances.filter((i) => i.service === 'chat').length >= 3, 'the demo chat rooms');
    // The operator CLI finds it through ROAM_DIRECTORY-less --directory.
    const cli = await roam(['hosts', '--directory', info.directory, '--json']);
    assert.equal(cli.code, 0, cli.stderr);
    assert.equal((JSON.parse(cli.stdout) as { hosts: unknown[] }).hosts.length, 3);

    s.close();
    assert.equal(await interrupt(p), 0);
    // With --json the demo logs to stderr; its last word is the tally.
    assert.match(log, /demo: at exit: 28 clients, \d+ messages received, 0 lost or repeated/);
    assert.doesNotMatch(log, /LOSS|LOST/);
  });

  it('--no-demo runs no clients; a taken port fails with a hint', async (t) => {
    const p = await startRoam(['dev', '--port', '0', '--gateway-port', '0', '--json', '--hosts', '2', '--no-demo']);
    t.after(() => p.kill());
    const info = p.info as unknown as DevInfo;
    assert.equal(info.demo, false);
    assert.equal(info.hosts.length, 2);
    const { instances } = await api<{ instances: InstanceInfo[] }>(info, '/api/instances');
    assert.deepEqual(instances, []);

    // Its directory's port is taken now: a second one on that port refuses to start.
    const port = new URL(info.directory).port;
    const taken = await roam(['dev', '--port', port, '--gateway-port', '0', '--no-demo', '--hosts', '1']);
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /^roam: PORT_IN_USE: .*port \d+ is taken.*--port 0/);

    assert.equal(await interrupt(p), 0);
  });

  it('the gateway port being taken is reported too', async (t) => {
    const blocker = createServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    t.after(() => blocker.close());
    const { port } = blocker.address() as { port: number };
    const r = await roam(['dev', '--port', '0', '--gateway-port', String(port), '--no-demo', '--hosts', '1']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^roam: PORT_IN_USE: the gateway's port \d+ is taken.*--gateway-port 0/);
  });
});
