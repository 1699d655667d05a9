import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type Connector, connect } from '../src/client/node.js';
import {
  type Clock,
  clientHello,
  clientResume,
  FramedConnection,
  fromHex,
  Labels,
  ManualClock,
  mac,
  moveMac,
  newNonce,
  randomBytes,
  type Transport,
  u64Bytes,
} from '../src/session/index.js';
import { connectTransport } from '../src/transport/index.js';
import { encodeFrame, type Frame, FrameDecoder, FrameType, RoamError } from '../src/wire/index.js';
import { nextEvent, recordingConnector, startTestServer } from './support/server.js';

const dec = new TextDecoder();
const clock: Clock = new ManualClock();

/** A raw connection that reads the server's CHALLENGE. */
async function rawOpen(url: string): Promise<{ conn: FramedConnection; challenge: Uint8Array }> {
  const conn = new FramedConnection(await connectTransport(url));
  const f = await conn.nextFrame(5000, clock);
  assert.equal(f.type, FrameType.CHALLENGE);
  return { conn, challenge: (f as Extract<Frame, { type: typeof FrameType.CHALLENGE }>).nonce };
}

/** Expects the server to answer with ERROR `code` and close. */
async function expectRefusal(conn: FramedConnection, code: string): Promise<void> {
  const f = await conn.nextFrame(5000, clock);
  assert.equal(f.type, FrameType.ERROR, `expected ERROR ${code}, got frame type ${f.type}`);
  assert.equal((f as Extract<Frame, { type: typeof FrameType.ERROR }>).code, code);
  await assert.rejects(conn.nextFrame(5000, clock), (e: unknown) => e instanceof RoamError);
}

async function echoRoundTrip(s: ReturnType<typeof connect>, text: string): Promise<void> {
  const got = new Promise<string>((r) => s.once('message', (d) => r(dec.decode(d))));
  s.send(text);
  assert.equal(await got, text);
}

describe('resume authentication', () => {
  it('refuses forged and replayed proofs with their codes; the genuine session is untouched', async (t) => {
    const srv = await startTestServer();
    t.after(() => srv.close());
    const rec = recordingConnector();
    const s = connect(srv.ws, { service: 'echo', connector: rec, reconnect: { initialDelayMs: 5 } });
    t.after(() => s.close());
    await s.ready;
    const id = fromHex(s.id as string);
    await echoRoundTrip(s, 'one');

    // Forged: right session id, fresh nonce, MAC not made with the session key.
    const forged = await rawOpen(srv.ws);
    forged.conn.writeFrame({
      type: FrameType.RESUME,
      sessionId: id,
      nonce: forged.challenge,
      lastSeq: 0,
      clientNonce: newNonce(),
      mac: randomBytes(32),
    });
    await expectRefusal(forged.conn, 'RESUME_PROOF_INVALID');
    assert.equal(s.state, 'open');
    await echoRoundTrip(s, 'two');

    // Replayed: capture the genuine client's RESUME and send it again on another transport.
    const resumed = nextEvent(s, 'resumed');
    s.reconnectNow();
    await resumed;
    const second = rec.sent[1] ?? [];
    const d = new FrameDecoder();
    const captured = second.flatMap((b) => d.push(b)).find((f) => f.type === FrameType.RESUME);
    assert.ok(captured, 'the genuine client sent a RESUME');
    const replay = await rawOpen(srv.ws);
    replay.conn.write(encodeFrame(captured));
    await expectRefusal(replay.conn, 'RESUME_REPLAYED');
    await echoRoundTrip(s, 'three');

    // Unknown session id.
    const unknown = await rawOpen(srv.tcp);
    unknown.conn.writeFrame({
      type: FrameType.RESUME,
      sessionId: randomBytes(16),
      nonce: unknown.challenge,
      lastSeq: 0,
      clientNonce: newNonce(),
      mac: randomBytes(32),
    });
    await expectRefusal(unknown.conn, 'UNKNOWN_SESSION');

    // The real client still resumes afterwards, and nothing was lost or duplicated.
    const again = nextEvent(s, 'resumed');
    s.reconnectNow();
    s.send('four');
    await again;
    await new Promise<void>((r) => s.once('message', () => r()));
    assert.equal(s.stats.duplicatesDropped, 0);
    assert.deepEqual(srv.server.counters.refused.get('RESUME_PROOF_INVALID'), 1);
    assert.deepEqual(srv.server.counters.refused.get('RESUME_REPLAYED'), 1);
  });

  it('refuses a genuine proof for an expired challenge (RESUME_STALE) and an impossible seq claim', async (t) => {
    const serverClock = new ManualClock();
    const srv = await startTestServer({ clock: serverClock, challengeTtlMs: 10_000, handshakeTimeoutMs: 60_000 });
    t.after(() => srv.close());

    // A hand-driven client, so the test holds the session key and can make genuine proofs.
    const first = new FramedConnection(await connectTransport(srv.tcp));
    const est = await clientHello(first, clock, 5000, 'echo', undefined);

    const late = await rawOpen(srv.tcp);
    serverClock.advance(10_001);
    late.conn.writeFrame({
      type: FrameType.RESUME,
      sessionId: est.sessionId,
      nonce: late.challenge,
      lastSeq: 0,
      clientNonce: newNonce(),
      mac: await mac(est.key, Labels.resume, late.challenge, est.sessionId, u64Bytes(0)),
    });
    await expectRefusal(late.conn, 'RESUME_STALE');

    const greedy = await rawOpen(srv.tcp);
    greedy.conn.writeFrame({
      type: FrameType.RESUME,
      sessionId: est.sessionId,
      nonce: greedy.challenge,
      lastSeq: 999,
      clientNonce: newNonce(),
      mac: await mac(est.key, Labels.resume, greedy.challenge, est.sessionId, u64Bytes(999)),
    });
    await expectRefusal(greedy.conn, 'RESUME_SEQ_INVALID');

    // The genuine holder resumes on a new transport.
    const next = new FramedConnection(await connectTransport(srv.tcp));
    const serverLast = await clientResume(next, clock, 5000, est.sessionId, est.key, 0);
    assert.equal(serverLast, 0);
    next.abort();
    first.abort();
  });
});

describe('MOVE authentication', () => {
  /** Wraps a connector so the test can inject bytes into the client's inbound stream (ws keeps frame boundaries). */
  function injectingConnector(): Connector & { inject(b: Uint8Array): void; received: Uint8Array[] } {
    let deliver: ((b: Uint8Array) => void) | undefined;
    const received: Uint8Array[] = [];
    const c = Object.assign(
      async (url: string): Promise<Transport> => {
        const t = await connectTransport(url);
        const bind = t.bind.bind(t);
        t.bind = (h) => {
          deliver = h.data;
          bind({
            data: (b) => {
              received.push(b.slice());
              h.data(b);
            },
            close: h.close,
          });
        };
        return t;
      },
      { inject: (b: Uint8Array) => deliver?.(b), received },
    );
    return c;
  }

  it('follows a genuine MOVE to another endpoint and ignores forged or replayed ones', async (t) => {
    const srv = await startTestServer();
    t.after(() => srv.close());
    const inj = injectingConnector();
    const other = await srv.server.listen('ws://127.0.0.1:0');
    const s = connect(srv.ws, { service: 'echo', reconnect: { initialDelayMs: 5 }, connector: inj });
    t.after(() => s.close());
    const warnings: RoamError[] = [];
    let onWarning = (): void => {};
    s.on('warning', (w) => {
      warnings.push(w);
      onWarning();
    });
    const warningCount = (n: number): Promise<void> =>
      new Promise((r) => {
        onWarning = () => warnings.length >= n && r();
        onWarning();
      });
    await s.ready;

    const forgedMove = encodeFrame({
      type: FrameType.MOVE,
      moveId: 1,
      url: 'ws://127.0.0.1:9/evil',
      token: new Uint8Array(0),
      mac: randomBytes(32),
    });
    inj.inject(forgedMove);
    await warningCount(1);
    await echoRoundTrip(s, 'still here');
    assert.equal(s.url, srv.ws);
    assert.deepEqual(
      warnings.map((w) => w.code),
      ['MOVE_INVALID'],
    );

    const serverSide = srv.server.getSession(s.id as string);
    assert.ok(serverSide);
    const moved = nextEvent(s, 'moved');
    const resumed = nextEvent(s, 'resumed');
    assert.equal(await serverSide.move(other.url), true);
    assert.equal((await moved).url, other.url);
    await resumed;
    assert.equal(s.url, other.url);
    await echoRoundTrip(s, 'at the new endpoint');

    // A captured genuine MOVE, replayed later, moves nothing: it names where the client already
    // is. Pointed elsewhere under the same id, its MAC fails.
    const d = new FrameDecoder();
    const genuine = inj.received.flatMap((b) => d.push(b)).find((f) => f.type === FrameType.MOVE);
    assert.ok(genuine);
    const back = { ...genuine, url: srv.ws };
    let movedAgain = 0;
    s.on('moved', () => movedAgain++);
    inj.inject(encodeFrame(genuine));
    inj.inject(encodeFrame(back));
    await warningCount(2);
    await echoRoundTrip(s, 'not moved again');
    assert.equal(s.url, other.url);
    assert.equal(movedAgain, 0);
    assert.deepEqual(
      warnings.map((w) => w.code),
      ['MOVE_INVALID', 'MOVE_INVALID'],
    );
  });
});

describe('tentative MOVE', () => {
  /** An open session on a test server, its server side, and the codes of its warnings. */
  async function openSession(t: { after(fn: () => unknown): void }) {
    const srv = await startTestServer();
    t.after(() => srv.close());
    const s = connect(srv.ws, { service: 'echo', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
    t.after(() => s.close());
    const warnings: string[] = [];
    s.on('warning', (w) => warnings.push(w.code));
    await s.ready;
    const serverSide = srv.server.getSession(s.id as string);
    assert.ok(serverSide);
    return { srv, s, serverSide, warnings };
  }

  it('resumes where it came from when the new endpoint cannot be reached, and follows a repeat of the MOVE', async (t) => {
    const { srv, s, serverSide, warnings } = await openSession(t);
    // A port that was just free: nothing listens there.
    const gone = await srv.server.listen('ws://127.0.0.1:0');
    await gone.close();
    for (const round of [1, 2]) {
      const moved = nextEvent(s, 'moved');
      const resumed = nextEvent(s, 'resumed');
      // The second MOVE repeats the first (same id, same endpoint): the client follows it again
      // because it came back in between.
      assert.equal(await serverSide.move(gone.url), true);
      assert.equal((await moved).url, gone.url);
      await resumed;
      assert.equal(s.url, srv.ws, `round ${round}: back where it came from`);
      await echoRoundTrip(s, `still served, round ${round}`);
    }
    assert.ok(warnings.includes('TRANSPORT_CLOSED'), warnings.join());
  });

  it('resumes where it came from when the new endpoint says the migration aborted', async (t) => {
    const { srv, s, serverSide, warnings } = await openSession(t);
    let asked = 0;
    const aborting = await startTestServer({
      restore: async () => {
        asked++;
        throw new RoamError('MIGRATION_ABORTED', 'the migration bringing this session here was aborted');
      },
    });
    t.after(() => aborting.close());
    const resumed = nextEvent(s, 'resumed');
    assert.equal(await serverSide.move(aborting.ws), true);
    await resumed;
    assert.equal(s.url, srv.ws);
    assert.equal(asked, 1);
    assert.deepEqual(warnings, ['MIGRATION_ABORTED']);
    await echoRoundTrip(s, 'served where it was');
  });
});

describe('MOVE hint', () => {
  /** A connector that records each transport it opens: URL, and whether and how it was closed. */
  function trackingConnector() {
    const opened: Array<{ url: string; closed: boolean; how?: 'close' | 'abort'; whenClosed: Promise<void> }> = [];
    let onOpen = (): void => {};
    const connector: Connector = async (url, o) => {
      const t = await connectTransport(url, { localAddress: o.localAddress });
      let closed = (): void => {};
      const rec: (typeof opened)[number] = { url, closed: false, whenClosed: new Promise<void>((r) => (closed = r)) };
      opened.push(rec);
      // Closed either way: with the transport's goodbye, or aborted without one.
      for (const method of ['close', 'abort'] as const) {
        const end = t[method]?.bind(t);
        if (!end) continue;
        t[method] = () => {
          rec.closed = true;
          rec.how ??= method;
          closed();
          end();
        };
      }
      onOpen();
      return t;
    };
    /** Resolves once `n` transports were opened in all. */
    const openedCount = (n: number): Promise<void> =>
      new Promise((r) => {
        onOpen = () => opened.length >= n && r();
        onOpen();
      });
    return { connector, opened, openedCount };
  }

  /** A test server listening twice (`other` is where hints point), and a client connected by `connector`. */
  async function setup(t: { after(fn: () => unknown): void }, connector: Connector) {
    const srv = await startTestServer();
    t.after(() => srv.close());
    const other = await srv.server.listen('ws://127.0.0.1:0');
    const s = connect(srv.ws, { service: 'echo', reconnect: { initialDelayMs: 5 }, connector });
    t.after(() => s.close());
    return { srv, other, s };
  }

  it('opens the transport to the announced endpoint ahead of the MOVE, keeps the old one, and resumes on it', async (t) => {
    const tc = trackingConnector();
    const { srv, other, s } = await setup(t, tc.connector);
    const events: string[] = [];
    s.on('event', (e) => events.push(e.type));
    await s.ready;
    const serverSide = srv.server.getSession(s.id as string);
    assert.ok(serverSide);

    assert.equal(await serverSide.hintMove(other.url), true);
    await tc.openedCount(2);
    assert.equal(tc.opened[1]?.url, other.url, 'the second transport goes to the announced endpoint');
    // Nothing moved: the session is still served on its first transport.
    await echoRoundTrip(s, 'still on the first transport');
    assert.equal(s.url, srv.ws);
    assert.deepEqual(events, ['open']);

    const resumed = nextEvent(s, 'resumed');
    assert.equal(await serverSide.move(other.url), true);
    await resumed;
    assert.equal(s.url, other.url);
    await echoRoundTrip(s, 'at the announced endpoint');
    assert.equal(tc.opened.length, 2, 'the MOVE used the prepared transport: no third connection');
    assert.equal(tc.opened[1]?.closed, false);
    // The old endpoint handed the session over: its transport is cut without a close handshake,
    // which would cost both ends work and tell neither anything.
    assert.equal(tc.opened[0]?.how, 'abort');
    assert.deepEqual(events, ['open', 'moved', 'suspended', 'resumed']);
  });

  it('a MOVE that arrives while the prepared transport is still connecting waits for it and resumes on it', async (t) => {
    const tc = trackingConnector();
    // The connection to the announced endpoint completes only when the test says so.
    let release = (): void => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let gated = '';
    const { srv, other, s } = await setup(t, async (url, o) => {
      if (url === gated) await gate;
      return tc.connector(url, o);
    });
    gated = other.url;
    await s.ready;
    const serverSide = srv.server.getSession(s.id as string);
    assert.ok(serverSide);
    await serverSide.hintMove(other.url);
    const suspended = nextEvent(s, 'suspended');
    assert.equal(await serverSide.move(other.url), true);
    await suspended;
    const resumed = nextEvent(s, 'resumed');
    release();
    await resumed;
    await echoRoundTrip(s, 'resumed on the transport the hint opened');
    assert.deepEqual(
      tc.opened.map((o) => o.url),
      [srv.ws, other.url],
      'one connection to the new endpoint: the one the hint started',
    );
  });

  it('drops a hint whose proof does not verify, or that is a MOVE proof under the hint flag', async (t) => {
    const tc = trackingConnector();
    let inject: ((b: Uint8Array) => void) | undefined;
    const { srv, other, s } = await setup(t, async (url, o) => {
      const tr = await tc.connector(url, o);
      const bind = tr.bind.bind(tr);
      tr.bind = (h) => {
        inject = h.data;
        bind(h);
      };
      return tr;
    });
    const warnings: string[] = [];
    s.on('warning', (w) => warnings.push(w.code));
    await s.ready;
    const serverSide = srv.server.getSession(s.id as string);
    assert.ok(serverSide);
    const forged = { type: FrameType.MOVE, moveId: 1, url: other.url, token: new Uint8Array(0), hint: true } as const;
    inject?.(encodeFrame({ ...forged, mac: randomBytes(32) }));
    // A genuine MOVE proof must not pass as a hint (the labels differ), and the reverse.
    const moveProof = await moveMac(serverSide.keyForResume, serverSide.sessionId, 1, other.url, new Uint8Array(0));
    inject?.(encodeFrame({ ...forged, mac: moveProof }));
    await echoRoundTrip(s, 'unmoved');
    assert.deepEqual(warnings, ['MOVE_INVALID', 'MOVE_INVALID']);
    assert.equal(tc.opened.length, 1, 'no transport was opened for a hint that does not verify');
  });

  it('closes a prepared transport when the session closes', async (t) => {
    const tc = trackingConnector();
    const { srv, other, s } = await setup(t, tc.connector);
    await s.ready;
    const serverSide = srv.server.getSession(s.id as string);
    assert.ok(serverSide);
    await serverSide.hintMove(other.url);
    await tc.openedCount(2);
    const closed = nextEvent(s, 'closed');
    s.close();
    await closed;
    // The abort is chained on the connection promise, so it lands after `closed`.
    await tc.opened[1]?.whenClosed;
    assert.equal(tc.opened[1]?.closed, true);
  });
});
