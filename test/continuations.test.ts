import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { connect, type Session } from '../src/client/node.js';
import type { Host } from '../src/host/index.js';
import type { Store } from '../src/store/index.js';
import type { RoamError } from '../src/wire/index.js';
import { startTestHost } from './support/host.js';
import { type SpawnedHost, spawnHost } from './support/host-spawn.js';
import { gatedConnector, nextEvent } from './support/server.js';

const dec = new TextDecoder();

/** Resolves when the host has stored `sid`'s continuation (and its per-session instance's). */
function suspendedOn(host: Host, sid: () => string | undefined): Promise<void> {
  return new Promise((resolve) => {
    const fn = (e: { session: string }): void => {
      if (e.session === sid()) {
        host.off('suspended', fn);
        resolve();
      }
    };
    host.on('suspended', fn);
  });
}

/** A client whose network the test controls: `gate.open = false` makes it unreachable. Closed after the test. */
function awayClient(
  t: TestContext,
  url: string,
  opts: { service: string; key?: string; reconnect?: { initialDelayMs: number; maxDelayMs: number } },
): { session: Session; gate: ReturnType<typeof gatedConnector> } {
  const gate = gatedConnector();
  const session = connect(url, {
    service: opts.service,
    ...(opts.key ? { key: opts.key } : {}),
    connector: gate,
    reconnect: opts.reconnect ?? { initialDelayMs: 5, maxDelayMs: 20 },
  });
  t.after(() => session.close());
  return { session, gate };
}

/** Collects counter indices and checks they stay contiguous. */
function counterClient(s: Session): { got: number[]; control: string[]; until(n: number): Promise<void> } {
  const got: number[] = [];
  const control: string[] = [];
  const waiters: Array<() => void> = [];
  s.on('message', (d, ch) => {
    if (ch === 1) control.push(dec.decode(d));
    if (ch !== 0) return;
    const v = Number(dec.decode(d));
    assert.equal(v, got.length + 1, `index ${v} after ${got.length}`);
    got.push(v);
    for (const w of waiters.splice(0)) w();
  });
  return {
    got,
    control,
    async until(n) {
      while (got.length < n) await new Promise<void>((r) => waiters.push(r));
    },
  };
}

/** A counter client that has received `upTo` indices (5 ms ticks), on a network the test controls. */
async function countingClient(
  t: TestContext,
  url: string,
  upTo: number,
): Promise<{ s: Session; gate: ReturnType<typeof gatedConnector>; c: ReturnType<typeof counterClient> }> {
  const { session: s, gate } = awayClient(t, url, {
    service: 'counter',
    reconnect: { initialDelayMs: 5, maxDelayMs: 50 },
  });
  const c = counterClient(s);
  await s.ready;
  s.send('start 5');
  await c.until(upTo);
  return { s, gate, c };
}

/**
 * A host in its own process and a counter client that received `upTo` indices, then went away
 * long enough (`graceMs`) for its session to be suspended into the host's Store.
 */
async function awayOnSpawnedHost(
  t: TestContext,
  graceMs: number,
  upTo: number,
): Promise<{ host: SpawnedHost } & Awaited<ReturnType<typeof countingClient>>> {
  const host = await spawnHost({ graceMs });
  t.after(() => host.cleanup());
  const client = await countingClient(t, host.url, upTo);
  client.gate.open = false;
  client.s.reconnectNow();
  await host.waitSuspended(client.s.id as string);
  return { host, ...client };
}

describe('continuations', () => {
  it('a session away past its grace period is suspended to the Store, frees its memory, and resumes intact', async (t) => {
    const h = await startTestHost({ graceMs: 50 });
    t.after(() => h.close());
    const { session: s, gate } = awayClient(t, h.url, { service: 'counter' });
    const c = counterClient(s);
    await s.ready;
    s.send('pad 4096');
    s.send('start 5');
    await c.until(10);

    const stored = suspendedOn(h.host, () => s.id);
    gate.open = false;
    s.reconnectNow();
    await stored;
    assert.equal(await h.host.whereIs(s.id as string), 'suspended');
    assert.equal(h.host.liveSessions, 0, 'no session left in memory');
    assert.equal(h.host.liveInstances, 0, 'the per-session instance was suspended with it');
    assert.equal(h.host.server.sessionCount, 0);

    const resumed = nextEvent(s, 'resumed');
    gate.open = true;
    await resumed;
    const before = c.got.length;
    await c.until(before + 10);
    assert.deepEqual(c.control, ['resumed:restored']);
    assert.equal(h.host.counters.restored, 1);
    assert.equal(h.host.counters.instancesRestored, 1);
    assert.equal(await h.host.whereIs(s.id as string), 'live');
  });

  it('survives SIGKILL of the host: a restarted host resumes suspended sessions with state and timers', async (t) => {
    const { host: first, s, gate, c } = await awayOnSpawnedHost(t, 50, 20);
    first.kill('SIGKILL');
    await first.exited;

    const second = await first.restart();
    const resumed = nextEvent(s, 'resumed');
    gate.open = true;
    await resumed;
    const n = c.got.length;
    await c.until(n + 20);
    assert.ok(c.got.length >= 40, 'the counter continued from its continuation');
    assert.deepEqual(c.control, ['resumed:restored']);
    second.kill('SIGTERM');
    await second.exited;
  });

  it('expired continuations are collected and a late client gets lost(expired)', async (t) => {
    // The TTL is long enough that the client never gives up by its own clock (it learns the TTL
    // from the host): the verdict must come from the host's collection, whatever the load.
    const ttlMs = 60_000;
    const h = await startTestHost({ graceMs: 20, continuationTtlMs: ttlMs });
    t.after(() => h.close());
    const { session: s, gate } = awayClient(t, h.url, { service: 'counter' });
    await s.ready;
    const lost = nextEvent(s, 'lost');
    const stored = suspendedOn(h.host, () => s.id);
    gate.open = false;
    s.reconnectNow();
    await stored;
    assert.equal(await h.host.collectGarbage(Date.now() + ttlMs / 2), 0, 'nothing has expired yet');
    assert.equal(await h.host.whereIs(s.id as string), 'suspended');
    assert.equal(await h.host.collectGarbage(Date.now() + ttlMs + 1000), 2, 'the session and its per-session instance');
    assert.equal(await h.host.whereIs(s.id as string), 'unknown');
    assert.equal(await h.store.getBlob(`roam.session.${s.id}`), undefined, 'the blob is gone too');
    gate.open = true;
    const ev = await lost;
    assert.equal(ev.reason, 'expired');
    assert.match(ev.message, /collected/, "the host's verdict, not the client's clock");
  });

  it('refuses an incompatible service version, keeps the continuation, and resumes on a compatible one', async (t) => {
    const { host: v1, s, gate, c } = await awayOnSpawnedHost(t, 30, 5);
    v1.kill('SIGTERM');
    await v1.exited;

    const v2 = await v1.restart({ counterModule: 'counterV2' });
    const refused = new Promise<RoamError>((resolve) => {
      const onWarning = (w: RoamError): void => {
        if (w.code === 'INCOMPATIBLE') {
          s.off('warning', onWarning);
          resolve(w);
        }
      };
      s.on('warning', onWarning);
    });
    gate.open = true;
    assert.match((await refused).message, /counter\/1/);
    gate.open = false;
    v2.kill('SIGTERM');
    await v2.exited;

    const again = await v1.restart();
    const resumed = nextEvent(s, 'resumed');
    gate.open = true;
    await resumed;
    await c.until(c.got.length + 5);
    assert.equal(s.state, 'open');
    again.kill('SIGTERM');
    await again.exited;
  });

  it('keyed instance: a suspended member comes back into the running room (internal continuation)', async (t) => {
    const h = await startTestHost({ graceMs: 30 });
    t.after(() => h.close());
    const alice = connect(h.url, { service: 'room', key: 'lobby' });
    const gate = gatedConnector();
    const bob = connect(h.url, {
      service: 'room',
      key: 'lobby',
      connector: gate,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    });
    t.after(() => {
      alice.close();
      bob.close();
    });
    await Promise.all([alice.ready, bob.ready]);
    bob.send('/nick bob');
    const heard = new Promise<string>((r) => alice.once('message', (d) => r(dec.decode(d))));
    bob.send('hi');
    assert.equal(await heard, 'bob: hi');

    const stored = suspendedOn(h.host, () => bob.id);
    gate.open = false;
    bob.reconnectNow();
    await stored;
    assert.equal(h.host.liveInstances, 1, 'the room keeps running for alice');
    alice.send('are you there?');

    const control = new Promise<string>((r) => bob.on('message', (d, ch) => ch === 1 && r(dec.decode(d))));
    const exported = new Promise<[string, unknown]>((r) => bob.once('exported', (k, v) => r([k, v])));
    gate.open = true;
    assert.deepEqual(await exported, ['nick', 'bob'], 'the exported value reaches the client on resume');
    assert.equal(await control, 'restored as bob; 2 lines');
    const next = new Promise<string>((r) => alice.once('message', (d) => r(dec.decode(d))));
    bob.send('back');
    assert.equal(await next, 'bob: back');
  });

  it('an idle keyed instance is suspended whole (complete continuation) and restored with its state', async (t) => {
    const h = await startTestHost({ graceMs: 60_000 });
    t.after(() => h.close());
    const { session: carol, gate } = awayClient(t, h.url, { service: 'room', key: 'attic' });
    await carol.ready;
    const echoed = new Promise<void>((r) => carol.once('message', () => r()));
    carol.send('first line');
    await echoed;

    // room's idleMs is 200: with carol away and nobody else attached, the whole room goes to the Store.
    const instanceGone = new Promise<string>((r) => h.host.once('instanceSuspended', (e) => r(e.instance)));
    gate.open = false;
    carol.reconnectNow();
    const inst = await instanceGone;
    assert.equal(h.host.liveInstances, 0);
    assert.equal(h.host.liveSessions, 0, 'its detached member was suspended first');
    assert.ok(await h.store.get(`roam.instance.room.${inst}`), 'complete continuation stored');

    const control = new Promise<string>((r) => carol.on('message', (d, ch) => ch === 1 && r(dec.decode(d))));
    gate.open = true;
    assert.equal(await control, 'restored as guest-1; 1 lines', 'history came back with the instance');
    assert.equal(h.host.counters.instancesRestored, 1);
  });

  it('a newcomer to a suspended keyed instance joins the restored room, not an empty copy', async (t) => {
    const h = await startTestHost({ graceMs: 60_000 });
    t.after(() => h.close());
    const { session: carol, gate } = awayClient(t, h.url, { service: 'room', key: 'den' });
    await carol.ready;
    const echoed = new Promise<void>((r) => carol.once('message', () => r()));
    carol.send('kept line');
    await echoed;
    const gone = new Promise<void>((r) => h.host.once('instanceSuspended', () => r()));
    gate.open = false;
    carol.reconnectNow();
    await gone;
    // Dave has never been in the room: his HELLO must bring the room back from the Store.
    const dave = connect(h.url, { service: 'room', key: 'den' });
    t.after(() => dave.close());
    await dave.ready;
    const line = new Promise<string>((r) => dave.on('message', (d, ch) => ch === 0 && r(dec.decode(d))));
    dave.send('hello');
    assert.match(await line, /: hello$/);
    assert.equal(h.host.counters.instancesRestored, 1, 'the room came back from its continuation');
    // Carol returns to one room holding both lines: hers from before, and dave's.
    const control = new Promise<string>((r) => carol.on('message', (d, ch) => ch === 1 && r(dec.decode(d))));
    gate.open = true;
    assert.equal(await control, 'restored as guest-1; 2 lines');
  });

  it('a session whose key the service refuses is lost (refused), not retried forever', async (t) => {
    const h = await startTestHost({
      services: [{ name: 'picky', module: new URL('./support/services/picky.ts', import.meta.url).pathname }],
    });
    t.after(() => h.close());
    const s = connect(h.url, { service: 'picky', key: 'BAD KEY', reconnect: { initialDelayMs: 5 } });
    t.after(() => s.close());
    const lost = await new Promise<{ reason: string; code: string }>((resolve) =>
      s.on('event', (ev) => {
        if (ev.type === 'lost') resolve(ev);
      }),
    );
    assert.equal(lost.code, 'INVALID_ARGUMENT');
    assert.equal(lost.reason, 'refused');
  });

  it('async timer hooks queued behind a suspension do not run while the session is away', async (t) => {
    const h = await startTestHost({
      graceMs: 10,
      services: [
        { name: 'acounter', module: new URL('./support/services/async-counter.ts', import.meta.url).pathname },
      ],
    });
    t.after(() => h.close());
    const { session: s, gate } = awayClient(t, h.url, {
      service: 'acounter',
      reconnect: { initialDelayMs: 2, maxDelayMs: 5 },
    });
    const c = counterClient(s);
    await s.ready;
    s.send('go');
    for (let round = 0; round < 15; round++) {
      await c.until(c.got.length + 3);
      const stored = suspendedOn(h.host, () => s.id);
      gate.open = false;
      s.reconnectNow();
      await stored;
      const resumed = nextEvent(s, 'resumed');
      gate.open = true;
      await resumed;
    }
    await c.until(c.got.length + 3);
    assert.equal(h.host.counters.restored, 15);
  });

  it('a service sees session.connected go false while the client is away, and can hold back output', async (t) => {
    const h = await startTestHost({
      graceMs: 60_000,
      services: [{ name: 'presence', module: new URL('./support/services/presence.ts', import.meta.url).pathname }],
    });
    t.after(() => h.close());
    const { session: s, gate } = awayClient(t, h.url, { service: 'presence' });
    await s.ready;
    await new Promise<void>((r) => s.once('message', () => r()));
    const server = h.host.server.getSession(s.id as string);
    assert.ok(server);
    const detached = nextEvent(server, 'suspended');
    gate.open = false;
    s.reconnectNow();
    await detached;
    // Let the service's 5 ms timer run a while with nobody connected.
    await new Promise((r) => setTimeout(r, 100));
    const report = new Promise<string>((r) => s.on('message', (d, ch) => ch === 1 && r(dec.decode(d))));
    gate.open = true;
    const text = await report;
    const m = /^reconnected connected=true held=(\d+)$/.exec(text);
    assert.ok(m, text);
    assert.ok(Number(m[1]) > 0, `ticks were held back while away: ${text}`);
  });

  it('dependencies: suspending a session suspends its dependents, and they are restored together', async (t) => {
    const h = await startTestHost({ graceMs: 30 });
    t.after(() => h.close());
    const gate = gatedConnector();
    const main = connect(h.url, {
      service: 'room',
      key: 'ssh',
      connector: gate,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    });
    const x11 = connect(h.url, { service: 'room', key: 'ssh', reconnect: { initialDelayMs: 5 } });
    t.after(() => {
      main.close();
      x11.close();
    });
    await Promise.all([main.ready, x11.ready]);
    x11.send(`/depends ${main.id}`);
    const echo = new Promise<void>((r) => x11.once('message', () => r()));
    x11.send('ping');
    await echo;

    const x11Stored = suspendedOn(h.host, () => x11.id);
    const mainStored = suspendedOn(h.host, () => main.id);
    gate.open = false;
    main.reconnectNow();
    await Promise.all([x11Stored, mainStored]);
    assert.equal(await h.host.whereIs(x11.id as string), 'suspended');
    assert.equal(await h.host.whereIs(main.id as string), 'suspended');

    gate.open = true;
    await Promise.all([nextEvent(main, 'resumed'), nextEvent(x11, 'resumed')]);
    assert.equal(h.host.counters.restored, 2);
  });

  it('a suspension asked for while the session is still opening waits for the open, then suspends it whole', async (t) => {
    // A keyed HELLO looks in the Store for a suspended copy of its room before the worker opens
    // the session; holding that lookup keeps the open in flight for as long as the test wants.
    let reachedLookup!: () => void;
    const atLookup = new Promise<void>((r) => {
      reachedLookup = r;
    });
    let releaseLookup!: () => void;
    const released = new Promise<void>((r) => {
      releaseLookup = r;
    });
    const holdRoomLookup = (base: Store): Store =>
      new Proxy(base, {
        get(target, p) {
          if (p === 'get') {
            return async (name: string) => {
              if (name.startsWith('roam.instance.room.')) {
                reachedLookup();
                await released;
              }
              return target.get(name);
            };
          }
          const v: unknown = Reflect.get(target, p, target);
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
    const h = await startTestHost({ wrapStore: holdRoomLookup, graceMs: 60_000 });
    t.after(() => h.close());
    const { session: s } = awayClient(t, h.url, { service: 'room', key: 'held' });
    await s.ready;
    await atLookup;
    const stored = suspendedOn(h.host, () => s.id);
    const suspending = h.host.suspendSession(s.id as string);
    const control = new Promise<string>((r) => s.on('message', (d, ch) => ch === 1 && r(dec.decode(d))));
    releaseLookup();
    assert.equal(await suspending, true);
    await stored;
    assert.match(await control, /^restored as guest-\d; 0 lines$/, 'the session comes back from its continuation');
    assert.equal(h.host.counters.restored, 1);
    const echo = new Promise<string>((r) => s.on('message', (d, ch) => ch === 0 && r(dec.decode(d))));
    s.send('hi');
    assert.match(await echo, /^guest-\d: hi$/);
  });

  it('a corrupted continuation is refused whole, never half-restored', async (t) => {
    const h = await startTestHost({ graceMs: 20 });
    t.after(() => h.close());
    const { session: s, gate } = awayClient(t, h.url, { service: 'counter' });
    await s.ready;
    const stored = suspendedOn(h.host, () => s.id);
    gate.open = false;
    s.reconnectNow();
    await stored;
    const name = `roam.session.${s.id}`;
    const blob = (await h.store.getBlob(name)) as Uint8Array;
    blob[blob.length >> 1] = (blob[blob.length >> 1] as number) ^ 0xff;
    await h.store.putBlob(name, blob);
    const lost = nextEvent(s, 'lost');
    gate.open = true;
    assert.equal((await lost).code, 'CONTINUATION_CORRUPT');
    assert.equal(h.host.liveSessions, 0);
    assert.equal(h.host.liveInstances, 0);
  });
});
