import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeFrame, type Frame, FrameDecoder, FrameType } from '../wire/index.js';
import { ManualClock } from './clock.js';
import { FramedConnection } from './connection.js';
import { SessionEngine } from './engine.js';
import type { SessionEvent } from './events.js';
import { type MemoryTransport, memoryTransportPair } from './transport.js';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Seeded PRNG so a failure reproduces. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function link(a: SessionEngine, b: SessionEngine): [MemoryTransport, MemoryTransport] {
  const [ta, tb] = memoryTransportPair();
  // Each side learns the other's last received seq from the (omitted) resume handshake.
  const aLast = a.lastReceivedSeq;
  const bLast = b.lastReceivedSeq;
  a.attach(new FramedConnection(ta), bLast);
  b.attach(new FramedConnection(tb), aLast);
  return [ta, tb];
}

/** An engine wired to a raw peer that the test drives frame by frame. */
function rawPeer(engine: SessionEngine): { frames: Frame[]; send(f: Frame): void; transport: MemoryTransport } {
  const [ta, tb] = memoryTransportPair();
  const frames: Frame[] = [];
  const dec = new FrameDecoder();
  tb.bind({ data: (b) => frames.push(...dec.push(b)), close: () => {} });
  engine.attach(new FramedConnection(ta), 0);
  return { frames, send: (f) => tb.send(encodeFrame(f)), transport: tb };
}

const u8 = (n: number): Uint8Array => new TextEncoder().encode(String(n));
const num = (b: Uint8Array): number => Number(new TextDecoder().decode(b));

describe('SessionEngine', () => {
  it('delivers exactly once and in order across many random transport drops', async () => {
    const clock = new ManualClock();
    const a = new SessionEngine({ clock });
    const b = new SessionEngine({ clock });
    const gotA: number[] = [];
    const gotB: number[] = [];
    a.on('message', (p) => gotA.push(num(p)));
    b.on('message', (p) => gotB.push(num(p)));
    const rand = rng(42);
    let [ta] = link(a, b);
    const total = 3000;
    let sentA = 0;
    let sentB = 0;
    while (sentA < total || sentB < total) {
      const burst = Math.floor(rand() * 50);
      for (let i = 0; i < burst && sentA < total; i++) a.send(u8(++sentA));
      for (let i = 0; i < burst && sentB < total; i++) b.send(u8(++sentB));
      if (rand() < 0.5) await tick();
      if (rand() < 0.3) clock.advance(15);
      if (rand() < 0.2) {
        ta.close();
        await tick();
        assert.equal(a.state, 'detached');
        assert.equal(b.state, 'detached');
        [ta] = link(a, b);
      }
    }
    for (let i = 0; i < 10; i++) {
      await tick();
      clock.advance(20);
    }
    assert.deepEqual(
      gotA,
      Array.from({ length: total }, (_, i) => i + 1),
    );
    assert.deepEqual(
      gotB,
      Array.from({ length: total }, (_, i) => i + 1),
    );
    assert.equal(a.bufferedBytes, 0, 'everything acknowledged');
    assert.ok(a.stats().retransmitted > 0, 'the test really exercised retransmission');
  });

  it('coalesces ACKs instead of acknowledging every message', async () => {
    const clock = new ManualClock();
    const e = new SessionEngine({ clock, ackEveryFrames: 32 });
    const peer = rawPeer(e);
    for (let seq = 1; seq <= 100; seq++) {
      peer.send({ type: FrameType.DATA, channel: 0, seq, payload: u8(seq) });
    }
    await tick();
    clock.advance(10);
    await tick();
    const acks = peer.frames.filter((f) => f.type === FrameType.ACK);
    assert.ok(acks.length <= 4, `expected <= 4 ACKs for 100 messages, got ${acks.length}`);
    assert.deepEqual(acks.at(-1), { type: FrameType.ACK, seq: 100 });
  });

  it('drops duplicates and treats a sequence gap as a protocol error without losing the session', async () => {
    const e = new SessionEngine({ clock: new ManualClock() });
    const got: number[] = [];
    const events: SessionEvent[] = [];
    e.on('message', (p) => got.push(num(p)));
    e.on('event', (ev) => events.push(ev));
    const peer = rawPeer(e);
    peer.send({ type: FrameType.DATA, channel: 0, seq: 1, payload: u8(1) });
    peer.send({ type: FrameType.DATA, channel: 0, seq: 1, payload: u8(1) });
    peer.send({ type: FrameType.DATA, channel: 0, seq: 3, payload: u8(3) });
    await tick();
    await tick();
    assert.deepEqual(got, [1]);
    assert.equal(e.stats().duplicatesDropped, 1);
    const err = peer.frames.find((f) => f.type === FrameType.ERROR);
    assert.equal(err?.type === FrameType.ERROR && err.code, 'SEQUENCE_GAP');
    assert.equal(e.state, 'detached');
    assert.equal(events[0]?.type, 'suspended');
  });

  it('applies backpressure: send() returns false at the high-water mark and drain follows the ACK', async () => {
    const e = new SessionEngine({ clock: new ManualClock(), maxReplayBytes: 10_000, highWaterMark: 4000 });
    const peer = rawPeer(e);
    let ok = true;
    let n = 0;
    while (ok) ok = e.send(new Uint8Array(100).fill(++n));
    assert.ok(e.bufferedBytes >= 4000 && e.bufferedBytes < 4200);
    let drained = false;
    e.on('drain', () => {
      drained = true;
    });
    peer.send({ type: FrameType.ACK, seq: n });
    await tick();
    assert.ok(drained);
    assert.equal(e.bufferedBytes, 0);
  });

  it('loses the session with REPLAY_WINDOW_EXCEEDED when the replay window overflows', () => {
    const e = new SessionEngine({ clock: new ManualClock(), maxReplayBytes: 1000 });
    const events: SessionEvent[] = [];
    e.on('event', (ev) => events.push(ev));
    assert.throws(
      () => {
        for (let i = 0; i < 20; i++) e.send(new Uint8Array(100));
      },
      { code: 'REPLAY_WINDOW_EXCEEDED' },
    );
    assert.equal(e.state, 'lost');
    assert.deepEqual(
      events.map((x) => x.type),
      ['lost'],
    );
    assert.equal(events[0]?.type === 'lost' && events[0].reason, 'replay_window_exceeded');
    assert.throws(() => e.send(new Uint8Array(1)), { code: 'INVALID_STATE' });
  });

  it('rejects oversized messages without losing the session', () => {
    const e = new SessionEngine({ clock: new ManualClock(), maxFrameBytes: 1024 });
    assert.throws(() => e.send(new Uint8Array(2000)), { code: 'MESSAGE_TOO_LARGE' });
    assert.equal(e.state, 'detached');
    assert.ok(e.send(new Uint8Array(10)));
  });

  it('declares a silent transport dead after deadProbes heartbeat intervals', async () => {
    const clock = new ManualClock();
    const e = new SessionEngine({ clock, heartbeatMs: 1000, deadProbes: 3 });
    const events: SessionEvent[] = [];
    e.on('event', (ev) => events.push(ev));
    const peer = rawPeer(e);
    clock.advance(2500);
    await tick();
    assert.equal(e.state, 'attached');
    assert.ok(
      peer.frames.some((f) => f.type === FrameType.PING),
      'heartbeats are sent',
    );
    clock.advance(2000);
    await tick();
    assert.equal(e.state, 'detached');
    assert.equal(events[0]?.type === 'suspended' && events[0].code, 'TRANSPORT_DEAD');
  });

  it('a follower answers the leader’s PINGs and sends none of its own while they arrive', async () => {
    const clock = new ManualClock();
    const e = new SessionEngine({ clock, heartbeatMs: 1000, heartbeat: 'follow' });
    const peer = rawPeer(e);
    for (let i = 1; i <= 10; i++) {
      clock.advance(700);
      peer.send({ type: FrameType.PING, id: i, time: clock.now() });
      await tick();
    }
    assert.equal(e.state, 'attached');
    assert.equal(peer.frames.filter((f) => f.type === FrameType.PONG).length, 10, 'every PING is answered');
    assert.equal(peer.frames.filter((f) => f.type === FrameType.PING).length, 0, 'no PING of its own');
    // The leader falls silent: the follower probes after a whole silent interval…
    clock.advance(1000);
    await tick();
    clock.advance(400);
    await tick();
    assert.equal(peer.frames.filter((f) => f.type === FrameType.PING).length, 1, 'it probes once silent');
    // …and still declares the transport dead after deadProbes silent intervals.
    clock.advance(2600);
    await tick();
    assert.equal(e.state, 'detached');
  });

  it('a leader and a follower exchange one PING and one PONG per interval', async () => {
    const clock = new ManualClock();
    const count = { lead: 0, follow: 0 };
    const lead = new SessionEngine({ clock, heartbeatMs: 1000 });
    const follow = new SessionEngine({ clock, heartbeatMs: 1000, heartbeat: 'follow' });
    // As over a network, the follower (the server) attaches first and the leader's PINGs arrive
    // out of phase with the follower's timer.
    const [ta, tb] = memoryTransportPair();
    follow.attach(new FramedConnection(tb), 0);
    clock.advance(300);
    lead.attach(new FramedConnection(ta), 0);
    const sent = (t: MemoryTransport, side: keyof typeof count): void => {
      const send = t.send.bind(t);
      const dec = new FrameDecoder();
      t.send = (b) => {
        count[side] += dec.push(b).filter((f) => f.type === FrameType.PING).length;
        send(b);
      };
    };
    sent(ta, 'lead');
    sent(tb, 'follow');
    for (let i = 0; i < 20; i++) {
      clock.advance(500);
      await tick();
    }
    assert.equal(lead.state, 'attached');
    assert.equal(follow.state, 'attached');
    assert.equal(count.lead, 10);
    // Its first timer fires before the first of the leader's PINGs can have arrived.
    assert.equal(count.follow, 1);
    assert.ok(lead.rtt, 'the leader measures the RTT');
  });

  it('estimates RTT with SRTT/RTTVAR as in RFC 6298 and stretches the heartbeat interval', async () => {
    const clock = new ManualClock();
    const e = new SessionEngine({ clock, heartbeatMs: 1000 });
    const peer = rawPeer(e);
    clock.advance(500);
    peer.send({ type: FrameType.PONG, id: 1, time: 500 - 400 });
    await tick();
    assert.deepEqual(e.rtt, { srtt: 400, rttvar: 200 });
    peer.send({ type: FrameType.PONG, id: 2, time: 500 - 200 });
    await tick();
    assert.deepEqual(e.rtt, { srtt: 375, rttvar: 200 });
    assert.equal(e.heartbeatIntervalMs, 1500);
    assert.equal(e.deadAfterMs, 4500);
  });

  it('refuses an impossible resume claim with RESUME_SEQ_INVALID and keeps its state', () => {
    const e = new SessionEngine({ clock: new ManualClock() });
    e.send(u8(1));
    const [t] = memoryTransportPair();
    assert.throws(() => e.attach(new FramedConnection(t), 5), { code: 'RESUME_SEQ_INVALID' });
    assert.equal(e.lastSentSeq, 1);
    assert.equal(e.bufferedBytes > 0, true);
  });

  it('reports a peer CLOSE as closed(byPeer) and a fatal ERROR as lost', async () => {
    const a = new SessionEngine({ clock: new ManualClock() });
    const evA: SessionEvent[] = [];
    a.on('event', (ev) => evA.push(ev));
    rawPeer(a).send({ type: FrameType.CLOSE, code: 'NORMAL', reason: 'bye' });
    await tick();
    assert.deepEqual(evA, [{ type: 'closed', code: 'NORMAL', reason: 'bye', byPeer: true }]);

    const b = new SessionEngine({ clock: new ManualClock() });
    const evB: SessionEvent[] = [];
    b.on('event', (ev) => evB.push(ev));
    rawPeer(b).send({ type: FrameType.ERROR, code: 'SESSION_EXPIRED', message: 'too late' });
    await tick();
    assert.equal(b.state, 'lost');
    assert.deepEqual(evB, [{ type: 'lost', reason: 'expired', code: 'SESSION_EXPIRED', message: 'too late' }]);
  });

  it('reports a resume when a new transport replaces one that died unnoticed', async () => {
    const e = new SessionEngine({ clock: new ManualClock() });
    const events: SessionEvent[] = [];
    e.on('event', (ev) => events.push(ev));
    rawPeer(e);
    const [t] = memoryTransportPair();
    e.attach(new FramedConnection(t), 0);
    await tick();
    assert.equal(e.state, 'attached');
    assert.deepEqual(
      events.map((x) => x.type),
      ['resumed'],
    );
    assert.equal(events[0]?.type === 'resumed' && events[0].gapMs, 0);
  });

  it('closes gracefully: CLOSE goes out after queued data', async () => {
    const e = new SessionEngine({ clock: new ManualClock() });
    const peer = rawPeer(e);
    e.send(u8(1));
    e.send(u8(2));
    e.close('done');
    await tick();
    assert.deepEqual(
      peer.frames.map((f) => f.type),
      [FrameType.DATA, FrameType.DATA, FrameType.CLOSE],
    );
  });

  describe('freeze (stop-and-copy)', () => {
    const data = (seq: number): Frame => ({ type: FrameType.DATA, seq, channel: 0, payload: u8(seq) });

    it('holds inbound DATA unacknowledged while frozen; thaw delivers it in order', async () => {
      const clock = new ManualClock();
      const e = new SessionEngine({ clock, ackDelayMs: 1 });
      const got: number[] = [];
      e.on('message', (p) => got.push(num(p)));
      const peer = rawPeer(e);
      peer.send(data(1));
      await tick();
      e.freeze();
      assert.equal(e.frozen, true);
      peer.send(data(2));
      peer.send(data(3));
      peer.send(data(2)); // a retransmitted duplicate while held
      await tick();
      clock.advance(50);
      await tick();
      assert.deepEqual(got, [1], 'nothing delivered while frozen');
      assert.equal(e.lastReceivedSeq, 1, 'the snapshot point does not move');
      const acks = peer.frames.filter((f) => f.type === FrameType.ACK).map((f) => (f as { seq: number }).seq);
      assert.ok(
        acks.every((s) => s <= 1),
        `no ACK beyond the freeze point: ${acks}`,
      );
      e.thaw();
      assert.equal(e.frozen, false);
      assert.deepEqual(got, [1, 2, 3]);
      assert.equal(e.lastReceivedSeq, 3);
      clock.advance(5);
      await tick();
      const last = peer.frames.filter((f) => f.type === FrameType.ACK).at(-1) as { seq: number } | undefined;
      assert.equal(last?.seq, 3, 'acknowledged after the thaw');
    });

    it('a gap while frozen is still a protocol error', async () => {
      const e = new SessionEngine({ clock: new ManualClock() });
      const peer = rawPeer(e);
      const events: SessionEvent[] = [];
      e.on('event', (ev) => events.push(ev));
      e.freeze();
      peer.send(data(1));
      peer.send(data(3));
      await tick();
      await tick();
      assert.ok(
        peer.frames.some((f) => f.type === FrameType.ERROR && f.code === 'SEQUENCE_GAP'),
        'SEQUENCE_GAP sent',
      );
    });

    it('a resume while frozen forgets what was held: the peer retransmits from the snapshot point', async () => {
      const clock = new ManualClock();
      const e = new SessionEngine({ clock });
      const got: number[] = [];
      e.on('message', (p) => got.push(num(p)));
      const first = rawPeer(e);
      first.send(data(1));
      await tick();
      e.freeze();
      first.send(data(2));
      await tick();
      e.dropTransport();
      await tick();
      // The peer resumes; RESUMED told it our last seq is 1, so it sends 2 again.
      const again = rawPeer(e);
      again.send(data(2));
      again.send(data(3));
      await tick();
      assert.deepEqual(got, [1]);
      e.thaw();
      assert.deepEqual(got, [1, 2, 3], 'each message once');
    });

    it('held bytes are bounded: past maxReplayBytes the transport is dropped, nothing delivered twice', async () => {
      const clock = new ManualClock();
      const e = new SessionEngine({ clock, maxReplayBytes: 1024 });
      const events: SessionEvent[] = [];
      e.on('event', (ev) => events.push(ev));
      const peer = rawPeer(e);
      e.freeze();
      for (let i = 1; i <= 4; i++)
        peer.send({ type: FrameType.DATA, seq: i, channel: 0, payload: new Uint8Array(400) });
      await tick();
      assert.equal(e.state, 'detached');
      assert.ok(events.some((ev) => ev.type === 'suspended' && ev.code === 'OVERLOADED'));
      assert.equal(e.lastReceivedSeq, 0);
    });
  });
});
