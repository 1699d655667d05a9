import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import fc from 'fast-check';
import { Directory, type DirectoryLogger, type DirectoryOptions, readEvents } from '../src/directory/index.js';
import type { DirectoryStreamEvent } from '../src/directory/sse.js';
import { ManualClock } from '../src/session/index.js';
import { openSqliteStore, type Store } from '../src/store/index.js';
import {
  AUTH_HEADER,
  type ClusterEvent,
  ClusterKeys,
  clusterFetch,
  type DrainStatus,
  decodeJson,
  encodeJson,
  type HostedInstance,
  type HostIdentity,
  type HostMetrics,
  type HostRecord,
  loadOrCreateIdentity,
  type MigrationRecord,
  signRequest,
  signWithIdentity,
} from '../src/transport/cluster.js';
import { PeerServer } from '../src/transport/peer.js';
import { CODES, RoamError } from '../src/wire/index.js';
import { tempDir } from './support/server.js';

const SECRET = new Uint8Array(32).fill(7);
const OTHER_SECRET = new Uint8Array(32).fill(9);
const utf8 = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// Fixtures

interface Env {
  dir: Directory;
  store: Store;
  path: string;
  /** Closes the directory (if still open) and reopens one on the same SQLite file. */
  restart(opts?: Partial<DirectoryOptions>): Promise<Directory>;
}

async function setup(t: TestContext, opts: Partial<DirectoryOptions> = {}): Promise<Env> {
  const tmp = await tempDir('roam-directory-');
  const path = join(tmp.path, 'directory.db');
  const env = {} as Env;
  env.path = path;
  env.store = await openSqliteStore({ path });
  env.dir = await Directory.start({ store: env.store, secret: SECRET, ...opts });
  env.restart = async (more = {}) => {
    await env.dir.close();
    await env.store.close();
    env.store = await openSqliteStore({ path });
    env.dir = await Directory.start({ store: env.store, secret: SECRET, ...opts, ...more });
    return env.dir;
  };
  t.after(async () => {
    await env.dir.close();
    await env.store.close();
    await tmp.cleanup();
  });
  return env;
}

/** A stand-in for a host: a real identity and a real peer endpoint answering with fixed data. */
class FakeHost {
  readonly identity: HostIdentity = loadOrCreateIdentity();
  readonly peer = new PeerServer(SECRET, { warn: () => {} });
  instances: HostedInstance[] = [];
  sessions: Array<{ session: string; service: string; instance: string; state: string; remote: string }> = [];
  drain: DrainStatus | null = null;
  readonly calls: Array<{ path: string; body: unknown }> = [];
  labels: Record<string, string> = { zone: 'a' };

  get id(): string {
    return this.identity.id;
  }

  static async start(t: TestContext): Promise<FakeHost> {
    const h = new FakeHost();
    h.peer.route('GET', '/peer/instances', async () => ({ instances: h.instances }));
    h.peer.route('GET', '/peer/sessions', async () => ({ sessions: h.sessions }));
    h.peer.route('GET', '/peer/drain', async () => ({ drain: h.drain }));
    h.peer.route('POST', '/peer/migrate', async (body) => {
      h.calls.push({ path: '/peer/migrate', body });
      const { instance, to } = body as { instance: string; to?: string };
      return migrationRecord(`m-${instance}`, { instances: [instance], from: h.id, to: to ?? 'auto' });
    });
    h.peer.route('POST', '/peer/drain', async (body) => {
      h.calls.push({ path: '/peer/drain', body });
      h.drain = { id: 'd1', host: h.id, state: 'running', total: 3, moved: 0, failed: 0, suspended: 0, startedAt: 1 };
      return h.drain;
    });
    h.peer.route('POST', '/peer/suspend', async (body) => {
      h.calls.push({ path: '/peer/suspend', body });
      return { suspended: body };
    });
    await h.peer.listen('127.0.0.1', 0);
    t.after(() => h.peer.close());
    return h;
  }

  record(): Record<string, unknown> {
    return {
      id: this.id,
      publicKey: this.identity.publicKey,
      clientUrl: 'ws://127.0.0.1:7071',
      peerUrl: this.peer.url,
      labels: this.labels,
      capacity: 1000,
      services: [{ name: 'counter', version: '1.0.0', compat: ['counter/1'], requires: { nodeMajor: 20 } }],
      nodeMajor: 20,
      metrics: metrics(),
    };
  }

  /** A registration body, signed by this host's key. */
  registration(record = this.record()): { record: Record<string, unknown>; signature: string } {
    return { record, signature: signWithIdentity(this.identity, utf8.encode(JSON.stringify(record))) };
  }

  register(dirUrl: string): Promise<{ ok: boolean; heartbeatMs: number }> {
    return clusterFetch(dirUrl, '/cluster/register', { secret: SECRET, body: this.registration() });
  }

  heartbeat(dirUrl: string, m: HostMetrics = metrics(), status?: 'up' | 'leaving'): Promise<unknown> {
    return clusterFetch(dirUrl, '/cluster/heartbeat', {
      secret: SECRET,
      body: { host: this.id, metrics: m, ...(status ? { status } : {}) },
    });
  }
}

function metrics(over: Partial<HostMetrics> = {}): HostMetrics {
  return { cpu: 0.1, loopDelayP99Ms: 2, rssBytes: 50e6, instances: 1, sessions: 2, bytesPerS: 100, ...over };
}

function migrationRecord(id: string, over: Partial<MigrationRecord> = {}): MigrationRecord {
  return {
    id,
    instances: ['inst-1'],
    service: 'counter',
    from: 'a',
    to: 'b',
    reason: 'operator',
    outcome: 'committed',
    startedAt: 1000,
    endedAt: 1100,
    sessions: 1,
    stateBytes: 10,
    bytesSent: 20,
    rounds: [{ bytes: 20, keys: 1, ms: 3 }],
    finalDirtyBytes: 0,
    throttleSteps: 0,
    phases: { negotiateMs: 1, precopyMs: 2, freezeMs: 3, commitMs: 4, clientGapMs: 5 },
    epoch: 2,
    ...over,
  };
}

/** Reads a directory's event stream in the background; `next` waits for a matching event. */
class EventTap {
  readonly seen: DirectoryStreamEvent[] = [];
  private readonly ac = new AbortController();
  private waiters: Array<() => void> = [];
  private cursor = 0;
  ended = false;
  error: unknown;
  private readonly done: Promise<void>;

  constructor(url: string, opts: { token?: string; secret?: Uint8Array; types?: string[] } = {}) {
    this.done = (async () => {
      try {
        for await (const e of readEvents(url, { ...opts, signal: this.ac.signal })) {
          this.seen.push(e);
          this.wake();
        }
      } catch (err) {
        this.error = err;
      } finally {
        this.ended = true;
        this.wake();
      }
    })();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** The next event (after those already taken) of `type` that satisfies `pred`. */
  async next<T extends DirectoryStreamEvent['type']>(
    type: T,
    pred: (e: Extract<DirectoryStreamEvent, { type: T }>) => boolean = () => true,
  ): Promise<Extract<DirectoryStreamEvent, { type: T }>> {
    for (;;) {
      while (this.cursor < this.seen.length) {
        const e = this.seen[this.cursor++] as DirectoryStreamEvent;
        if (e.type === type && pred(e as Extract<DirectoryStreamEvent, { type: T }>)) {
          return e as Extract<DirectoryStreamEvent, { type: T }>;
        }
      }
      if (this.ended) throw new Error(`stream ended before a ${type} event: ${String(this.error)}`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  /** Any event so far or to come (ignoring the cursor) of `type` that satisfies `pred`. */
  async any<T extends DirectoryStreamEvent['type']>(
    type: T,
    pred: (e: Extract<DirectoryStreamEvent, { type: T }>) => boolean,
  ): Promise<Extract<DirectoryStreamEvent, { type: T }>> {
    for (let i = 0; ; i++) {
      while (i >= this.seen.length) {
        if (this.ended) throw new Error(`stream ended before a ${type} event: ${String(this.error)}`);
        await new Promise<void>((r) => this.waiters.push(r));
      }
      const e = this.seen[i] as DirectoryStreamEvent;
      if (e.type === type && pred(e as Extract<DirectoryStreamEvent, { type: T }>)) {
        return e as Extract<DirectoryStreamEvent, { type: T }>;
      }
    }
  }

  async close(): Promise<void> {
    this.ac.abort();
    await this.done;
  }
}

async function tap(t: TestContext, url: string, opts: ConstructorParameters<typeof EventTap>[1] = {}) {
  const tp = new EventTap(url, opts);
  t.after(() => tp.close());
  await tp.next('hello');
  return tp;
}

interface RawReply {
  status: number;
  body: { error?: { code: string; message: string } } & Record<string, unknown>;
}

/** One HTTP request with full control over the body and the signature. */
async function raw(
  base: string,
  path: string,
  opts: {
    method?: string;
    body?: string | Uint8Array;
    sign?: Uint8Array | false;
    headers?: Record<string, string>;
  } = {},
): Promise<RawReply> {
  const method = opts.method ?? (opts.body === undefined ? 'GET' : 'POST');
  const bytes = typeof opts.body === 'string' ? utf8.encode(opts.body) : (opts.body ?? new Uint8Array(0));
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.sign !== false) headers[AUTH_HEADER] = signRequest(opts.sign ?? SECRET, method, path, bytes);
  const res = await fetch(new URL(path, base), {
    method,
    headers,
    ...(method === 'GET' ? {} : { body: Buffer.from(bytes) }),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : {} };
}

function assertError(r: RawReply, status: number, code: string, message?: RegExp): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error?.code, code);
  if (message) assert.match(r.body.error?.message ?? '', message);
}

const rejectsWith = (code: string, message?: RegExp) => (err: unknown) => {
  assert.ok(err instanceof RoamError, String(err));
  assert.equal(err.code, code, err.message);
  if (message) assert.match(err.message, message);
  return true;
};

// ---------------------------------------------------------------------------------------------

describe('directory: membership', () => {
  it('registers a host, lists it, and tells it the heartbeat period', async (t) => {
    const env = await setup(t, { heartbeatMs: 250 });
    const h = await FakeHost.start(t);
    const events = await tap(t, env.dir.url);
    const seen = new Promise<ClusterEvent>((r) => env.dir.events.once('host.registered', r));
    assert.deepEqual(await h.register(env.dir.url), { ok: true, heartbeatMs: 250 });
    const ev = await events.next('host.registered');
    assert.equal(ev.host.id, h.id);
    assert.equal(((await seen) as { host: HostRecord }).host.id, h.id);

    const { hosts } = await clusterFetch<{ hosts: HostRecord[] }>(env.dir.url, '/api/hosts');
    assert.equal(hosts.length, 1);
    const rec = hosts[0] as HostRecord;
    assert.equal(rec.id, h.id);
    assert.equal(rec.status, 'up');
    assert.equal(rec.peerUrl, h.peer.url);
    assert.deepEqual(rec.labels, { zone: 'a' });
    assert.deepEqual(rec.services[0]?.compat, ['counter/1']);
    assert.ok(rec.registeredAt > 0 && rec.lastSeenAt >= rec.registeredAt);
    assert.deepEqual(env.dir.hosts(), hosts);

    // In the Store under its key.
    const stored = await env.store.get(ClusterKeys.host(h.id));
    assert.ok(stored);
    assert.equal(decodeJson<HostRecord>(stored.value).id, h.id);

    // A second host: sorted by id.
    const h2 = await FakeHost.start(t);
    await h2.register(env.dir.url);
    const again = await clusterFetch<{ hosts: HostRecord[] }>(env.dir.url, '/api/hosts');
    assert.deepEqual(
      again.hosts.map((x) => x.id),
      [h.id, h2.id].sort(),
    );
  });

  it('refuses a registration whose signature or id does not match the key (401)', async (t) => {
    const env = await setup(t);
    const h = await FakeHost.start(t);
    const other = loadOrCreateIdentity();

    // Signed by another key.
    const record = h.record();
    const forged = { record, signature: signWithIdentity(other, utf8.encode(JSON.stringify(record))) };
    await assert.rejects(
      clusterFetch(env.dir.url, '/cluster/register', { secret: SECRET, body: forged }),
      rejectsWith('UNAUTHORIZED', /signature does not verify/),
    );
    // Signature over different bytes (a field changed after signing).
    const good = h.registration();
    (good.record as { capacity: number }).capacity = 1;
    await assert.rejects(
      clusterFetch(env.dir.url, '/cluster/register', { secret: SECRET, body: good }),
      rejectsWith('UNAUTHORIZED'),
    );
    // Someone else's id with one's own key, properly signed.
    const stolen = h.registration({ ...h.record(), id: other.id });
    await assert.rejects(
      clusterFetch(env.dir.url, '/cluster/register', { secret: SECRET, body: stolen }),
      rejectsWith('UNAUTHORIZED', /fingerprint/),
    );
    // Another's public key and id, signed with one's own key.
    const swapped = h.registration({ ...h.record(), id: other.id, publicKey: other.publicKey });
    await assert.rejects(
      clusterFetch(env.dir.url, '/cluster/register', { secret: SECRET, body: swapped }),
      rejectsWith('UNAUTHORIZED'),
    );
    // Garbage signature.
    await assert.rejects(
      clusterFetch(env.dir.url, '/cluster/register', {
        secret: SECRET,
        body: { record: h.record(), signature: 'AAAA' },
      }),
      rejectsWith('UNAUTHORIZED'),
    );
    assert.deepEqual(env.dir.hosts(), []);
  });

  it('validates every field of a registration with a precise message (400)', async (t) => {
    const env = await setup(t);
    const h = await FakeHost.start(t);
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ clientUrl: 'http://x:1' }, /record\.clientUrl must be a ws:\/\/ or wss:\/\/ or tcp:\/\/ or tls:\/\/ URL/],
      [{ clientUrl: 'tcp://x' }, /record\.clientUrl must have a port/],
      [{ clientUrl: 'not a url' }, /record\.clientUrl must be a URL/],
      [{ clientUrl: 42 }, /record\.clientUrl must be a string, got a number/],
      [{ peerUrl: 'ws://x:1' }, /record\.peerUrl must be a http:\/\/ or https:\/\/ URL/],
      [{ peerUrl: 'http://u:p@x:1' }, /record\.peerUrl must not carry credentials/],
      [{ labels: { a: 1 } }, /record\.labels\.a must be a string, got a number/],
      [{ labels: ['a'] }, /record\.labels must be an object, got an array/],
      [
        { labels: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) },
        /record\.labels must have at most 64 entries/,
      ],
      [{ capacity: -1 }, /record\.capacity must be at least 0/],
      [{ capacity: 1.5 }, /record\.capacity must be an integer/],
      [{ capacity: '10' }, /record\.capacity must be a finite number, got a string/],
      [{ nodeMajor: null }, /record\.nodeMajor must be a finite number, got null/],
      [{ services: {} }, /record\.services must be an array/],
      [{ services: [{ name: '', version: '1' }] }, /record\.services\[0\]\.name must not be empty/],
      [{ services: [{ name: 'x', version: '1', compat: [1] }] }, /record\.services\[0\]\.compat\[0\] must be a string/],
      [
        { services: [{ name: 'x', version: '1', requires: { memoryMb: -5 } }] },
        /record\.services\[0\]\.requires\.memoryMb must be at least 0/,
      ],
      [{ metrics: { cpu: 'high' } }, /record\.metrics\.cpu must be a finite number/],
    ];
    for (const [patch, message] of cases) {
      const body = h.registration({ ...h.record(), ...patch });
      const r = await raw(env.dir.url, '/cluster/register', { body: JSON.stringify(body) });
      assertError(r, 400, 'INVALID_ARGUMENT', message);
    }
    // Structural problems before the signature can be checked.
    assertError(
      await raw(env.dir.url, '/cluster/register', { body: JSON.stringify({ record: h.record() }) }),
      400,
      'INVALID_ARGUMENT',
      /signature must be a string/,
    );
    assertError(
      await raw(env.dir.url, '/cluster/register', { body: JSON.stringify({ record: 'x', signature: 'AAAA' }) }),
      400,
      'INVALID_ARGUMENT',
      /record must be an object/,
    );
    assertError(
      await raw(env.dir.url, '/cluster/register', {
        body: JSON.stringify(h.registration({ ...h.record(), id: 'XYZ' })),
      }),
      400,
      'INVALID_ARGUMENT',
      /record\.id must be a host id/,
    );
    assert.deepEqual(env.dir.hosts(), []);
  });

  it('heartbeats update metrics; an unknown host is told to register (404)', async (t) => {
    const env = await setup(t, { persistEveryMs: 60_000 });
    const h = await FakeHost.start(t);
    await h.register(env.dir.url);
    const before = env.dir.hosts()[0] as HostRecord;
    await h.heartbeat(env.dir.url, metrics({ cpu: 0.75, sessions: 42 }));
    const after = env.dir.hosts()[0] as HostRecord;
    assert.equal(after.metrics.cpu, 0.75);
    assert.equal(after.metrics.sessions, 42);
    assert.ok(after.lastSeenAt >= before.lastSeenAt);
    // Not written to the Store on every beat...
    const stored = decodeJson<HostRecord>((await env.store.get(ClusterKeys.host(h.id)))?.value as Uint8Array);
    assert.equal(stored.metrics.cpu, 0.1);
    // ...but at once when the status changes.
    const events = await tap(t, env.dir.url);
    await h.heartbeat(env.dir.url, metrics({ cpu: 0.5 }), 'leaving');
    const changed = decodeJson<HostRecord>((await env.store.get(ClusterKeys.host(h.id)))?.value as Uint8Array);
    assert.equal(changed.status, 'leaving');
    assert.equal(changed.metrics.cpu, 0.5);
    assert.equal((await events.next('host.registered')).host.status, 'leaving');

    const stranger = await FakeHost.start(t);
    await assert.rejects(stranger.heartbeat(env.dir.url), rejectsWith('NOT_FOUND', /register again/));
    assertError(
      await raw(env.dir.url, '/cluster/heartbeat', { body: JSON.stringify({ host: h.id, metrics: { cpu: -1 } }) }),
      400,
      'INVALID_ARGUMENT',
      /metrics\.cpu must be at least 0/,
    );
    assertError(
      await raw(env.dir.url, '/cluster/heartbeat', {
        body: JSON.stringify({ host: h.id, metrics: metrics(), status: 'gone' }),
      }),
      400,
      'INVALID_ARGUMENT',
      /status must be one of 'up', 'leaving', 'suspect'/,
    );
  });

  it('a silent host becomes suspect, then is purged; a suspect host heard again is up', async (t) => {
    const env = await setup(t, { heartbeatMs: 20, suspectAfterMs: 60, purgeAfterMs: 500 });
    const events = await tap(t, env.dir.url);
    const a = await FakeHost.start(t);
    const b = await FakeHost.start(t);
    await a.register(env.dir.url);
    await b.register(env.dir.url);

    // b goes silent; a answers as soon as it is suspected, which brings it back.
    const back = new Promise<void>((resolve) => {
      const on = (e: { host: string }) => {
        if (e.host !== a.id) return;
        env.dir.events.off('host.suspect', on);
        a.heartbeat(env.dir.url).then(() => resolve(), resolve);
      };
      env.dir.events.on('host.suspect', on);
    });
    await events.next('host.suspect', (e) => e.host === b.id);
    assert.equal(env.dir.hosts().find((h) => h.id === b.id)?.status, 'suspect');
    const stored = decodeJson<HostRecord>((await env.store.get(ClusterKeys.host(b.id)))?.value as Uint8Array);
    assert.equal(stored.status, 'suspect');

    const left = await events.next('host.left', (e) => e.host === b.id);
    assert.equal(left.reason, 'purged');
    assert.equal(await env.store.get(ClusterKeys.host(b.id)), undefined);
    assert.equal(
      env.dir.hosts().find((h) => h.id === b.id),
      undefined,
    );
    // Purged: its heartbeat is refused, and it may register again.
    await assert.rejects(b.heartbeat(env.dir.url), rejectsWith('NOT_FOUND'));
    await b.register(env.dir.url);
    assert.ok(env.dir.hosts().some((h) => h.id === b.id));

    await back;
    // Announced up again: a second host.registered for a, after its host.suspect.
    const suspectAt = events.seen.findIndex((e) => e.type === 'host.suspect' && e.host === a.id);
    assert.ok(suspectAt > 0);
    const upAgain = await events.any(
      'host.registered',
      (e) => e.host.id === a.id && events.seen.indexOf(e) > suspectAt,
    );
    assert.equal(upAgain.host.status, 'up');
  });

  it('a host that leaves is removed at once', async (t) => {
    const env = await setup(t);
    const h = await FakeHost.start(t);
    const events = await tap(t, env.dir.url);
    await h.register(env.dir.url);
    assert.deepEqual(await clusterFetch(env.dir.url, '/cluster/leave', { secret: SECRET, body: { host: h.id } }), {
      ok: true,
    });
    const ev = await events.next('host.left');
    assert.deepEqual(ev, { type: 'host.left', host: h.id, reason: 'leave' });
    assert.deepEqual(env.dir.hosts(), []);
    assert.equal(await env.store.get(ClusterKeys.host(h.id)), undefined);
    await assert.rejects(
      clusterFetch(env.dir.url, '/cluster/leave', { secret: SECRET, body: { host: h.id } }),
      rejectsWith('NOT_FOUND'),
    );
  });

  it('a restarted directory keeps hosts and migration history and does not purge live hosts at once', async (t) => {
    const clock1 = new ManualClock();
    clock1.advance(1_000_000);
    const env = await setup(t, { clock: clock1, heartbeatMs: 100, suspectAfterMs: 300, purgeAfterMs: 1000 });
    const h = await FakeHost.start(t);
    await h.register(env.dir.url);
    // The host starts a drain through the directory.
    const started = await clusterFetch<DrainStatus>(env.dir.url, '/api/drain', { body: { host: h.id } });
    assert.equal(started.state, 'running');
    await clusterFetch(env.dir.url, '/cluster/events', {
      secret: SECRET,
      body: { events: [{ type: 'migration', migration: migrationRecord('m1', { reason: 'drain' }) }] },
    });

    // The directory restarts an hour later (by its clock): the stored lastSeenAt is an hour old.
    const clock2 = new ManualClock();
    clock2.advance(1_000_000 + 3_600_000);
    const dir = await env.restart({ clock: clock2 });
    const hosts = dir.hosts();
    assert.deepEqual(
      hosts.map((x) => [x.id, x.status]),
      [[h.id, 'up']],
    );
    assert.equal(hosts[0]?.lastSeenAt, clock2.now());
    // Health checks run: the host is within its grace period, not purged.
    clock2.advance(250);
    assert.equal(dir.hosts()[0]?.status, 'up');
    await h.heartbeat(dir.url);
    const { migrations } = await clusterFetch<{ migrations: MigrationRecord[] }>(dir.url, '/api/migrations');
    assert.deepEqual(
      migrations.map((m) => m.id),
      ['m1'],
    );
    assert.deepEqual(migrations[0], migrationRecord('m1', { reason: 'drain' }));
    // The drain goes on at the host and is visible through the new directory.
    const { drains } = await clusterFetch<{ drains: DrainStatus[] }>(dir.url, '/api/drains');
    assert.deepEqual(
      drains.map((d) => [d.id, d.state]),
      [['d1', 'running']],
    );

    // Silence after the restart still ends in a purge.
    const purged: string[] = [];
    dir.events.on('host.left', (e) => purged.push(e.host));
    clock2.advance(400);
    assert.equal(dir.hosts()[0]?.status, 'suspect');
    clock2.advance(1000);
    assert.deepEqual(purged, [h.id]);
    assert.deepEqual(dir.hosts(), []);
  });
});

describe('directory: public API', () => {
  it('merges instances and sessions from every host and lists the hosts that did not answer', async (t) => {
    const env = await setup(t, { fanOutTimeoutMs: 300 });
    const a = await FakeHost.start(t);
    const b = await FakeHost.start(t);
    const dead = await FakeHost.start(t);
    const hung = await FakeHost.start(t);
    a.instances = [{ instance: 'i1', service: 'counter', key: 'k1', sessions: 2, stateBytes: 10, epoch: 1 }];
    b.instances = [
      { instance: 'i2', service: 'counter', key: null, sessions: 1, stateBytes: 5, epoch: 3 },
      { instance: 'i3', service: 'chat', key: 'room', sessions: 0, stateBytes: 0, epoch: 1 },
    ];
    a.sessions = [{ session: 's1', service: 'counter', instance: 'i1', state: 'attached', remote: '1.2.3.4' }];
    b.sessions = [{ session: 's2', service: 'counter', instance: 'i2', state: 'detached', remote: '5.6.7.8' }];
    hung.peer.route('GET', '/peer/instances', () => new Promise(() => {}));
    for (const h of [a, b, dead, hung]) await h.register(env.dir.url);
    await dead.peer.close();

    const inst = await clusterFetch<{ instances: Array<HostedInstance & { host: string }>; unreachable: string[] }>(
      env.dir.url,
      '/api/instances',
    );
    assert.deepEqual(
      inst.instances.map((i) => [i.host, i.instance]).sort(),
      [
        [a.id, 'i1'],
        [b.id, 'i2'],
        [b.id, 'i3'],
      ].sort(),
    );
    assert.deepEqual(
      inst.instances.find((i) => i.instance === 'i2'),
      { ...b.instances[0], host: b.id },
    );
    assert.deepEqual(inst.unreachable.sort(), [dead.id, hung.id].sort());

    const ses = await clusterFetch<{ sessions: Array<{ session: string; host: string }>; unreachable: string[] }>(
      env.dir.url,
      '/api/sessions',
    );
    assert.deepEqual(
      ses.sessions.map((s) => [s.host, s.session]).sort(),
      [
        [a.id, 's1'],
        [b.id, 's2'],
      ].sort(),
    );
    assert.deepEqual(ses.unreachable, [dead.id]);
    const one = await clusterFetch<{ sessions: Array<{ session: string; host: string }> }>(
      env.dir.url,
      '/api/sessions?id=s2',
    );
    assert.deepEqual(one.sessions, [{ ...b.sessions[0], host: b.id }]);
  });

  it('forwards migrate, suspend and drain to the owner host', async (t) => {
    const env = await setup(t);
    const a = await FakeHost.start(t);
    const b = await FakeHost.start(t);
    a.instances = [{ instance: 'i1', service: 'counter', key: null, sessions: 1, stateBytes: 1, epoch: 1 }];
    b.instances = [{ instance: 'i2', service: 'counter', key: null, sessions: 1, stateBytes: 1, epoch: 1 }];
    await a.register(env.dir.url);
    await b.register(env.dir.url);

    const m = await clusterFetch<MigrationRecord>(env.dir.url, '/api/migrate', { body: { instance: 'i2', to: a.id } });
    assert.equal(m.id, 'm-i2');
    assert.equal(m.from, b.id);
    assert.deepEqual(b.calls, [{ path: '/peer/migrate', body: { instance: 'i2', to: a.id } }]);
    assert.deepEqual(a.calls, []);
    // Without a destination the owner picks one.
    await clusterFetch(env.dir.url, '/api/migrate', { body: { instance: 'i1' } });
    assert.deepEqual(a.calls, [{ path: '/peer/migrate', body: { instance: 'i1' } }]);
    // Placement labels go along.
    await clusterFetch(env.dir.url, '/api/migrate', { body: { instance: 'i1', labels: { zone: 'b' } } });
    assert.deepEqual(a.calls.at(-1), { path: '/peer/migrate', body: { instance: 'i1', labels: { zone: 'b' } } });

    // The location table is asked first: an instance no host lists, but the Store places on b.
    await env.store.put(
      ClusterKeys.location('i9'),
      encodeJson({ instance: 'i9', service: 'counter', host: b.id, epoch: 4 }),
    );
    await clusterFetch(env.dir.url, '/api/migrate', { body: { instance: 'i9' } });
    assert.deepEqual(b.calls.at(-1), { path: '/peer/migrate', body: { instance: 'i9' } });

    await assert.rejects(
      clusterFetch(env.dir.url, '/api/migrate', { body: { instance: 'nope' } }),
      rejectsWith('NOT_FOUND', /no host holds instance nope/),
    );
    const ghost = loadOrCreateIdentity().id;
    await assert.rejects(
      clusterFetch(env.dir.url, '/api/migrate', { body: { instance: 'i1', to: ghost } }),
      rejectsWith('NOT_FOUND', new RegExp(`no host ${ghost}`)),
    );
    await assert.rejects(
      clusterFetch(env.dir.url, '/api/migrate', { body: { instance: 5 } }),
      rejectsWith('INVALID_ARGUMENT', /instance must be a string/),
    );

    assert.deepEqual(await clusterFetch(env.dir.url, '/api/suspend', { body: { instance: 'i1' } }), {
      suspended: { instance: 'i1' },
    });
    assert.deepEqual(a.calls.at(-1), { path: '/peer/suspend', body: { instance: 'i1' } });

    const d = await clusterFetch<DrainStatus>(env.dir.url, '/api/drain', {
      body: { host: b.id, deadlineMs: 5000, concurrency: 2 },
    });
    assert.equal(d.host, b.id);
    assert.deepEqual(b.calls.at(-1), { path: '/peer/drain', body: { deadlineMs: 5000, concurrency: 2 } });
    const { drains } = await clusterFetch<{ drains: DrainStatus[] }>(env.dir.url, '/api/drains');
    assert.deepEqual(drains, [d]);
    await assert.rejects(clusterFetch(env.dir.url, '/api/drain', { body: { host: ghost } }), rejectsWith('NOT_FOUND'));
    await assert.rejects(
      clusterFetch(env.dir.url, '/api/drain', { body: { host: b.id, concurrency: 0 } }),
      rejectsWith('INVALID_ARGUMENT', /concurrency must be at least 1/),
    );
  });

  it('keeps the latest 1000 migrations, newest first, in memory and in the Store', async (t) => {
    const env = await setup(t);
    const events = await tap(t, env.dir.url, { types: ['migration'] });
    const batch = (from: number, n: number) =>
      Array.from({ length: n }, (_, i) => ({
        type: 'migration',
        migration: migrationRecord(`m${from + i}`, { endedAt: from + i }),
      }));
    await clusterFetch(env.dir.url, '/cluster/events', { secret: SECRET, body: { events: batch(0, 1000) } });
    await clusterFetch(env.dir.url, '/cluster/events', {
      secret: SECRET,
      body: {
        events: [
          ...batch(1000, 5),
          { type: 'decision', at: 1, action: 'migrate', reason: 'cpu', instance: 'i1' },
          { type: 'migration.progress', id: 'm1004', instances: ['i1'], phase: 'precopy', round: 2, etaMs: 30 },
        ],
      },
    });
    const stored = await env.store.list(ClusterKeys.migrationPrefix);
    assert.equal(stored.length, 1000);
    const ids = new Set(stored.map((e) => e.key.slice(ClusterKeys.migrationPrefix.length)));
    for (let i = 0; i < 5; i++) assert.ok(!ids.has(`m${i}`), `m${i} pruned`);
    assert.ok(ids.has('m1004') && ids.has('m5'));

    const newest = await clusterFetch<{ migrations: MigrationRecord[] }>(env.dir.url, '/api/migrations?limit=3');
    assert.deepEqual(
      newest.migrations.map((m) => m.id),
      ['m1004', 'm1003', 'm1002'],
    );
    const dflt = await clusterFetch<{ migrations: MigrationRecord[] }>(env.dir.url, '/api/migrations');
    assert.equal(dflt.migrations.length, 100);
    const all = await clusterFetch<{ migrations: MigrationRecord[] }>(env.dir.url, '/api/migrations?limit=1000');
    assert.equal(all.migrations.length, 1000);
    assert.equal(all.migrations.at(-1)?.id, 'm5');
    for (const bad of ['0', '1001', 'x', '1.5']) {
      await assert.rejects(
        clusterFetch(env.dir.url, `/api/migrations?limit=${bad}`),
        rejectsWith('INVALID_ARGUMENT', /limit/),
      );
    }
    // The stream filtered to migrations saw all 1005 and nothing else.
    const last = await events.next('migration', (e) => e.migration.id === 'm1004');
    assert.equal(last.migration.endedAt, 1004);
    assert.ok(events.seen.every((e) => e.type === 'hello' || e.type === 'migration'));
    assert.equal(events.seen.length, 1 + 1005);

    // More than 1000 events in one call, host.* events, bad records: refused whole.
    const r = await raw(env.dir.url, '/cluster/events', { body: JSON.stringify({ events: batch(2000, 1001) }) });
    assertError(r, 400, 'INVALID_ARGUMENT', /events must have at most 1000 items/);
    assertError(
      await raw(env.dir.url, '/cluster/events', {
        body: JSON.stringify({ events: [{ type: 'host.left', host: 'x', reason: 'leave' }] }),
      }),
      400,
      'INVALID_ARGUMENT',
      /events\[0\]\.type must be one of/,
    );
    assertError(
      await raw(env.dir.url, '/cluster/events', {
        body: JSON.stringify({ events: [{ type: 'migration', migration: { ...migrationRecord('x.y') } }] }),
      }),
      400,
      'INVALID_ARGUMENT',
      /events\[0\]\.migration\.id must be 1\.\.128 characters/,
    );
    assert.equal((await env.store.list(ClusterKeys.migrationPrefix)).length, 1000);
  });

  it('requires the operator token or a cluster signature when a token is set', async (t) => {
    const env = await setup(t, { token: 'op-secret-token' });
    const url = env.dir.url;
    assertError(await raw(url, '/api/hosts', { sign: false }), 401, 'UNAUTHORIZED', /missing bearer token/);
    assertError(
      await raw(url, '/api/hosts', { sign: false, headers: { authorization: 'Bearer wrong' } }),
      401,
      'UNAUTHORIZED',
      /wrong bearer token/,
    );
    assert.equal((await raw(url, '/api/hosts', { sign: false, headers: { authorization: 'Basic eA==' } })).status, 401);
    assert.deepEqual(await clusterFetch(url, '/api/hosts', { token: 'op-secret-token' }), { hosts: [] });
    assert.deepEqual(await clusterFetch(url, '/api/hosts', { secret: SECRET }), { hosts: [] });
    assertError(await raw(url, '/api/hosts', { sign: OTHER_SECRET }), 401, 'UNAUTHORIZED');
    // The stream too.
    await assert.rejects(async () => {
      for await (const _ of readEvents(url)) break;
    }, rejectsWith('UNAUTHORIZED'));
    const tp = await tap(t, url, { token: 'op-secret-token' });
    assert.deepEqual(tp.seen[0], { type: 'hello', hosts: [] });
    const tp2 = await tap(t, url, { secret: SECRET });
    assert.equal(tp2.seen[0]?.type, 'hello');
    // The token does not open the cluster endpoints.
    const h = await FakeHost.start(t);
    assertError(
      await raw(url, '/cluster/register', {
        sign: false,
        headers: { authorization: 'Bearer op-secret-token' },
        body: JSON.stringify(h.registration()),
      }),
      401,
      'UNAUTHORIZED',
      /missing cluster signature/,
    );
  });

  it('without a token the API is open, and / points at it', async (t) => {
    const env = await setup(t);
    assert.deepEqual((await raw(env.dir.url, '/api/hosts', { sign: false })).body, { hosts: [] });
    const res = await fetch(env.dir.url);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /\/api\/hosts/);
  });
});

describe('directory: event stream', () => {
  it('sends hello with the host table first, then only the requested types', async (t) => {
    const env = await setup(t);
    const h = await FakeHost.start(t);
    await h.register(env.dir.url);
    const filtered = await tap(t, env.dir.url, { types: ['host.left', 'drain'] });
    const hello = filtered.seen[0] as Extract<DirectoryStreamEvent, { type: 'hello' }>;
    assert.deepEqual(
      hello.hosts.map((x) => x.id),
      [h.id],
    );
    const h2 = await FakeHost.start(t);
    await h2.register(env.dir.url);
    const drain: DrainStatus = {
      id: 'd',
      host: h.id,
      state: 'done',
      total: 1,
      moved: 1,
      failed: 0,
      suspended: 0,
      startedAt: 1,
      endedAt: 2,
    };
    await clusterFetch(env.dir.url, '/cluster/events', {
      secret: SECRET,
      body: { events: [{ type: 'drain', drain }] },
    });
    await clusterFetch(env.dir.url, '/cluster/leave', { secret: SECRET, body: { host: h2.id } });
    assert.deepEqual(await filtered.next('drain'), { type: 'drain', drain });
    assert.equal((await filtered.next('host.left')).host, h2.id);
    assert.deepEqual(
      filtered.seen.map((e) => e.type),
      ['hello', 'drain', 'host.left'],
    );

    await assert.rejects(
      async () => {
        for await (const _ of readEvents(env.dir.url, { types: ['host.left', 'bogus'] })) break;
      },
      rejectsWith('INVALID_ARGUMENT', /unknown event type "bogus"/),
    );
  });

  it('sends keepalive comments and ends the stream when the directory closes', async (t) => {
    const env = await setup(t, { keepaliveMs: 20 });
    const res = await fetch(new URL('/api/events', env.dir.url));
    assert.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8');
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = '';
    while (!text.includes(': keepalive')) {
      const { value, done } = await reader.read();
      assert.ok(!done);
      text += new TextDecoder().decode(value);
    }
    assert.match(text, /^event: hello\ndata: \{"hosts":\[\]\}\n\n/);
    await env.dir.close();
    for (;;) {
      const { done } = await reader.read();
      if (done) break;
    }
  });

  it('drops a reader that does not keep up', async (t) => {
    const warnings: string[] = [];
    const logger: DirectoryLogger = {
      debug: () => {},
      info: () => {},
      error: () => {},
      warn: (_o, msg) => warnings.push(msg ?? ''),
      child: () => logger,
    };
    const env = await setup(t, { logger, maxStreamBufferBytes: 64 << 10 });
    // A reader that never reads.
    const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
      const req = httpRequest(new URL('/api/events', env.dir.url), resolve);
      req.on('error', reject);
      req.end();
    });
    res.pause();
    const ended = new Promise<void>((resolve) => res.once('close', () => resolve()));
    res.on('error', () => {});
    const big = 'x'.repeat(900);
    const events = Array.from({ length: 1000 }, (_, i) => ({ type: 'decision', at: i, action: 'a', reason: big }));
    for (let i = 0; i < 200 && !warnings.some((w) => /too slow/.test(w)); i++) {
      await clusterFetch(env.dir.url, '/cluster/events', { secret: SECRET, body: { events } });
    }
    assert.ok(
      warnings.some((w) => /too slow/.test(w)),
      warnings.join('; '),
    );
    // Reading on, the reader finds its stream cut.
    res.resume();
    await ended;
    // Others are unaffected.
    const tp = await tap(t, env.dir.url);
    await clusterFetch(env.dir.url, '/cluster/events', {
      secret: SECRET,
      body: { events: [{ type: 'decision', at: 1, action: 'b', reason: 'r' }] },
    });
    assert.equal((await tp.next('decision')).action, 'b');
  });
});

describe('directory: hostile input', () => {
  let env: Env;
  let host: FakeHost;
  let closeAll: Array<() => Promise<void>> = [];
  before(async () => {
    const fake = { after: (fn: () => Promise<void>) => closeAll.push(fn) } as unknown as TestContext;
    env = await setup(fake);
    host = await FakeHost.start(fake);
    await host.register(env.dir.url);
  });
  after(async () => {
    for (const fn of closeAll.reverse()) await fn();
    closeAll = [];
  });

  const clusterPaths = ['/cluster/register', '/cluster/heartbeat', '/cluster/leave', '/cluster/events'];
  const apiPosts = ['/api/migrate', '/api/drain', '/api/suspend'];

  it('refuses missing, malformed, expired, replayed and forged signatures (401)', async () => {
    const url = env.dir.url;
    for (const p of clusterPaths) {
      const body = JSON.stringify({ host: host.id, metrics: metrics() });
      assertError(await raw(url, p, { body, sign: false }), 401, 'UNAUTHORIZED', /missing cluster signature/);
      assertError(await raw(url, p, { body, sign: OTHER_SECRET }), 401, 'UNAUTHORIZED', /not signed/);
      assertError(
        await raw(url, p, { body, sign: false, headers: { [AUTH_HEADER]: 'garbage' } }),
        401,
        'UNAUTHORIZED',
        /malformed/,
      );
      const old = signRequest(SECRET, 'POST', p, utf8.encode(body), Date.now() - 60_000);
      assertError(
        await raw(url, p, { body, sign: false, headers: { [AUTH_HEADER]: old } }),
        401,
        'UNAUTHORIZED',
        /expired/,
      );
      // Signed for another path, another method, another body.
      const elsewhere = signRequest(SECRET, 'POST', '/cluster/other', utf8.encode(body));
      assertError(await raw(url, p, { body, sign: false, headers: { [AUTH_HEADER]: elsewhere } }), 401, 'UNAUTHORIZED');
      const otherBody = signRequest(SECRET, 'POST', p, utf8.encode(`${body} `));
      assertError(await raw(url, p, { body, sign: false, headers: { [AUTH_HEADER]: otherBody } }), 401, 'UNAUTHORIZED');
    }
    // A captured heartbeat cannot be replayed.
    const body = JSON.stringify({ host: host.id, metrics: metrics() });
    const header = signRequest(SECRET, 'POST', '/cluster/heartbeat', utf8.encode(body));
    const first = await raw(url, '/cluster/heartbeat', { body, sign: false, headers: { [AUTH_HEADER]: header } });
    assert.equal(first.status, 200);
    assertError(
      await raw(url, '/cluster/heartbeat', { body, sign: false, headers: { [AUTH_HEADER]: header } }),
      401,
      'UNAUTHORIZED',
      /replayed/,
    );
    // The query string is signed too.
    const q = signRequest(SECRET, 'GET', '/api/sessions?id=a', new Uint8Array(0));
    assert.equal(
      (await raw(url, '/api/sessions?id=b', { sign: false, headers: { [AUTH_HEADER]: q } })).status,
      200,
      'no token: the API is open and a bad signature is not even looked at',
    );
  });

  it('answers malformed JSON and wrong types with INVALID_ARGUMENT (400)', async () => {
    for (const p of [...clusterPaths, ...apiPosts]) {
      for (const body of ['{', 'nul', '"\\u12"', '{"a":1}}', '\u0000']) {
        assertError(await raw(env.dir.url, p, { body }), 400, 'INVALID_ARGUMENT', /not JSON/);
      }
      for (const body of ['null', '[]', '"x"', '12', 'true']) {
        assertError(await raw(env.dir.url, p, { body }), 400, 'INVALID_ARGUMENT', /body must be an object/);
      }
      assertError(await raw(env.dir.url, p, { method: 'POST' }), 400, 'INVALID_ARGUMENT', /got nothing/);
    }
  });

  it('refuses bodies over 1 MiB (413), declared or streamed', async () => {
    const big = new Uint8Array((1 << 20) + 1).fill(0x20);
    for (const p of [...clusterPaths, ...apiPosts]) {
      assertError(await raw(env.dir.url, p, { body: big }), 413, 'PAYLOAD_TOO_LARGE');
    }
    // Chunked, without a content-length: cut off while reading.
    const reply = await new Promise<RawReply>((resolve, reject) => {
      const req = httpRequest(
        new URL('/cluster/events', env.dir.url),
        { method: 'POST', headers: { 'transfer-encoding': 'chunked', [AUTH_HEADER]: 'x' } },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => {
            text += c.toString();
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
        },
      );
      req.on('error', reject);
      const chunk = Buffer.alloc(64 << 10, 0x20);
      let sent = 0;
      const pump = (): void => {
        while (sent < 4 << 20) {
          sent += chunk.length;
          if (!req.write(chunk)) {
            req.once('drain', pump);
            return;
          }
        }
        req.end();
      };
      req.on('error', () => {});
      pump();
    });
    assertError(reply, 413, 'PAYLOAD_TOO_LARGE');
    // Exactly at the limit is read (and then judged on its content).
    const atLimit = new Uint8Array(1 << 20).fill(0x20);
    atLimit[0] = 0x7b; // '{'
    atLimit[atLimit.length - 1] = 0x7d; // '}'
    assertError(await raw(env.dir.url, '/cluster/leave', { body: atLimit }), 400, 'INVALID_ARGUMENT', /host/);
  });

  it('answers unknown routes and methods with NOT_FOUND (404)', async () => {
    for (const [method, p] of [
      ['GET', '/nope'],
      ['GET', '/cluster/nope'],
      ['GET', '/cluster/register'],
      ['POST', '/api/hosts'],
      ['GET', '/api/nope'],
      ['DELETE', '/api/hosts'],
      ['GET', '/favicon.ico'],
      ['POST', '/'],
    ] as const) {
      assertError(await raw(env.dir.url, p, { method }), 404, 'NOT_FOUND', /no route/);
    }
    // An unsigned request to an unknown cluster path learns nothing beyond 401.
    assertError(await raw(env.dir.url, '/cluster/nope', { sign: false }), 401, 'UNAUTHORIZED');
  });

  it('random registration bodies never break it: always a 4xx with a known code', async () => {
    const codes = new Set(Object.keys(CODES));
    const check = async (body: string, allowOk = false) => {
      const r = await raw(env.dir.url, '/cluster/register', { body });
      if (allowOk && r.status === 200) return;
      assert.ok(r.status >= 400 && r.status < 500, `${r.status} for ${body.slice(0, 200)}`);
      assert.ok(codes.has(r.body.error?.code ?? ''), JSON.stringify(r.body));
      assert.ok(['INVALID_ARGUMENT', 'UNAUTHORIZED'].includes(r.body.error?.code ?? ''), JSON.stringify(r.body));
    };
    // Anything at all.
    await fc.assert(
      fc.asyncProperty(fc.jsonValue(), (v) => check(JSON.stringify(v))),
      { numRuns: 150 },
    );
    // Registration-shaped, with random field values.
    await fc.assert(
      fc.asyncProperty(
        fc.record({ record: fc.dictionary(fc.constantFrom(...Object.keys(host.record())), fc.jsonValue()) }),
        fc.string(),
        (b, signature) => check(JSON.stringify({ ...b, signature })),
      ),
      { numRuns: 150 },
    );
    // A real, properly signed registration with one field replaced: accepted or refused with 400.
    const fields = Object.keys(host.record());
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...fields), fc.jsonValue(), async (field, value) => {
        const body = host.registration({ ...host.record(), [field]: value });
        await check(JSON.stringify(body), true);
      }),
      { numRuns: 200 },
    );
    // Still registered and healthy.
    assert.ok(env.dir.hosts().some((h) => h.id === host.id));
  });

  it('random bodies to the other entry points get a 4xx with a known code', async () => {
    for (const p of ['/cluster/heartbeat', '/cluster/leave', '/cluster/events', ...apiPosts]) {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(
            fc.jsonValue(),
            fc.dictionary(fc.constantFrom('host', 'metrics', 'status', 'events', 'instance', 'to'), fc.jsonValue()),
          ),
          async (v) => {
            const r = await raw(env.dir.url, p, { body: JSON.stringify(v) });
            const emptyBatch = p === '/cluster/events' && Array.isArray((v as { events?: unknown } | null)?.events);
            if (emptyBatch && (v as { events: unknown[] }).events.length === 0) return;
            assert.ok(r.status >= 400 && r.status < 500, `${p}: ${r.status} ${JSON.stringify(r.body)}`);
            assert.ok(['INVALID_ARGUMENT', 'NOT_FOUND'].includes(r.body.error?.code ?? ''), JSON.stringify(r.body));
          },
        ),
        { numRuns: 60 },
      );
    }
    assert.ok(env.dir.hosts().some((h) => h.id === host.id));
  });
});
