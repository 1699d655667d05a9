import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connect, type Session } from '../src/client/node.js';
import { builtinServices, SessionServer, silentLogger } from '../src/host/index.js';
import {
  equalBytes,
  FramedConnection,
  memoryTransportPair,
  newNonce,
  randomBytes,
  SessionEngine,
  type SessionEvent,
  systemClock,
  type Transport,
} from '../src/session/index.js';
import { type Frame, FrameType } from '../src/wire/index.js';
import { nextEvent } from './support/server.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

type Mode = 'ok' | 'fake-resumed' | 'refuse';

/**
 * A gateway in miniature over MemoryTransports, with the real protocol moves: CHALLENGE first,
 * route the first frame to the server with the pre-issued nonce, relay; `resplice()` switches
 * the client to a fresh upstream in-band (CHALLENGE on the same transport, drop DATA/ACK/PING
 * until the RESUME). The "new host" is the same server here: this tests the session layer.
 */
class MiniGateway {
  connects = 0;
  dropped = 0;
  private client: FramedConnection | undefined;
  private up: FramedConnection | undefined;
  private switching: { nonce: Uint8Array; mode: Mode } | undefined;
  private readonly resumeSeen: Array<() => void> = [];

  constructor(private readonly server: SessionServer) {}

  readonly connector = async (): Promise<Transport> => {
    const [c, g] = memoryTransportPair();
    this.connects++;
    void this.accept(g);
    return c;
  };

  private async accept(t: Transport): Promise<void> {
    const conn = new FramedConnection(t);
    const nonce = newNonce();
    conn.writeFrame({ type: FrameType.CHALLENGE, nonce });
    const first = await conn.nextFrame(5000, systemClock);
    this.client = conn;
    this.attachUpstream(first, nonce);
    conn.setHandler({ frame: (f) => this.fromClient(conn, f), closed: () => this.up?.abort() });
  }

  private attachUpstream(first: Frame, nonce: Uint8Array): void {
    const [u, h] = memoryTransportPair();
    this.server.accept(h, { challenge: { nonce } });
    const up = new FramedConnection(u);
    up.setHandler({
      frame: (f) => {
        if (this.up === up) this.client?.writeFrame(f);
      },
      closed: () => {
        if (this.up === up) this.client?.abort();
      },
    });
    this.up = up;
    up.writeFrame(first);
  }

  private fromClient(conn: FramedConnection, f: Frame): void {
    if (conn !== this.client) return;
    const sw = this.switching;
    if (!sw) {
      this.up?.writeFrame(f);
      return;
    }
    if (f.type !== FrameType.RESUME) {
      this.dropped++;
      return;
    }
    assert.ok(equalBytes(f.nonce, sw.nonce), 'the client answered the in-band nonce');
    this.switching = undefined;
    for (const fn of this.resumeSeen.splice(0)) fn();
    if (sw.mode === 'ok') this.attachUpstream(f, sw.nonce);
    else if (sw.mode === 'fake-resumed') conn.writeFrame({ type: FrameType.RESUMED, lastSeq: 0, mac: randomBytes(32) });
  }

  /** Drops the current upstream and asks the client, in-band, to RESUME again. */
  resplice(mode: Mode): Promise<void> {
    const old = this.up;
    this.up = undefined;
    old?.abort();
    const nonce = newNonce();
    this.switching = { nonce, mode };
    const seen = new Promise<void>((r) => this.resumeSeen.push(r));
    this.client?.writeFrame({ type: FrameType.CHALLENGE, nonce });
    if (mode === 'refuse') {
      // The gateway could not reach the new host: ERROR, close; the client reconnects.
      this.switching = undefined;
      this.client?.close('TRANSPORT_CLOSED', 'new host unreachable', true);
      return Promise.resolve();
    }
    return seen;
  }
}

/** Sends 1..n paced, respecting backpressure. */
async function pump(s: Session, n: number): Promise<void> {
  for (let i = 1; i <= n; i++) {
    if (s.state === 'lost' || s.state === 'closed') return;
    if (!s.send(String(i))) await new Promise<void>((r) => s.once('drain', r));
    if (i % 20 === 0) await new Promise<void>((r) => setImmediate(r));
  }
}

function echoCollector(s: Session, n: number): { got: number[]; done: Promise<void>; at(k: number): Promise<void> } {
  const got: number[] = [];
  const waiters: Array<{ k: number; fn: () => void }> = [];
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const done = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  s.on('message', (d) => {
    const v = Number(dec.decode(d));
    if (v !== got.length + 1) reject(new Error(`expected ${got.length + 1}, got ${v}`));
    got.push(v);
    for (const w of waiters.filter((x) => x.k <= got.length)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.fn();
    }
    if (got.length === n) resolve();
  });
  return {
    got,
    done,
    at: (k) => (got.length >= k ? Promise.resolve() : new Promise<void>((fn) => waiters.push({ k, fn }))),
  };
}

function startServer(): SessionServer {
  return new SessionServer({ logger: silentLogger(), services: builtinServices() });
}

describe('in-band re-resume (CHALLENGE on an established transport)', () => {
  it('re-resumes on the same transport mid-stream: nothing lost or duplicated, only `resumed` is seen', async (t) => {
    const server = startServer();
    t.after(() => server.close());
    const gw = new MiniGateway(server);
    const s = connect('memory://gw', { service: 'echo', connector: gw.connector });
    t.after(() => s.close());
    const events: SessionEvent['type'][] = [];
    s.on('event', (e) => events.push(e.type));
    await s.ready;
    const N = 600;
    const echoes = echoCollector(s, N);
    const sending = pump(s, N);
    await echoes.at(100);
    const resumed = nextEvent(s, 'resumed');
    await gw.resplice('ok');
    const r = await resumed;
    assert.equal(s.state, 'open');
    await echoes.at(300);
    await gw.resplice('ok');
    await Promise.all([sending, echoes.done]);
    assert.deepEqual(
      echoes.got,
      Array.from({ length: N }, (_, i) => i + 1),
    );
    assert.equal(gw.connects, 1, 'the client never opened a second transport');
    assert.deepEqual(
      events.filter((e) => e !== 'open'),
      ['resumed', 'resumed'],
    );
    assert.ok(r.gapMs >= 0);
    assert.equal(server.counters.resumes, 2);
  });

  it('a RESUMED without the session key (a gateway faking a host) loses the session with HANDSHAKE_FAILED', async (t) => {
    const server = startServer();
    t.after(() => server.close());
    const gw = new MiniGateway(server);
    const s = connect('memory://gw', { service: 'echo', connector: gw.connector });
    t.after(() => s.close());
    await s.ready;
    const lost = nextEvent(s, 'lost');
    await gw.resplice('fake-resumed');
    const ev = await lost;
    assert.equal(ev.code, 'HANDSHAKE_FAILED');
    assert.equal(ev.reason, 'auth_failed');
  });

  it('a refused re-resume falls back to an ordinary resume on a new transport', async (t) => {
    const server = startServer();
    t.after(() => server.close());
    const gw = new MiniGateway(server);
    const s = connect('memory://gw', {
      service: 'echo',
      connector: gw.connector,
      reconnect: { initialDelayMs: 5 },
    });
    t.after(() => s.close());
    await s.ready;
    const suspended = nextEvent(s, 'suspended');
    const resumed = nextEvent(s, 'resumed');
    await gw.resplice('refuse');
    assert.equal((await suspended).code, 'TRANSPORT_CLOSED');
    await resumed;
    assert.equal(gw.connects, 2);
    const echo = new Promise<string>((r) => s.once('message', (d) => r(dec.decode(d))));
    s.send('after');
    assert.equal(await echo, 'after');
  });

  it('an engine nobody asked to re-handshake (a server) still treats CHALLENGE as UNEXPECTED_FRAME', async () => {
    const [a, b] = memoryTransportPair();
    const engine = new SessionEngine();
    const lostOrSuspended = new Promise<SessionEvent>((r) => engine.on('event', r));
    engine.attach(new FramedConnection(a), 0);
    const peer = new FramedConnection(b);
    peer.writeFrame({ type: FrameType.CHALLENGE, nonce: newNonce() });
    const f = await peer.nextFrame(5000, systemClock);
    assert.equal(f.type, FrameType.ERROR);
    assert.equal((f as Extract<Frame, { type: typeof FrameType.ERROR }>).code, 'UNEXPECTED_FRAME');
    assert.equal((await lostOrSuspended).type, 'suspended');
    engine.close();
  });

  it('a server given a pre-issued challenge sends none of its own and holds RESUME to that nonce', async (t) => {
    const server = startServer();
    t.after(() => server.close());
    // A client opens a session normally (direct, memory), to have something to resume.
    const s = connect('memory://direct', {
      service: 'echo',
      connector: async () => {
        const [c, h] = memoryTransportPair();
        server.accept(h);
        return c;
      },
    });
    t.after(() => s.close());
    await s.ready;
    const [c, h] = memoryTransportPair();
    const issued = newNonce();
    server.accept(h, { challenge: { nonce: issued } });
    const conn = new FramedConnection(c);
    // A RESUME for a live session that answers another nonce is a replay, whatever its MAC.
    conn.writeFrame({
      type: FrameType.RESUME,
      sessionId: Uint8Array.from(Buffer.from(s.id as string, 'hex')),
      nonce: newNonce(),
      lastSeq: 0,
      clientNonce: newNonce(),
      mac: randomBytes(32),
    });
    const f = await conn.nextFrame(5000, systemClock);
    assert.equal(f.type, FrameType.ERROR, 'no CHALLENGE came first');
    assert.equal((f as Extract<Frame, { type: typeof FrameType.ERROR }>).code, 'RESUME_REPLAYED');
    assert.equal(s.state, 'open');
    const echo = new Promise<string>((r) => s.once('message', (d) => r(dec.decode(d))));
    s.send(enc.encode('still here'));
    assert.equal(await echo, 'still here');
  });
});
