/**
 * A keyed instance has one owner in a cluster, also in direct mode, where clients pick their host
 * themselves: a HELLO for a key another host runs is sent there (INSTANCE_ELSEWHERE), a new key
 * is claimed in the Store before its instance is created, and an owner gone from the host table
 * is taken over at the next epoch.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect, type Session } from '../src/client/node.js';
import { echoService, type SessionHandler } from '../src/host/index.js';
import { RoamError } from '../src/wire/index.js';
import { type Cluster, holders, location, startCluster, whereIs } from './support/cluster.js';
import { startTestServer } from './support/server.js';

const dec = new TextDecoder();

function room(t: { after(fn: () => unknown): void }, url: string, key: string): Session {
  const s = connect(url, { service: 'room', key, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } });
  t.after(() => s.close());
  return s;
}

/** The next broadcast line the session hears that ends with `suffix`. */
function hears(s: Session, suffix: string): Promise<string> {
  return new Promise((resolve) => {
    const on = (data: Uint8Array, ch: number): void => {
      const text = dec.decode(data);
      if (ch !== 0 || !text.endsWith(suffix)) return;
      s.off('message', on);
      resolve(text);
    };
    s.on('message', on);
  });
}

/**
 * Resolves once the session is a member of its room: WELCOME comes before the service's open
 * hook has run, but a message the session sends is handled after it, and broadcast back.
 */
async function joined(s: Session, tag: string): Promise<void> {
  await s.ready;
  const heard = hears(s, `: ${tag} joined`);
  s.send(`${tag} joined`);
  await heard;
}

describe('keyed instances in a cluster, direct mode', () => {
  let cluster: Cluster;
  before(async () => {
    cluster = await startCluster({ hosts: 2 });
  });
  after(() => cluster.close());

  it('a HELLO on a host that does not run the instance opens the session on the host that does', async (t) => {
    const [h1, h2] = cluster.hosts as [Cluster['hosts'][0], Cluster['hosts'][0]];
    const alice = room(t, h1.clientUrl, 'lobby');
    await alice.ready;
    const bob = room(t, h2.clientUrl, 'lobby');
    const moved: string[] = [];
    bob.on('event', (ev) => {
      if (ev.type === 'moved') moved.push(ev.url);
    });
    await joined(bob, 'bob');
    assert.equal(bob.url, h1.clientUrl);
    assert.deepEqual(moved, [h1.clientUrl], 'the client says where it went');
    // One room: what alice says, bob hears.
    const heard = hears(bob, ': hello');
    alice.send('hello');
    await heard;
    const { instance, host } = await whereIs(cluster, bob.id as string);
    assert.equal(host, h1.id);
    assert.deepEqual(await holders(cluster, instance), [h1.id]);
    assert.deepEqual(await location(cluster, instance), { instance, service: 'room', host: h1.id, epoch: 0 });
  });

  it('HELLOs for a new key on two hosts at once create one instance', async (t) => {
    const [h1, h2] = cluster.hosts as [Cluster['hosts'][0], Cluster['hosts'][0]];
    for (let i = 0; i < 8; i++) {
      const key = `race-${i}`;
      const a = room(t, h1.clientUrl, key);
      const b = room(t, h2.clientUrl, key);
      await Promise.all([joined(a, 'a'), joined(b, 'b')]);
      assert.equal(a.url, b.url, `${key}: both sessions on one host`);
      const heard = hears(b, `: ping ${i}`);
      a.send(`ping ${i}`);
      await heard;
      const { instance, host } = await whereIs(cluster, a.id as string);
      assert.deepEqual(await holders(cluster, instance), [host], `${key}: one holder`);
      assert.equal((await location(cluster, instance))?.host, host);
    }
  });

  it('after a migration, a HELLO elsewhere follows the instance to its new owner', async (t) => {
    const [h1, h2] = cluster.hosts as [Cluster['hosts'][0], Cluster['hosts'][0]];
    const carol = room(t, h1.clientUrl, 'hall');
    // Joined, not just open: the session's instance is known only once the service opened it.
    await joined(carol, 'carol');
    const { instance } = await whereIs(cluster, carol.id as string);
    await cluster.api('/api/migrate', { instance, to: h2.id });
    // A newcomer at the old owner is sent to the new one.
    const dave = room(t, h1.clientUrl, 'hall');
    await dave.ready;
    assert.equal(dave.url, h2.clientUrl);
    const heard = hears(carol, ': after the move');
    dave.send('after the move');
    await heard;
    assert.deepEqual(await holders(cluster, instance), [h2.id]);
    assert.deepEqual(await location(cluster, instance), { instance, service: 'room', host: h2.id, epoch: 1 });
  });
});

it('an owner that died is taken over once the directory purged it, at the next epoch', async (t) => {
  // Heartbeats every 200 ms: a silent host is purged after 2 s.
  const cluster = await startCluster({ hosts: 2, heartbeatMs: 200 });
  t.after(() => cluster.close());
  const [h1, h2] = cluster.hosts as [Cluster['hosts'][0], Cluster['hosts'][0]];
  const erin = connect(h2.clientUrl, { service: 'room', key: 'attic', reconnect: { connectTimeoutMs: 1000 } });
  t.after(() => erin.close());
  await joined(erin, 'erin');
  const { instance } = await whereIs(cluster, erin.id as string);
  assert.equal((await location(cluster, instance))?.host, h2.id);
  h2.kill('SIGKILL');
  await h2.exited;
  // Until the purge, h1 sends the HELLO to the dead owner; the client, unable to reach it, starts
  // over at h1. Once h2 is gone from the host table, h1 takes the instance over.
  const frank = room(t, h1.clientUrl, 'attic');
  await frank.ready;
  assert.equal(frank.url, h1.clientUrl);
  const { hosts } = await cluster.api<{ hosts: Array<{ id: string }> }>('/api/hosts');
  assert.deepEqual(
    hosts.map((h) => h.id),
    [h1.id],
    'taken over only after the purge',
  );
  assert.deepEqual(await location(cluster, instance), { instance, service: 'room', host: h1.id, epoch: 1 });
  const heard = hears(frank, ': still here');
  frank.send('still here');
  await heard;
});

it('hosts that send a HELLO back and forth (INSTANCE_ELSEWHERE) cannot make a client loop: 3 redirects, then backoff, then lost', async (t) => {
  let admits = 0;
  const urls: string[] = [];
  // Each server names the other as the owner, forever: a misconfigured or hostile cluster.
  const bouncing = (other: () => string): Record<string, SessionHandler> => ({
    echo: {
      open: (session) => echoService.open(session),
      async admit() {
        admits++;
        throw new RoamError('INSTANCE_ELSEWHERE', other());
      },
    },
  });
  const a = await startTestServer({ services: bouncing(() => urls[1] as string) });
  const b = await startTestServer({ services: bouncing(() => urls[0] as string) });
  t.after(() => a.close());
  t.after(() => b.close());
  urls.push(a.ws, b.ws);
  const s = connect(a.ws, {
    service: 'echo',
    key: 'k',
    reconnect: { initialDelayMs: 20, maxDelayMs: 40, connectTimeoutMs: 400 },
  });
  const seen: string[] = [];
  s.on('event', (e) => seen.push(e.type === 'lost' ? `lost ${e.code}` : e.type));
  s.on('warning', (w) => seen.push(`warning ${w.code}`));
  await assert.rejects(s.ready, (err: RoamError) => err.code === 'RECONNECT_EXHAUSTED');
  assert.equal(seen.at(-1), 'lost RECONNECT_EXHAUSTED');
  // Redirects come in runs of at most 3, each ended by a warning and a backoff.
  const runs = seen
    .slice(0, -1)
    .join(',')
    .split('warning INSTANCE_ELSEWHERE')
    .map((r) => r.split(',').filter((x) => x === 'moved').length);
  assert.ok(runs.length >= 2, `several attempts within the timeout: ${seen.join(' ')}`);
  assert.ok(
    runs.every((n) => n <= 3),
    `runs of redirects: ${runs.join(' ')}`,
  );
  assert.ok(admits <= 4 * runs.length, `${admits} HELLOs for ${runs.length} attempts`);
});
