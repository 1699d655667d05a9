import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { RoamError } from '../wire/index.js';
import {
  CONTINUATION_FORMAT_VERSION,
  CONTINUATION_MAGIC,
  type Continuation,
  continuationOverhead,
  crc32c,
  decodeContinuation,
  encodeContinuation,
  type SessionContinuation,
} from './continuation.js';
import { encodeStateValue, StateStore } from './state.js';
import { MigratableTimers, type TimerRecord, type WallClock } from './timers.js';

const MAGIC = new TextEncoder().encode(CONTINUATION_MAGIC);
const DECODE_CODES = new Set(['CONTINUATION_CORRUPT', 'CONTINUATION_VERSION']);

function codeOf(fn: () => unknown): string | 'ok' {
  try {
    fn();
    return 'ok';
  } catch (err) {
    if (err instanceof RoamError) return err.code;
    throw err;
  }
}

/** Decoding may fail only with a continuation code; anything else (TypeError, RangeError) fails the test. */
function decodeOrCode(bytes: Uint8Array): Continuation | string {
  try {
    return decodeContinuation(bytes);
  } catch (err) {
    assert.ok(err instanceof RoamError, `non-RoamError thrown: ${String(err)}`);
    assert.ok(DECODE_CODES.has(err.code), `unexpected code ${err.code}`);
    return err.code;
  }
}

const hex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

/** Wraps an arbitrary body in a header and checksum that are valid, to reach the body parser. */
function frame(body: Uint8Array, version = CONTINUATION_FORMAT_VERSION): Uint8Array {
  const out = new Uint8Array(10 + body.length + 4);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  view.setUint16(4, version);
  view.setUint32(6, body.length);
  out.set(body, 10);
  view.setUint32(10 + body.length, crc32c(out.subarray(0, 10 + body.length)));
  return out;
}

// ---------------------------------------------------------------------------------------------
// arbitraries

const wellFormed = (maxLength: number) => fc.string({ unit: 'grapheme', maxLength });
const timeArb = fc.oneof(
  fc.integer({ min: 0, max: 2 ** 50 }),
  fc.double({ noNaN: true, noDefaultInfinity: true }).filter((x) => !Object.is(x, -0)),
);
const stateArb = fc.uniqueArray(fc.tuple(wellFormed(16), fc.uint8Array({ maxLength: 40 })), {
  selector: (e) => e[0],
  maxLength: 5,
});
const timerArb: fc.Arbitrary<TimerRecord> = fc
  .record({
    name: wellFormed(10),
    deadline: timeArb,
    periodMs: fc.option(fc.double({ min: 0.001, max: 1e9, noNaN: true }), { nil: undefined }),
    catchUp: fc.constantFrom('skip' as const, 'burst' as const),
  })
  .map((t) => (t.periodMs === undefined ? { name: t.name, deadline: t.deadline, catchUp: t.catchUp } : t));
const transportArb = fc
  .record({
    peerAckedSeq: fc.nat(2 ** 40),
    offsets: fc.uniqueArray(fc.integer({ min: 1, max: 20 }), { maxLength: 5 }),
    extra: fc.nat(5),
    recvSeq: fc.nat(),
    channels: fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 5, maxLength: 5 }),
    payloads: fc.array(fc.uint8Array({ maxLength: 20 }), { minLength: 5, maxLength: 5 }),
    inbound: fc.array(fc.record({ channel: fc.integer({ min: 0, max: 0xffff }), payload: fc.uint8Array() }), {
      maxLength: 3,
    }),
  })
  .map((r) => {
    const offs = [...r.offsets].sort((a, b) => a - b);
    return {
      sentSeq: r.peerAckedSeq + (offs.at(-1) ?? 0) + r.extra,
      recvSeq: r.recvSeq,
      peerAckedSeq: r.peerAckedSeq,
      unacked: offs.map((o, i) => ({
        seq: r.peerAckedSeq + o,
        channel: r.channels[i] as number,
        payload: r.payloads[i] as Uint8Array,
      })),
      inbound: r.inbound,
    };
  });
const sessionArb: fc.Arbitrary<SessionContinuation> = fc.record({
  sessionId: fc.uint8Array({ minLength: 16, maxLength: 16 }),
  sessionKey: fc.uint8Array({ minLength: 32, maxLength: 32 }),
  state: stateArb,
  exported: fc.uniqueArray(wellFormed(8), { maxLength: 3 }),
  transport: transportArb,
  dependsOn: fc.uniqueArray(fc.uint8Array({ minLength: 16, maxLength: 16 }).map(hex), { maxLength: 3 }),
  suspendedAt: timeArb,
});
const continuationArb: fc.Arbitrary<Continuation> = fc.record({
  kind: fc.constantFrom('internal' as const, 'complete' as const),
  service: fc.record({
    name: wellFormed(20).filter((s) => s.length > 0),
    version: wellFormed(10),
    compat: fc.array(wellFormed(10), { maxLength: 3 }),
  }),
  instanceKey: fc.option(wellFormed(20), { nil: null }),
  instanceState: stateArb,
  timers: fc.uniqueArray(timerArb, { selector: (t) => t.name, maxLength: 4 }),
  sessions: fc.uniqueArray(sessionArb, { selector: (s) => hex(s.sessionId), maxLength: 3 }),
  createdAt: timeArb,
  expiresAt: timeArb,
});

function sample(): Continuation {
  const id = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
  return {
    kind: 'internal',
    service: { name: 'chat', version: '1.4.2', compat: ['roam/1', 'chat-state/3'] },
    instanceKey: 'room-42',
    instanceState: [['members', encodeStateValue(['ann', 'bob'])]],
    timers: [
      { name: 'tick', deadline: 1_700_000_001_000, periodMs: 1000, catchUp: 'skip' },
      { name: 'expire', deadline: 1_700_000_060_000, catchUp: 'skip' },
    ],
    sessions: [
      {
        sessionId: id,
        sessionKey: new Uint8Array(32).fill(7),
        state: [
          ['cursor', encodeStateValue({ line: 3, col: 14 })],
          ['nick', encodeStateValue('ann')],
        ],
        exported: ['cursor'],
        transport: {
          sentSeq: 12,
          recvSeq: 9,
          peerAckedSeq: 10,
          unacked: [
            { seq: 11, channel: 0, payload: Uint8Array.of(1, 2, 3) },
            { seq: 12, channel: 2, payload: Uint8Array.of(4) },
          ],
          inbound: [{ channel: 1, payload: Uint8Array.of(9, 9) }],
        },
        dependsOn: ['00112233445566778899aabbccddeeff'],
        suspendedAt: 1_700_000_000_500,
      },
    ],
    createdAt: 1_700_000_000_600,
    expiresAt: 1_700_086_400_600,
  };
}

// ---------------------------------------------------------------------------------------------

describe('crc32c', () => {
  it('matches the standard check value and a byte-at-a-time reference (property)', () => {
    assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
    assert.equal(crc32c(new Uint8Array()), 0);
    const reference = (b: Uint8Array): number => {
      let c = 0xffffffff;
      for (const x of b) {
        c ^= x;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
      }
      return (c ^ 0xffffffff) >>> 0;
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), fc.nat(7), (b, skip) => {
        const view = b.subarray(Math.min(skip, b.length));
        assert.equal(crc32c(view), reference(view));
      }),
    );
  });
});

describe('continuation encoding', () => {
  it('round-trips a sample and starts with the magic and version', () => {
    const c = sample();
    const bytes = encodeContinuation(c);
    assert.deepEqual([...bytes.subarray(0, 6)], [0x52, 0x4d, 0x43, 0x4e, 0, 1]);
    assert.deepEqual(decodeContinuation(bytes), c);
  });

  it('round-trips arbitrary continuations (property)', () => {
    fc.assert(
      fc.property(continuationArb, (c) => {
        // structuredClone: fast-check builds records without a prototype; decoded ones have Object's.
        assert.deepEqual(decodeContinuation(encodeContinuation(c)), structuredClone(c));
      }),
      { numRuns: 300 },
    );
  });

  it('decodes from a view at any offset and shares no memory with the input', () => {
    const enc = encodeContinuation(sample());
    const big = new Uint8Array(enc.length + 13);
    big.set(enc, 7);
    const view = big.subarray(7, 7 + enc.length);
    const c = decodeContinuation(view);
    assert.deepEqual(c, sample());
    big.fill(0);
    assert.deepEqual(c, sample());
    assert.equal(Object.getPrototypeOf(c.sessions[0]?.sessionId), Uint8Array.prototype);
  });

  it('carries real state and timers end to end', () => {
    const store = new StateStore();
    store.set('doc', { title: 'x', tags: new Set(['a']), at: new Date(5) });
    store.export('doc');
    const clock: WallClock = { now: () => 1_000, setTimeout: () => 0, clearTimeout: () => {} };
    const timers = new MigratableTimers({ clock, fire: () => {} });
    timers.setInterval('autosave', 500, { catchUp: 'burst' });
    const c: Continuation = {
      ...sample(),
      instanceState: store.snapshot(),
      timers: timers.suspend(),
    };
    const back = decodeContinuation(encodeContinuation(c));
    const restored = StateStore.restore(back.instanceState);
    assert.deepEqual(restored.get('doc'), store.get('doc'));
    assert.deepEqual(MigratableTimers.restore(back.timers, { clock, fire: () => {} }).list(), timers.list());
  });

  it('refuses to encode what decode would reject, with INVALID_ARGUMENT', () => {
    const s0 = sample().sessions[0] as SessionContinuation;
    const bad: Array<[string, Continuation]> = [
      ['kind', { ...sample(), kind: 'partial' as 'internal' }],
      ['empty name', { ...sample(), service: { name: '', version: '1', compat: [] } }],
      ['long name', { ...sample(), service: { name: 'n'.repeat(256), version: '1', compat: [] } }],
      ['lone surrogate', { ...sample(), instanceKey: '\ud800' }],
      [
        'dup state key',
        {
          ...sample(),
          instanceState: [
            ['a', Uint8Array.of(1)],
            ['a', Uint8Array.of(2)],
          ],
        },
      ],
      ['dup timer', { ...sample(), timers: [sample().timers[0] as TimerRecord, sample().timers[0] as TimerRecord] }],
      ['zero period', { ...sample(), timers: [{ name: 't', deadline: 1, periodMs: 0, catchUp: 'skip' }] }],
      ['nan time', { ...sample(), createdAt: Number.NaN }],
      ['short id', { ...sample(), sessions: [{ ...s0, sessionId: new Uint8Array(15) }] }],
      ['short key', { ...sample(), sessions: [{ ...s0, sessionKey: new Uint8Array(31) }] }],
      ['dup session', { ...sample(), sessions: [s0, s0] }],
      ['upper hex', { ...sample(), sessions: [{ ...s0, dependsOn: ['00112233445566778899AABBCCDDEEFF'] }] }],
      ['short hex', { ...sample(), sessions: [{ ...s0, dependsOn: ['0011'] }] }],
      ['acked > sent', { ...sample(), sessions: [{ ...s0, transport: { ...s0.transport, peerAckedSeq: 13 } }] }],
      [
        'unacked order',
        {
          ...sample(),
          sessions: [{ ...s0, transport: { ...s0.transport, unacked: [...s0.transport.unacked].reverse() } }],
        },
      ],
      [
        'channel',
        {
          ...sample(),
          sessions: [
            { ...s0, transport: { ...s0.transport, inbound: [{ channel: 70000, payload: new Uint8Array() }] } },
          ],
        },
      ],
      ['fractional seq', { ...sample(), sessions: [{ ...s0, transport: { ...s0.transport, recvSeq: 1.5 } }] }],
      ['not bytes', { ...sample(), instanceState: [['a', [1, 2] as unknown as Uint8Array]] }],
      ['missing field', { ...sample(), sessions: undefined as unknown as [] }],
    ];
    for (const [what, c] of bad)
      assert.equal(
        codeOf(() => encodeContinuation(c)),
        'INVALID_ARGUMENT',
        what,
      );
  });
});

describe('continuation decoding of damaged input', () => {
  it('every truncation is CONTINUATION_CORRUPT', () => {
    fc.assert(
      fc.property(continuationArb, (c) => {
        const enc = encodeContinuation(c);
        for (let n = 0; n < enc.length; n++) assert.equal(decodeOrCode(enc.subarray(0, n)), 'CONTINUATION_CORRUPT');
      }),
      { numRuns: 30 },
    );
    const enc = encodeContinuation(sample());
    const longer = new Uint8Array(enc.length + 1);
    longer.set(enc);
    assert.equal(decodeOrCode(longer), 'CONTINUATION_CORRUPT');
  });

  it('every single-byte change of every byte is detected (exhaustive on a sample)', () => {
    const enc = encodeContinuation(sample());
    const copy = new Uint8Array(enc);
    for (let i = 0; i < enc.length; i++) {
      for (let x = 1; x < 256; x++) {
        copy[i] = (enc[i] as number) ^ x;
        const r = decodeOrCode(copy);
        assert.equal(typeof r, 'string', `flip at ${i} by ${x} decoded`);
        if (i !== 4 && i !== 5) assert.equal(r, 'CONTINUATION_CORRUPT', `flip at ${i}`);
      }
      copy[i] = enc[i] as number;
    }
  });

  it('single-byte changes of arbitrary continuations are detected (property)', () => {
    fc.assert(
      fc.property(continuationArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (c, at, x) => {
        const enc = encodeContinuation(c);
        const i = at % enc.length;
        enc[i] = (enc[i] as number) ^ x;
        assert.equal(typeof decodeOrCode(enc), 'string');
      }),
      { numRuns: 500 },
    );
  });

  it('an unknown format version is CONTINUATION_VERSION, whatever follows', () => {
    const enc = encodeContinuation(sample());
    for (const v of [0, 2, 0xffff]) {
      const copy = new Uint8Array(enc);
      new DataView(copy.buffer).setUint16(4, v);
      assert.equal(decodeOrCode(copy), 'CONTINUATION_VERSION');
      assert.equal(decodeOrCode(frame(Uint8Array.of(0x90), v)), 'CONTINUATION_VERSION');
    }
  });

  it('random bytes only ever give a continuation error (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        assert.equal(typeof decodeOrCode(bytes), 'string');
        const withMagic = new Uint8Array(bytes.length + 6);
        withMagic.set(MAGIC);
        withMagic[5] = 1;
        withMagic.set(bytes, 6);
        assert.equal(decodeOrCode(withMagic), 'CONTINUATION_CORRUPT');
      }),
      { numRuns: 2000 },
    );
  });

  it('random bodies behind a valid header and checksum are CONTINUATION_CORRUPT (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (body) => {
        assert.equal(decodeOrCode(frame(body)), 'CONTINUATION_CORRUPT');
      }),
      { numRuns: 3000 },
    );
  });

  it('mutated valid bodies with a recomputed checksum never throw anything unexpected (property)', () => {
    fc.assert(
      fc.property(
        continuationArb,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        (c, edits) => {
          const enc = encodeContinuation(c);
          const body = enc.slice(10, enc.length - 4);
          for (const [at, v] of edits) body[at % body.length] = v;
          const r = decodeOrCode(frame(body));
          // Either rejected, or a valid continuation that encodes back to the same body.
          if (typeof r !== 'string') assert.deepEqual(decodeContinuation(encodeContinuation(r)), r);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('huge declared lengths are rejected without allocating', () => {
    const before = process.memoryUsage();
    const started = performance.now();
    const header = new Uint8Array(20);
    header.set(MAGIC);
    header[5] = 1;
    new DataView(header.buffer).setUint32(6, 0xfffffff0);
    assert.equal(decodeOrCode(header), 'CONTINUATION_CORRUPT');
    // msgpack headers inside a valid frame that claim far more than is there.
    const bodies = [
      [0xdd, 0x7f, 0xff, 0xff, 0xff], // array32
      [0xdf, 0x7f, 0xff, 0xff, 0xff], // map32
      [0xc6, 0x7f, 0xff, 0xff, 0xff], // bin32
      [0xdb, 0x7f, 0xff, 0xff, 0xff], // str32
      [0xc9, 0x7f, 0xff, 0xff, 0xff, 0x01], // ext32
      [0x9a, 0xdd, 0x7f, 0xff, 0xff, 0xff], // nested
    ];
    for (const b of bodies) assert.equal(decodeOrCode(frame(Uint8Array.from(b))), 'CONTINUATION_CORRUPT');
    const after = process.memoryUsage();
    assert.ok(performance.now() - started < 1000);
    assert.ok(after.arrayBuffers - before.arrayBuffers < 16 * 1024 * 1024, 'allocated a large buffer');
    assert.ok(after.heapUsed - before.heapUsed < 64 * 1024 * 1024, 'allocated a large heap object');
  });

  it('well-formed msgpack of the wrong shape is CONTINUATION_CORRUPT', () => {
    const enc = encodeContinuation(sample());
    const body = enc.slice(10, enc.length - 4);
    // 0x9a = fixarray(10); replacing it with fixarray(9) or a map header breaks the shape.
    for (const first of [0x99, 0x80, 0xc0, 0x01]) {
      const b = new Uint8Array(body);
      b[0] = first;
      assert.equal(decodeOrCode(frame(b)), 'CONTINUATION_CORRUPT');
    }
  });
});

describe('continuation overhead', () => {
  it('is at most 256 bytes for one session, one timer and 4 KiB of state in one value', (t) => {
    const value = encodeStateValue(new Uint8Array(4096).fill(0xab));
    const c: Continuation = {
      kind: 'internal',
      service: { name: 'chat', version: '1.4.2', compat: ['roam/1'] },
      instanceKey: null,
      instanceState: [],
      timers: [{ name: 'tick', deadline: Date.now() + 1000, periodMs: 1000, catchUp: 'skip' }],
      sessions: [
        {
          sessionId: new Uint8Array(16).fill(1),
          sessionKey: new Uint8Array(32).fill(2),
          state: [['doc', value]],
          exported: [],
          transport: { sentSeq: 123_456, recvSeq: 123_400, peerAckedSeq: 123_456, unacked: [], inbound: [] },
          dependsOn: [],
          suspendedAt: Date.now(),
        },
      ],
      createdAt: Date.now(),
      expiresAt: Date.now() + 86_400_000,
    };
    const overhead = continuationOverhead(c);
    t.diagnostic(`overhead ${overhead} bytes (total ${encodeContinuation(c).length}, state ${value.length + 3})`);
    assert.ok(overhead <= 256, `overhead ${overhead}`);
    assert.equal(overhead, encodeContinuation(c).length - value.length - 'doc'.length);

    // A handful of keys costs only a few bytes more each.
    const keys: Array<[string, Uint8Array]> = ['cursor', 'nick', 'prefs', 'draft', 'scroll'].map((k) => [
      k,
      encodeStateValue(k.repeat(10)),
    ]);
    const five = { ...c, sessions: [{ ...(c.sessions[0] as SessionContinuation), state: keys, exported: ['nick'] }] };
    t.diagnostic(`overhead with 5 keys ${continuationOverhead(five)} bytes`);
    assert.ok(continuationOverhead(five) <= 256);
  });
});
