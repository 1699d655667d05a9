import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { describe, it, type TestContext } from 'node:test';
import { type Connector, connect, type Session } from '../src/client/node.js';
import { Gateway, type GatewayHost } from '../src/gateway/index.js';
import {
  builtinServices,
  echoService,
  ServerSession,
  type SessionHandler,
  SessionServer,
  silentLogger,
} from '../src/host/index.js';
import { spliceLink } from '../src/host/splice.js';
import { FramedConnection, newNonce, SessionEngine, type SessionEvent, systemClock } from '../src/session/index.js';
import { type HostRecord, RequestVerifier, signRequest } from '../src/transport/cluster.js';
import { connectTransport } from '../src/transport/index.js';
import { openPeerLink, PeerServer } from '../src/transport/peer.js';
import { encodeFrame, type Frame, FrameType, RoamError } from '../src/wire/index.js';
import { NODE_ARGS, ROAM, roam } from './support/cli.js';
import { within } from './support/deadline.js';
import { LinkEmulator } from './support/link-emulator.js';
import { nextEvent } from './support/server.js';

const SECRET = new Uint8Array(randomBytes(32));
const enc = new TextEncoder();
const dec = new TextDecoder();
const quiet = { warn: () => {} };
const print = (o: object, m?: string): void => console.log(m, JSON.stringify(o));
/** ROAM_TEST_LOG=1 prints the gateway's log (re-splice timings, dropped frames). */
const consoleLogger = { debug: () => {}, info: print, warn: print, error: print };

/** Server-side record of what a session received, shared by its copies on every host (the migrated state). */
interface StreamState {
  got: number[];
  bad: string | undefined;
}
const states = new Map<string, StreamState>();

/** `stream`: records the client's numbered messages (checking order) and echoes each one. */
const streamService: SessionHandler = {
  open(s: ServerSession) {
    let st = states.get(s.id);
    if (!st) {
      st = { got: [], bad: undefined };
      states.set(s.id, st);
    }
    const state = st;
    s.on('message', (d) => {
      const v = Number(dec.decode(d));
      if (v !== state.got.length + 1) state.bad ??= `host expected ${state.got.length + 1}, got ${v}`;
      state.got.push(v);
      s.send(d);
    });
  },
};

interface TestHost {
  id: string;
  server: SessionServer;
  peer: PeerServer;
  ws: string;
  tcp: string;
  peerUrl: string;
  record(clientScheme?: 'ws' | 'tcp'): GatewayHost;
}

/** A SessionServer (echo, counter, stream) with a PeerServer that mounts the splice handler. */
async function startHost(
  t: TestContext,
  id: string,
  services: Record<string, SessionHandler> = {},
  extra: Partial<ConstructorParameters<typeof SessionServer>[0]> = {},
): Promise<TestHost> {
  const server = new SessionServer({
    logger: silentLogger(),
    services: { ...builtinServices(), stream: streamService, ...services },
    ...extra,
  });
  const ws = (await server.listen('ws://127.0.0.1:0')).url;
  const tcp = (await server.listen('tcp://127.0.0.1:0')).url;
  const peer = new PeerServer(SECRET, quiet);
  peer.link('/peer/splice', spliceLink(server));
  const peerUrl = await peer.listen('127.0.0.1', 0);
  t.after(async () => {
    await within(`host ${id}: peer server close`, 10_000, peer.close());
    await within(`host ${id}: server close`, 10_000, server.close());
  });
  return {
    id,
    server,
    peer,
    ws,
    tcp,
    peerUrl,
    record: (scheme = 'ws') => ({ id, clientUrl: scheme === 'ws' ? ws : tcp, peerUrl }),
  };
}

/** Hosts a and b whose echo service runs `admit(self, other)` before each WELCOME. */
async function hostsWithAdmit(
  t: TestContext,
  admit: (self: () => TestHost, other: () => TestHost) => NonNullable<SessionHandler['admit']>,
): Promise<{ a: TestHost; b: TestHost }> {
  const echoWith = (self: () => TestHost, other: () => TestHost): Record<string, SessionHandler> => ({
    echo: { open: (session) => echoService.open(session), admit: admit(self, other) },
  });
  const a: TestHost = await startHost(
    t,
    'a',
    echoWith(
      () => a,
      () => b,
    ),
  );
  const b: TestHost = await startHost(
    t,
    'b',
    echoWith(
      () => b,
      () => a,
    ),
  );
  return { a, b };
}

async function startGateway(t: TestContext, opts: Partial<Parameters<typeof Gateway.start>[0]>): Promise<Gateway> {
  const gw = await Gateway.start({
    listen: ['ws://127.0.0.1:0', 'tcp://127.0.0.1:0'],
    secret: SECRET,
    ...(process.env.ROAM_TEST_LOG ? { logger: consoleLogger } : {}),
    ...opts,
  });
  t.after(() => within('gateway close', 10_000, gw.close()));
  return gw;
}

/** The gateway URL of `scheme`. */
function urlOf(gw: Gateway, scheme: 'ws' | 'tcp'): string {
  const u = gw.urls.find((x) => x.startsWith(`${scheme}:`));
  assert.ok(u);
  return u;
}

/** A Node connector that counts the transports it opened. */
function countingConnector(): Connector & { opened: number } {
  const c = Object.assign(
    async (url: string, o: { localAddress?: string | undefined }) => {
      c.opened++;
      return connectTransport(url, { localAddress: o.localAddress });
    },
    { opened: 0 },
  );
  return c;
}

function open(url: string, service: string, extra: Partial<Parameters<typeof connect>[1]> = {}): Session {
  return connect(url, { service, reconnect: { initialDelayMs: 10, maxDelayMs: 100 }, ...extra });
}

async function echo(s: Session, text: string): Promise<void> {
  const got = new Promise<string>((r) => s.once('message', (d) => r(dec.decode(d))));
  s.send(text);
  assert.equal(await got, text);
}

/** Which host holds the session `id`. */
function holder(hosts: TestHost[], id: string): TestHost {
  const h = hosts.find((x) => x.server.getSession(id));
  assert.ok(h, `some host holds session ${id}`);
  return h;
}

/**
 * Moves a live session from `from` to `to` the way a migration does: freeze, snapshot the
 * transport, install a copy on the destination (same id and key; the service's state is shared
 * through `states`), then send the authenticated MOVE and let the source forget it (or, with
 * `keepStub`, keep its frozen copy as a migrating host keeps a stub). Returns the source's copy.
 */
async function moveByHand(
  from: TestHost,
  to: TestHost,
  id: string,
  clientUrl: string,
  opts: { keepStub?: boolean; hinted?: boolean } = {},
): Promise<ServerSession> {
  const s = from.server.getSession(id);
  assert.ok(s);
  // As a migrating host does during pre-copy; the gateway keeps the hint from the client.
  if (!opts.hinted) assert.ok(await s.hintMove(clientUrl), 'the hint went out on an attached transport');
  s.engine.freeze();
  const engine = SessionEngine.restore(s.engine.exportTransport());
  const copy = new ServerSession(s.sessionId, s.service, s.key, engine, s.keyForResume);
  streamService.open(copy);
  to.server.adopt(copy);
  assert.ok(await s.move(clientUrl), 'MOVE went out on an attached transport');
  if (!opts.keepStub) from.server.forget(id);
  return s;
}

/** Sends 1..n paced over time (so a move lands mid-stream), respecting backpressure. */
async function pump(s: Session, n: number): Promise<void> {
  for (let i = 1; i <= n; i++) {
    if (s.state === 'lost' || s.state === 'closed') throw new Error(`session ${s.state} while sending`);
    if (!s.send(enc.encode(String(i)))) await new Promise<void>((r) => s.once('drain', r));
    if (i % 25 === 0) await new Promise<void>((r) => setTimeout(r, 1));
  }
}

/** Collects the numbered echoes; `at(k)` resolves once k arrived. */
function collector(s: Session, n: number) {
  const got: number[] = [];
  let bad: string | undefined;
  const waiters: Array<{ k: number; fn: () => void }> = [];
  let resolve!: () => void;
  const done = new Promise<void>((r) => {
    resolve = r;
  });
  s.on('message', (d) => {
    const v = Number(dec.decode(d));
    if (v !== got.length + 1) bad ??= `client expected ${got.length + 1}, got ${v}`;
    got.push(v);
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i] as { k: number; fn: () => void };
      if (w.k <= got.length) {
        waiters.splice(i, 1);
        w.fn();
      }
    }
    if (got.length === n) resolve();
  });
  return {
    got,
    done,
    bad: () => bad,
    at: (k: number) => (got.length >= k ? Promise.resolve() : new Promise<void>((fn) => waiters.push({ k, fn }))),
  };
}

const seq = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1);

/** A raw client of the gateway: reads its CHALLENGE, then lets the test send anything. */
async function rawClient(url: string): Promise<{ conn: FramedConnection; nonce: Uint8Array }> {
  const conn = new FramedConnection(await connectTransport(url));
  const f = await conn.nextFrame(5000, systemClock);
  assert.equal(f.type, FrameType.CHALLENGE, 'the gateway speaks first, with CHALLENGE');
  return { conn, nonce: (f as Extract<Frame, { type: typeof FrameType.CHALLENGE }>).nonce };
}

async function expectError(conn: FramedConnection, code: string): Promise<void> {
  const f = await conn.nextFrame(5000, systemClock);
  assert.equal(f.type, FrameType.ERROR, `expected ERROR ${code}, got frame type ${f.type}`);
  assert.equal((f as Extract<Frame, { type: typeof FrameType.ERROR }>).code, code);
  await assert.rejects(conn.nextFrame(5000, systemClock), (e: unknown) => e instanceof RoamError);
}

/** A stand-in directory: serves /api/hosts and /api/sessions from a table, checking cluster signatures. */
async function fakeDirectory(
  t: TestContext,
  hosts: () => HostRecord[],
  sessions: () => Map<string, string>,
  unreachable: () => string[] = () => [],
) {
  const verifier = new RequestVerifier(SECRET);
  const sockets = new Set<Socket>();
  let requests = 0;
  const server: Server = createServer((req, res) => {
    requests++;
    try {
      verifier.verify(req.headers['x-roam-auth'] as string | undefined, 'GET', req.url ?? '/', new Uint8Array(0));
    } catch {
      res.writeHead(401).end('{"error":{"code":"UNAUTHORIZED","message":"no"}}');
      return;
    }
    const u = new URL(req.url ?? '/', 'http://d');
    res.setHeader('content-type', 'application/json');
    if (u.pathname === '/api/hosts') res.end(JSON.stringify({ hosts: hosts() }));
    else if (u.pathname === '/api/sessions') {
      const id = u.searchParams.get('id') ?? '';
      const host = sessions().get(id);
      res.end(JSON.stringify({ sessions: host ? [{ session: id, host }] : [], unreachable: unreachable() }));
    } else if (u.pathname === '/api/instances') res.end(JSON.stringify({ instances: [] }));
    else res.writeHead(404).end('{"error":{"code":"NOT_FOUND","message":"no"}}');
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests: () => requests };
}

function hostRecord(h: TestHost, peerUrl = h.peerUrl): HostRecord {
  return {
    id: h.id,
    publicKey: '',
    clientUrl: h.ws,
    peerUrl,
    labels: {},
    capacity: 100,
    services: ['echo', 'counter', 'stream'].map((name) => ({ name, version: '1', compat: [], requires: {} })),
    nodeMajor: 20,
    status: 'up',
    registeredAt: 0,
    lastSeenAt: 0,
    metrics: { cpu: 0, loopDelayP99Ms: 0, rssBytes: 0, instances: 0, sessions: 0, bytesPerS: 0 },
  };
}

describe('gateway', () => {
  it('splices through links it opened ahead (pool), still handing the host the client address', async (t) => {
    const a = await startHost(t, 'a');
    const gw = await startGateway(t, { hosts: [a.record()], splicePool: 2 });
    await gw.warm();
    const before = a.server.counters.accepted;
    // From another loopback address, so the host cannot mistake the gateway's for the client's.
    const s = open(urlOf(gw, 'ws'), 'echo', { localAddress: '127.0.0.3' });
    t.after(() => s.close());
    await s.ready;
    await echo(s, 'through a pooled link');
    assert.equal(gw.counters.pooled, 1, 'the splice took a link from the pool');
    assert.equal(a.server.counters.accepted, before + 1);
    assert.equal(a.server.getSession(s.id as string)?.remoteAddress, '127.0.0.3');
    // The pool tops itself up: the next client is pooled too.
    await gw.warm();
    const s2 = open(urlOf(gw, 'tcp'), 'echo');
    t.after(() => s2.close());
    await s2.ready;
    await echo(s2, 'again');
    assert.equal(gw.counters.pooled, 2);
  });

  it('a pooled splice link whose first message is not a nonce and an address is closed, touching nothing', async (t) => {
    const a = await startHost(t, 'a');
    const s = open(a.ws, 'echo');
    t.after(() => s.close());
    await s.ready;
    const before = a.server.counters.accepted;
    for (const first of [Buffer.from('not binary'), new Uint8Array(5)]) {
      const ws = await openPeerLink(a.peerUrl, '/peer/splice?pooled=1', SECRET, (m, p) => signRequest(SECRET, m, p));
      const closed = once(ws, 'close');
      ws.send(first, { binary: typeof first !== 'string' && !(first instanceof Buffer) });
      const [code] = (await closed) as [number];
      assert.equal(code, 1008);
    }
    assert.equal(a.server.counters.accepted, before, 'no transport reached the session server');
    await echo(s, 'others unaffected');
  });

  it('routes HELLOs to the least-loaded host over ws and tcp; echo works through the splice', async (t) => {
    const a = await startHost(t, 'a');
    const b = await startHost(t, 'b');
    const gw = await startGateway(t, { hosts: [a.record(), b.record()] });
    const s1 = open(urlOf(gw, 'ws'), 'echo');
    const s2 = open(urlOf(gw, 'tcp'), 'echo');
    t.after(() => {
      s1.close();
      s2.close();
    });
    await s1.ready;
    await s2.ready;
    await echo(s1, 'over ws');
    await echo(s2, 'over tcp');
    assert.equal(a.server.sessionCount, 1, 'one session per host: the second HELLO went to the idle one');
    assert.equal(b.server.sessionCount, 1);
    // (Whether a splice found a link already open in the pool depends on timing; see the pool test.)
    const { pooled: _, ...counters } = gw.counters;
    assert.deepEqual(counters, { clients: 2, splices: 2, resplices: 0, refused: 0, redirected: 0, prepared: 0 });
    // The host sees the client's address, not the gateway's link.
    assert.equal(holder([a, b], s1.id as string).server.getSession(s1.id as string)?.remoteAddress, '127.0.0.1');

    // Sessions of one keyed instance land on the host that has it, even when it is busier.
    const k1 = open(urlOf(gw, 'ws'), 'echo', { key: 'room 1' });
    t.after(() => k1.close());
    await k1.ready;
    const room = holder([a, b], k1.id as string);
    const k2 = open(urlOf(gw, 'tcp'), 'echo', { key: 'room 1' });
    t.after(() => k2.close());
    await k2.ready;
    assert.equal(holder([a, b], k2.id as string), room);
    assert.equal(room.server.sessionCount, 3);
  });

  it("a HELLO a host sends on to the instance's owner (INSTANCE_ELSEWHERE) is replayed there; the client sees only WELCOME", async (t) => {
    // Each host sends HELLOs for the key "owned" to `owner` unless it is the owner itself.
    let owner: TestHost | undefined;
    const { a, b } = await hostsWithAdmit(t, (self) => async (hello) => {
      if (hello.key === 'owned' && owner && owner !== self()) throw new RoamError('INSTANCE_ELSEWHERE', owner.ws);
    });
    const gw = await startGateway(t, { hosts: [a.record(), b.record()] });
    // One unkeyed session makes its host the busier one, so the keyed HELLO goes to the other.
    const first = open(urlOf(gw, 'ws'), 'echo');
    t.after(() => first.close());
    await first.ready;
    owner = holder([a, b], first.id as string);
    const s = open(urlOf(gw, 'ws'), 'echo', { key: 'owned' });
    t.after(() => s.close());
    const seen: string[] = [];
    s.on('event', (ev) => seen.push(ev.type));
    s.on('warning', (w) => seen.push(`warning ${w.code}`));
    await s.ready;
    await echo(s, 'at the owner');
    assert.equal(holder([a, b], s.id as string), owner);
    assert.equal(gw.counters.redirected, 1, 'the gateway followed one redirect');
    assert.equal(gw.counters.refused, 0);
    assert.deepEqual(seen, ['open'], 'the client saw neither a move nor a failed attempt');
    assert.equal(s.url, urlOf(gw, 'ws'));
  });

  it('hosts that send a HELLO back and forth make the gateway give up after 3 redirects per client transport', async (t) => {
    const { a, b } = await hostsWithAdmit(t, (_self, other) => async () => {
      throw new RoamError('INSTANCE_ELSEWHERE', other().ws);
    });
    const gw = await startGateway(t, { hosts: [a.record(), b.record()] });
    const s = open(urlOf(gw, 'ws'), 'echo', {
      key: 'k',
      reconnect: { initialDelayMs: 20, maxDelayMs: 40, connectTimeoutMs: 400 },
    });
    const seen: string[] = [];
    s.on('event', (e) => seen.push(e.type));
    s.on('warning', (w) => seen.push(`warning ${w.code}`));
    t.after(() => s.close());
    await within(
      'the client gives up',
      20_000,
      assert.rejects(s.ready, (err: RoamError) => err.code === 'RECONNECT_EXHAUSTED'),
      () => `state ${s.state}, seen [${seen.join(' ')}], gateway ${JSON.stringify(gw.counters)}`,
    );
    assert.ok(!seen.includes('moved'), 'the gateway kept every redirect to itself');
    assert.ok(seen.includes('warning UNAVAILABLE'), seen.join(' '));
    assert.ok(gw.counters.clients >= 2, 'the client tried again after each refusal');
    assert.ok(
      gw.counters.redirected <= 3 * gw.counters.clients,
      `${gw.counters.redirected} redirects for ${gw.counters.clients} client transports`,
    );
  });

  it('a client whose transport to the gateway is cut resumes through it (RESUME routed by the cache)', async (t) => {
    const a = await startHost(t, 'a');
    const b = await startHost(t, 'b');
    const gw = await startGateway(t, { hosts: [a.record(), b.record()] });
    const target = new URL(urlOf(gw, 'tcp'));
    const emu = await LinkEmulator.start({ target: { host: target.hostname, port: Number(target.port) } });
    t.after(() => emu.close());
    // Two sessions, so the one we cut is not simply on the first host by chance of order.
    const other = open(urlOf(gw, 'ws'), 'echo');
    const s = open(`tcp://127.0.0.1:${emu.port}`, 'counter');
    t.after(() => {
      other.close();
      s.close();
    });
    await other.ready;
    await s.ready;
    const home = holder([a, b], s.id as string);
    const got: number[] = [];
    s.on('message', (d) => got.push(Number(dec.decode(d))));
    s.send('start 2');
    await new Promise<void>((r) => {
      const f = (): void => {
        if (got.length >= 5) {
          s.off('message', f);
          r();
        }
      };
      s.on('message', f);
    });
    const resumed = nextEvent(s, 'resumed');
    emu.cut();
    await resumed;
    const n = got.length;
    await new Promise<void>((r) => {
      const f = (): void => {
        if (got.length >= n + 5) {
          s.off('message', f);
          r();
        }
      };
      s.on('message', f);
    });
    assert.deepEqual(got, seq(got.length), 'counter indices contiguous across the cut');
    assert.equal(holder([a, b], s.id as string), home, 'resumed at the same host');
    assert.equal(gw.counters.clients, 3, 'the resume came through the gateway on a new transport');
    assert.equal(home.server.counters.resumes, 1);
  });

  for (const scheme of ['ws', 'tcp'] as const) {
    it(`re-splices a live session between hosts, three times, without the client reconnecting (${scheme})`, async (t) => {
      const a = await startHost(t, 'a');
      const b = await startHost(t, 'b');
      const gw = await startGateway(t, { hosts: [a.record(), b.record()] });
      // Latency between client and gateway, so frames are in flight in both directions at each switch.
      const target = new URL(urlOf(gw, scheme));
      const emu = await LinkEmulator.start({
        target: { host: target.hostname, port: Number(target.port) },
        delayMs: 3,
        jitterMs: 2,
      });
      t.after(() => emu.close());
      let tcpConnections = 0;
      emu.onConnection(() => tcpConnections++);
      const connector = countingConnector();
      const bystander = open(urlOf(gw, 'ws'), 'echo');
      const s = open(`${scheme}://127.0.0.1:${emu.port}`, 'stream', { connector });
      t.after(() => {
        bystander.close();
        s.close();
      });
      await bystander.ready;
      await s.ready;
      const id = s.id as string;
      const events: SessionEvent['type'][] = [];
      s.on('event', (e) => events.push(e.type));
      const N = 4000;
      const echoes = collector(s, N);
      const sending = pump(s, N);

      const path: string[] = [];
      for (const at of [N / 4, N / 2, (3 * N) / 4]) {
        await echoes.at(at);
        const from = holder([a, b], id);
        const to = from === a ? b : a;
        path.push(`${from.id}>${to.id}`);
        const resumed = nextEvent(s, 'resumed');
        await moveByHand(from, to, id, to.ws);
        await resumed;
        assert.equal(to.server.getSession(id)?.state, 'attached', 'the destination serves the session');
        assert.equal(from.server.getSession(id), undefined);
      }
      await Promise.all([sending, echoes.done]);
      t.diagnostic(`moves ${path.join(' ')}`);

      assert.equal(echoes.bad(), undefined);
      assert.deepEqual(echoes.got, seq(N), 'client: every echo exactly once, in order');
      const st = states.get(id);
      assert.equal(st?.bad, undefined);
      assert.deepEqual(st?.got, seq(N), 'hosts: every message exactly once, in order, across the moves');
      assert.equal(connector.opened, 1, 'the client opened one transport, ever');
      assert.equal(tcpConnections, 1, 'one TCP connection between client and gateway, ever');
      assert.equal(gw.counters.clients, 2, 'the gateway accepted no second transport (client + bystander)');
      assert.equal(gw.counters.resplices, 3);
      assert.deepEqual(events, ['resumed', 'resumed', 'resumed'], 'the app saw resumed events and no suspension');
      await echo(bystander, 'bystander untouched');
    });
  }

  it('a RESUME the client prepared at the MOVE hint goes to the destination at the MOVE, with no round trip to the client', async (t) => {
    const a = await startHost(t, 'a');
    const b = await startHost(t, 'b');
    const gw = await startGateway(t, { hosts: [a.record(), b.record()] });
    // Acknowledging every frame at once: by the MOVE the host has heard of echoes the prepared
    // RESUME's claim is older than, so the destination must start its replay where the ACKs were.
    const s = open(urlOf(gw, 'ws'), 'stream', { engine: { ackEveryFrames: 1 } });
    t.after(() => s.close());
    await s.ready;
    const id = s.id as string;
    const events: SessionEvent['type'][] = [];
    s.on('event', (e) => events.push(e.type));
    const N = 6;
    const echoes = collector(s, N);
    s.send(enc.encode('1'));
    await echoes.at(1);
    const from = holder([a, b], id);
    const to = from === a ? b : a;
    assert.ok(await from.server.getSession(id)?.hintMove(to.ws));
    // Two round trips after the hint: the first echo comes after the gateway's prepared CHALLENGE,
    // so the client's RESUME went out before the second number, and reached the gateway first.
    s.send(enc.encode('2'));
    await echoes.at(2);
    s.send(enc.encode('3'));
    await echoes.at(3);
    // The client carried on meanwhile: nothing was parked, nothing resumed yet.
    assert.deepEqual(events, []);
    // Its ACK of echo 2 went out before number 3: the host heard it, after the RESUME's claim (1).
    assert.ok((from.server.getSession(id)?.engine.peerAckedSeq ?? 0) >= 2, 'the host heard the ACK of echo 2');
    assert.equal(gw.counters.prepared, 0);
    const resumed = nextEvent(s, 'resumed');
    await moveByHand(from, to, id, to.ws, { hinted: true });
    s.send(enc.encode('4'));
    await resumed;
    s.send(enc.encode('5'));
    s.send(enc.encode('6'));
    await echoes.done;
    assert.equal(gw.counters.prepared, 1, 'the re-splice used the prepared RESUME');
    assert.equal(gw.counters.resplices, 1);
    assert.equal(to.server.getSession(id)?.state, 'attached');
    assert.equal(echoes.bad(), undefined);
    assert.deepEqual(echoes.got, seq(N));
    assert.deepEqual(states.get(id)?.got, seq(N), 'the host saw every number once, in order');
    assert.deepEqual(events, ['resumed']);
  });

  it('hostile input gets an ERROR code; a bystander session is untouched', async (t) => {
    const a = await startHost(t, 'a');
    const gw = await startGateway(t, { hosts: [{ ...a.record(), services: ['echo', 'counter', 'stream'] }] });
    const url = urlOf(gw, 'tcp');
    const bystander = open(urlOf(gw, 'ws'), 'echo');
    t.after(() => bystander.close());
    await bystander.ready;

    // Random bytes (version byte forced wrong so the outcome is deterministic).
    const r1 = await rawClient(url);
    const junk = new Uint8Array(randomBytes(64));
    junk[0] = 0x7f;
    r1.conn.transport.send(junk);
    await expectError(r1.conn, 'UNSUPPORTED_VERSION');

    // A header announcing a 4 GiB frame: refused before any allocation.
    const r2 = await rawClient(url);
    r2.conn.transport.send(Uint8Array.from([1, FrameType.DATA, 0, 0, 0xff, 0xff, 0xff, 0xff]));
    await expectError(r2.conn, 'FRAME_TOO_LARGE');

    // RESUME for a session nobody knows.
    const r3 = await rawClient(url);
    r3.conn.writeFrame({
      type: FrameType.RESUME,
      sessionId: new Uint8Array(randomBytes(16)),
      nonce: r3.nonce,
      lastSeq: 0,
      clientNonce: newNonce(),
      mac: new Uint8Array(32),
    });
    await expectError(r3.conn, 'UNKNOWN_SESSION');

    // RESUME answering a nonce this gateway did not issue on this transport.
    const r4 = await rawClient(url);
    r4.conn.writeFrame({
      type: FrameType.RESUME,
      sessionId: Uint8Array.from(Buffer.from(bystander.id as string, 'hex')),
      nonce: newNonce(),
      lastSeq: 0,
      clientNonce: newNonce(),
      mac: new Uint8Array(32),
    });
    await expectError(r4.conn, 'RESUME_REPLAYED');

    // RESUME with the right nonce but a forged proof: the host refuses, through the gateway.
    const r5 = await rawClient(url);
    r5.conn.writeFrame({
      type: FrameType.RESUME,
      sessionId: Uint8Array.from(Buffer.from(bystander.id as string, 'hex')),
      nonce: r5.nonce,
      lastSeq: 0,
      clientNonce: newNonce(),
      mac: new Uint8Array(32),
    });
    await expectError(r5.conn, 'RESUME_PROOF_INVALID');

    // HELLO for a service no host offers.
    const r6 = await rawClient(url);
    r6.conn.writeFrame({ type: FrameType.HELLO, publicKey: new Uint8Array(32), service: 'nope', key: undefined });
    await expectError(r6.conn, 'UNKNOWN_SERVICE');

    // DATA before any handshake.
    const r7 = await rawClient(url);
    r7.conn.transport.send(encodeFrame({ type: FrameType.DATA, channel: 0, seq: 1, payload: new Uint8Array(3) }));
    await expectError(r7.conn, 'UNEXPECTED_FRAME');

    assert.equal(gw.counters.refused, 6, 'the gateway refused six itself; the forged proof was the host');
    assert.equal(bystander.state, 'open');
    await echo(bystander, 'still fine');
    assert.equal(a.server.sessionCount, 1);
    assert.equal(gw.activeClients, 1);
  });

  it('a splice link without the cluster secret is refused by the host', async (t) => {
    const a = await startHost(t, 'a');
    const before = a.server.counters.accepted;
    const nonce = Buffer.from(newNonce()).toString('base64url');
    const wrong = new Uint8Array(randomBytes(32));
    await assert.rejects(
      openPeerLink(a.peerUrl, `/peer/splice?nonce=${nonce}&remote=x`, wrong, (m, p) => signRequest(wrong, m, p)),
      (e: unknown) => e instanceof RoamError && e.code === 'UNAUTHORIZED',
    );
    // A member's link with a malformed nonce is closed before the session server sees it.
    const ws = await openPeerLink(a.peerUrl, '/peer/splice?nonce=short', SECRET, (m, p) => signRequest(SECRET, m, p));
    const code = await new Promise<number>((r) => ws.once('close', (c: number) => r(c)));
    assert.equal(code, 1008);
    assert.equal(a.server.counters.accepted, before, 'no transport reached the session server');
  });

  it('with a directory: a RESUME the gateway never saw is routed by the directory; a failed re-splice falls back to a resume', async (t) => {
    const a = await startHost(t, 'a');
    const b = await startHost(t, 'b');
    // B's peer endpoint is listed wrongly at first, so the re-splice link to it fails.
    let bPeer = 'http://127.0.0.1:1';
    const where = new Map<string, string>();
    const dir = await fakeDirectory(
      t,
      () => [hostRecord(a), hostRecord(b, bPeer)],
      () => where,
    );
    const gw1 = await startGateway(t, { directory: dir.url, refreshMs: 50 });
    const gw2 = await startGateway(t, { directory: dir.url, refreshMs: 50 });
    assert.equal(gw1.hosts().length, 2, 'the gateway loaded the directory table');

    // The client's transports go where `via` says: through gw1 first, later through gw2.
    let via = urlOf(gw1, 'ws');
    const s = open('ws://gateway.invalid:1', 'stream', {
      connector: (_url, o) => connectTransport(via, { localAddress: o.localAddress }),
    });
    t.after(() => s.close());
    await s.ready;
    const id = s.id as string;
    assert.ok(a.server.getSession(id), 'least loaded, first in the table: host a');
    where.set(id, 'a');
    await echo(s, '1');

    // The session's next transport goes through another gateway, whose cache is empty.
    const cut = nextEvent(s, 'suspended');
    const resumed1 = nextEvent(s, 'resumed');
    via = urlOf(gw2, 'tcp');
    s.reconnectNow();
    await cut;
    await resumed1;
    await echo(s, '2');
    assert.equal(gw2.counters.splices, 1);
    assert.ok(dir.requests() > 0);

    // Move to b while b's peer endpoint is listed wrong: the gateway cannot re-splice, tells the
    // client TRANSPORT_CLOSED, and the client resumes through the gateway once the table is right.
    const suspended = nextEvent(s, 'suspended');
    const resumed2 = nextEvent(s, 'resumed');
    await moveByHand(a, b, id, b.ws);
    where.set(id, 'b');
    const sus = await suspended;
    assert.equal(sus.code, 'TRANSPORT_CLOSED');
    bPeer = b.peerUrl;
    await resumed2;
    await echo(s, '3');
    assert.deepEqual(states.get(id)?.got, [1, 2, 3]);
    assert.ok(b.server.getSession(id));
  });
  it('with a directory: a session on a host that registered after the last table load is found, not lost', async (t) => {
    const a = await startHost(t, 'a');
    const b = await startHost(t, 'b');
    const listed = [hostRecord(a)];
    const where = new Map<string, string>();
    const dir = await fakeDirectory(
      t,
      () => listed,
      () => where,
    );
    // No periodic load during the test, and on-demand loads far apart: the gateway loaded its
    // table at start, before b was listed, and may not load it again for a while.
    const gw = await startGateway(t, { directory: dir.url, refreshMs: 600_000, minRefreshGapMs: 300 });
    assert.equal(gw.hosts().length, 1);
    listed.push(hostRecord(b));

    // The session starts on b directly (a migration's destination, as the gateway sees it), then
    // its next transport goes through the gateway.
    let via = b.ws;
    const s = open('ws://gateway.invalid:1', 'echo', {
      connector: (_url, o) => connectTransport(via, { localAddress: o.localAddress }),
    });
    t.after(() => s.close());
    await s.ready;
    const id = s.id as string;
    where.set(id, 'b');
    const resumed = nextEvent(s, 'resumed');
    const lost = nextEvent(s, 'lost').then((ev) => assert.fail(`session lost: ${JSON.stringify(ev)}`));
    via = urlOf(gw, 'ws');
    s.reconnectNow();
    await Promise.race([resumed, lost]);
    await echo(s, 'through the gateway, on b');
    assert.equal(s.state, 'open');
    assert.ok(
      gw.hosts().some((h) => h.id === 'b'),
      'the lookup loaded the table again',
    );
  });

  it('with a directory: a session not found while a host did not answer is retryable, not unknown', async (t) => {
    const a = await startHost(t, 'a');
    const down = ['c'];
    const dir = await fakeDirectory(
      t,
      () => [hostRecord(a)],
      () => new Map(),
      () => down,
    );
    const gw = await startGateway(t, { directory: dir.url, refreshMs: 600_000 });
    const resume = (r: { conn: FramedConnection; nonce: Uint8Array }) =>
      r.conn.writeFrame({
        type: FrameType.RESUME,
        sessionId: new Uint8Array(randomBytes(16)),
        nonce: r.nonce,
        lastSeq: 0,
        clientNonce: newNonce(),
        mac: new Uint8Array(32),
      });
    const r1 = await rawClient(urlOf(gw, 'ws'));
    resume(r1);
    await expectError(r1.conn, 'UNAVAILABLE');
    // Once every host answers, a session nobody holds is unknown.
    down.length = 0;
    const r2 = await rawClient(urlOf(gw, 'ws'));
    resume(r2);
    await expectError(r2.conn, 'UNKNOWN_SESSION');
  });

  it("a RESUME that reaches a moved session's stub after its client went on elsewhere is redirected there, not refused", {
    timeout: 20_000,
  }, async (t) => {
    let movedTo: string | undefined;
    const a = await startHost(t, 'a', {}, { movedTo: () => movedTo });
    const b = await startHost(t, 'b');
    const where = new Map<string, string>();
    const dir = await fakeDirectory(
      t,
      () => [hostRecord(a), hostRecord(b)],
      () => where,
    );
    const gw1 = await startGateway(t, { directory: dir.url, refreshMs: 600_000 });
    const gw2 = await startGateway(t, { directory: dir.url, refreshMs: 600_000 });
    let via = urlOf(gw1, 'ws');
    const s = open('ws://gateway.invalid:1', 'stream', {
      connector: (_url, o) => connectTransport(via, { localAddress: o.localAddress }),
    });
    t.after(() => s.close());
    const lost = nextEvent(s, 'lost').then((ev) => assert.fail(`session lost: ${JSON.stringify(ev)}`));
    await s.ready;
    const id = s.id as string;
    assert.ok(a.server.getSession(id));
    where.set(id, 'a');
    await echo(s, '1');

    // gw1 follows the MOVE to b; the client goes on there, past anything the stub on a sent.
    const resumedOnB = nextEvent(s, 'resumed');
    const stub = await moveByHand(a, b, id, b.ws, { keepStub: true });
    movedTo = b.ws;
    await Promise.race([resumedOnB, lost]);
    await echo(s, '2');
    await echo(s, '3');
    assert.equal(a.server.getSession(id), stub, 'the stub is still on a');

    // The next transport goes through gw2, whose directory still says a: the stub sends it on.
    const resumed = nextEvent(s, 'resumed');
    via = urlOf(gw2, 'ws');
    s.reconnectNow();
    await Promise.race([resumed, lost]);
    await echo(s, '4');
    assert.equal(gw2.counters.redirected, 1, 'gw2 followed the stub to b');
    assert.deepEqual(states.get(id)?.got, [1, 2, 3, 4]);
    assert.equal(states.get(id)?.bad, undefined);
  });

  it("a direct client that reaches a moved session's stub through a stale route resumes at the destination", {
    timeout: 20_000,
  }, async (t) => {
    let movedTo: string | undefined;
    const a = await startHost(t, 'a', {}, { movedTo: () => movedTo });
    const b = await startHost(t, 'b');
    // Once, a transport meant for b lands on a (a stale NAT or load-balancer mapping, say).
    let staleOnce = false;
    const s = open(a.ws, 'stream', {
      connector: (url, o) => {
        const to = staleOnce && url === b.ws ? a.ws : url;
        if (to !== url) staleOnce = false;
        return connectTransport(to, { localAddress: o.localAddress });
      },
    });
    t.after(() => s.close());
    const lost = nextEvent(s, 'lost').then((ev) => assert.fail(`session lost: ${JSON.stringify(ev)}`));
    await s.ready;
    const id = s.id as string;
    await echo(s, '1');
    const resumedOnB = nextEvent(s, 'resumed');
    await moveByHand(a, b, id, b.ws, { keepStub: true });
    movedTo = b.ws;
    await Promise.race([resumedOnB, lost]);
    await echo(s, '2');
    await echo(s, '3');

    const moved = nextEvent(s, 'moved');
    const resumed = nextEvent(s, 'resumed');
    staleOnce = true;
    s.reconnectNow();
    assert.equal((await Promise.race([moved, lost]))?.url, b.ws, 'the stub named b');
    await Promise.race([resumed, lost]);
    assert.equal(staleOnce, false, 'the stale route was taken');
    await echo(s, '4');
    assert.deepEqual(states.get(id)?.got, [1, 2, 3, 4]);
    assert.ok(b.server.getSession(id));
  });

  it('roam gateway runs as a process: help, splices via the directory, stops cleanly on SIGINT', async (t) => {
    const help = await roam(['gateway', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Example:/);
    const noSecret = await roam(['gateway', '--directory', 'http://127.0.0.1:1', '--secret', '']);
    assert.notEqual(noSecret.code, 0);

    const a = await startHost(t, 'a');
    const dir = await fakeDirectory(
      t,
      () => [hostRecord(a)],
      () => new Map(),
    );
    const p = spawn(
      process.execPath,
      [...NODE_ARGS, ROAM, 'gateway', '--directory', dir.url, '--listen', 'tcp://127.0.0.1:0', '--json'],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: { ...process.env, ROAM_CLUSTER_SECRET: Buffer.from(SECRET).toString('hex'), ROAM_LOG_LEVEL: 'warn' },
      },
    );
    t.after(() => p.kill('SIGKILL'));
    const [line] = (await once(createInterface({ input: p.stdout }), 'line')) as [string];
    const { listen } = JSON.parse(line) as { listen: string[] };
    const s = open(listen[0] as string, 'echo');
    t.after(() => s.close());
    await s.ready;
    await echo(s, 'through a gateway process');
    assert.ok(a.server.getSession(s.id as string));

    const suspended = nextEvent(s, 'suspended');
    p.kill('SIGINT');
    const [code] = await once(p, 'close');
    assert.equal(code, 0);
    await suspended;
    assert.equal(s.state, 'suspended', 'a gateway going away does not close sessions');
  });
});
