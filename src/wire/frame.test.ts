import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CODES, type CodeName, codeName, codeNumber } from './codes.js';
import { FrameDecoder } from './decoder.js';
import { ProtocolError, RoamError } from './errors.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  decodeFrame,
  decodePayload,
  encodeData,
  encodeFrame,
  type Frame,
  FrameType,
  HEADER_BYTES,
  KEY_BYTES,
  MAC_BYTES,
  MAX_INSTANCE_KEY_BYTES,
  MAX_SERVICE_NAME_BYTES,
  MAX_TEXT_BYTES,
  NONCE_BYTES,
  SESSION_ID_BYTES,
  WIRE_VERSION,
} from './frame.js';

// ---------------------------------------------------------------------------------------------
// helpers

/** Deterministic, non-constant bytes so that field mix-ups show up as inequality. */
function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 37 + i * 31) & 0xff;
  return b;
}

function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function concat(...parts: (Uint8Array | readonly number[])[]): Uint8Array {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function u16(v: number): number[] {
  return [(v >>> 8) & 0xff, v & 0xff];
}

function u32(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}

/** Builds a raw frame with a hand-made header; `length` defaults to the real payload length. */
function raw(
  type: number,
  payload: Uint8Array | readonly number[],
  opts: { version?: number; flags?: number; reserved?: number; length?: number } = {},
): Uint8Array {
  const header = [
    opts.version ?? WIRE_VERSION,
    type,
    opts.flags ?? 0,
    opts.reserved ?? 0,
    ...u32(opts.length ?? payload.length),
  ];
  return concat(header, payload);
}

/** Copies every Uint8Array (so views compare like fresh arrays) and drops undefined fields. */
function normalise(f: Frame): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(f)) {
    if (v === undefined) continue;
    out[k] = v instanceof Uint8Array ? Uint8Array.from(v) : v;
  }
  return out;
}

function assertSameFrame(actual: Frame, expected: Frame): void {
  assert.deepStrictEqual(normalise(actual), normalise(expected));
}

/** Asserts `fn` throws a ProtocolError carrying `code`; returns the error. */
function throwsProtocol(fn: () => unknown, code: CodeName): ProtocolError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== undefined, `expected a ProtocolError ${code}, nothing was thrown`);
  assert.ok(caught instanceof ProtocolError, `expected ProtocolError, got ${String(caught)}`);
  assert.equal(caught.code, code, `expected code ${code}, got ${caught.code}: ${caught.message}`);
  return caught;
}

/** Argument errors are RoamErrors with code INVALID_ARGUMENT (the class is not part of the contract). */
function throwsInvalidArgument(fn: () => unknown): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof RoamError, `expected RoamError INVALID_ARGUMENT, got ${String(caught)}`);
  assert.equal(caught.code, 'INVALID_ARGUMENT', caught.message);
}

/** A RESUME every field of which is valid, to vary one field or flag at a time. */
const validResume = {
  type: FrameType.RESUME,
  sessionId: bytes(SESSION_ID_BYTES),
  nonce: bytes(NONCE_BYTES),
  lastSeq: 1,
  clientNonce: bytes(NONCE_BYTES),
  mac: bytes(MAC_BYTES),
} as const;

const SAMPLES: { name: string; frame: Frame }[] = [
  { name: 'HELLO without key', frame: { type: FrameType.HELLO, publicKey: bytes(KEY_BYTES), service: 'chat' } },
  {
    name: 'HELLO with unicode service and key',
    frame: { type: FrameType.HELLO, publicKey: bytes(KEY_BYTES, 2), service: 'größe-ü', key: 'room/🎲/é' },
  },
  {
    name: 'HELLO with empty service and empty key',
    frame: { type: FrameType.HELLO, publicKey: bytes(KEY_BYTES, 3), service: '', key: '' },
  },
  {
    name: 'HELLO at the service and key size limits',
    frame: {
      type: FrameType.HELLO,
      publicKey: bytes(KEY_BYTES, 4),
      service: 's'.repeat(MAX_SERVICE_NAME_BYTES),
      key: 'k'.repeat(MAX_INSTANCE_KEY_BYTES),
    },
  },
  {
    name: 'WELCOME',
    frame: {
      type: FrameType.WELCOME,
      sessionId: bytes(SESSION_ID_BYTES, 5),
      publicKey: bytes(KEY_BYTES, 6),
      heartbeatMs: 15_000,
      sessionTtlMs: 0xffffffff,
      confirm: bytes(MAC_BYTES, 7),
    },
  },
  {
    name: 'HELLO with key, from a client that prepares (flag bits 0 and 1)',
    frame: { type: FrameType.HELLO, publicKey: bytes(KEY_BYTES, 2), service: 'chat', key: 'k', prepares: true },
  },
  { name: 'CHALLENGE', frame: { type: FrameType.CHALLENGE, nonce: bytes(NONCE_BYTES, 8) } },
  {
    name: 'CHALLENGE prepare (flag bit 0)',
    frame: { type: FrameType.CHALLENGE, nonce: bytes(NONCE_BYTES, 8), prepare: true },
  },
  {
    name: 'RESUME prepared (flag bits 0 and 1)',
    frame: {
      type: FrameType.RESUME,
      sessionId: bytes(SESSION_ID_BYTES, 9),
      nonce: bytes(NONCE_BYTES, 10),
      lastSeq: 7,
      clientNonce: bytes(NONCE_BYTES, 11),
      mac: bytes(MAC_BYTES, 12),
      prepares: true,
      prepared: true,
    },
  },
  {
    name: 'RESUME at the largest safe seq',
    frame: {
      type: FrameType.RESUME,
      sessionId: bytes(SESSION_ID_BYTES, 9),
      nonce: bytes(NONCE_BYTES, 10),
      lastSeq: Number.MAX_SAFE_INTEGER,
      clientNonce: bytes(NONCE_BYTES, 11),
      mac: bytes(MAC_BYTES, 12),
    },
  },
  { name: 'RESUMED', frame: { type: FrameType.RESUMED, lastSeq: 0, mac: bytes(MAC_BYTES, 13) } },
  { name: 'DATA empty', frame: { type: FrameType.DATA, channel: 0, seq: 0, payload: new Uint8Array(0) } },
  {
    name: 'DATA crossing the 32-bit seq boundary',
    frame: { type: FrameType.DATA, channel: 0xffff, seq: 2 ** 32, payload: bytes(1000, 14) },
  },
  { name: 'ACK', frame: { type: FrameType.ACK, seq: 2 ** 32 + 1 } },
  { name: 'PING', frame: { type: FrameType.PING, id: 0xffffffff, time: 1_700_000_000_123.25 } },
  { name: 'PONG', frame: { type: FrameType.PONG, id: 0, time: -0 } },
  {
    name: 'MOVE',
    frame: {
      type: FrameType.MOVE,
      moveId: 42,
      url: 'wss://høst.example/ü?x=1',
      token: bytes(100, 15),
      mac: bytes(MAC_BYTES, 16),
    },
  },
  {
    name: 'MOVE hint (flag bit 0)',
    frame: {
      type: FrameType.MOVE,
      moveId: 7,
      url: 'ws://127.0.0.1:7071',
      token: new Uint8Array(0),
      mac: bytes(MAC_BYTES, 18),
      hint: true,
    },
  },
  {
    name: 'MOVE with empty url and token',
    frame: { type: FrameType.MOVE, moveId: 0, url: '', token: new Uint8Array(0), mac: bytes(MAC_BYTES, 17) },
  },
  { name: 'CLOSE', frame: { type: FrameType.CLOSE, code: 'NORMAL', reason: '' } },
  { name: 'ERROR', frame: { type: FrameType.ERROR, code: 'SESSION_EXPIRED', message: 'expired 🕒 ✓' } },
];

// ---------------------------------------------------------------------------------------------

describe('frame round-trip', () => {
  it('samples cover all twelve frame types', () => {
    const covered = new Set(SAMPLES.map((s) => s.frame.type));
    assert.deepStrictEqual(
      [...covered].sort((a, b) => a - b),
      Object.values(FrameType).sort((a, b) => a - b),
    );
    assert.equal(covered.size, 12);
  });

  for (const { name, frame } of SAMPLES) {
    it(`${name}: encode -> decode gives the same frame`, () => {
      const wire = encodeFrame(frame);
      assertSameFrame(decodeFrame(wire), frame);
    });

    it(`${name}: header is well formed and the encoding is canonical`, () => {
      const wire = encodeFrame(frame);
      assert.ok(wire.length >= HEADER_BYTES, 'wire.length >= HEADER_BYTES');
      assert.equal(wire[0], WIRE_VERSION);
      assert.equal(wire[1], frame.type);
      assert.equal(wire[3], 0, 'reserved byte');
      const view = new DataView(wire.buffer, wire.byteOffset, wire.byteLength);
      assert.equal(view.getUint32(4), wire.length - HEADER_BYTES, 'length field');
      assert.deepStrictEqual(encodeFrame(decodeFrame(wire)), wire);
    });

    it(`${name}: FrameDecoder yields the same frame`, () => {
      const out = new FrameDecoder().push(encodeFrame(frame));
      assert.equal(out.length, 1);
      assertSameFrame(out[0] as Frame, frame);
    });
  }

  it('PING/PONG time keeps every float64 value exactly (NaN, -0, infinities, subnormals)', () => {
    for (const time of [
      Number.NaN,
      -0,
      0,
      Number.POSITIVE_INFINITY,
      Number.NEGATIVE_INFINITY,
      Number.MIN_VALUE,
      -1.5,
    ]) {
      const f = decodeFrame(encodeFrame({ type: FrameType.PONG, id: 1, time }));
      assert.equal(f.type, FrameType.PONG);
      if (f.type === FrameType.PONG) assert.ok(Object.is(f.time, time), `time ${time}`);
    }
  });

  it('every code in the table round-trips in CLOSE and ERROR with its stable number on the wire', () => {
    for (const name of Object.keys(CODES) as CodeName[]) {
      const close = encodeFrame({ type: FrameType.CLOSE, code: name, reason: 'r' });
      assert.equal((close[8] as number) * 256 + (close[9] as number), CODES[name].n);
      assertSameFrame(decodeFrame(close), { type: FrameType.CLOSE, code: name, reason: 'r' });
      const error = encodeFrame({ type: FrameType.ERROR, code: name, message: 'm' });
      assertSameFrame(decodeFrame(error), { type: FrameType.ERROR, code: name, message: 'm' });
    }
  });

  it('a leading U+FEFF (BOM) in text survives the round trip', () => {
    const close: Frame = { type: FrameType.CLOSE, code: 'NORMAL', reason: '\uFEFFhi' };
    assertSameFrame(decodeFrame(encodeFrame(close)), close);
    const hello: Frame = { type: FrameType.HELLO, publicKey: bytes(KEY_BYTES), service: '\uFEFF', key: '\uFEFFk' };
    assertSameFrame(decodeFrame(encodeFrame(hello)), hello);
  });

  it('long CLOSE/ERROR text is cut to fit instead of throwing', () => {
    for (const text of ['x'.repeat(5000), '🎲'.repeat(3000), 'é'.repeat(MAX_TEXT_BYTES)]) {
      const wire = encodeFrame({ type: FrameType.CLOSE, code: 'GOING_AWAY', reason: text });
      assert.ok(wire.length - HEADER_BYTES <= 4 + MAX_TEXT_BYTES, 'wire.length - HEADER_BYTES <= 4 + MAX_TEXT_BYTES');
      const f = decodeFrame(wire);
      assert.ok(f.type === FrameType.CLOSE, 'f.type === FrameType.CLOSE');
      assert.equal(f.code, 'GOING_AWAY');
      assert.ok(f.reason.endsWith('…'), 'marked as truncated');
      assert.ok(text.startsWith(f.reason.slice(0, -2)), 'keeps a prefix');
    }
  });
});

describe('exact wire layout', () => {
  it('ACK: header then u64 BE seq', () => {
    const seq = 0x0001_0203 * 2 ** 32 + 0x0405_0607;
    assert.deepStrictEqual(
      encodeFrame({ type: FrameType.ACK, seq }),
      Uint8Array.from([1, 7, 0, 0, 0, 0, 0, 8, 0, 1, 2, 3, 4, 5, 6, 7]),
    );
  });

  it('DATA: channel u16, seq u64, payload; encodeData and encodeFrame agree', () => {
    const expected = Uint8Array.from([1, 6, 0, 0, 0, 0, 0, 11, 1, 2, 0, 0, 0, 0, 0, 0, 0, 5, 0xaa]);
    assert.deepStrictEqual(encodeData(0x0102, 5, Uint8Array.of(0xaa)), expected);
    assert.deepStrictEqual(
      encodeFrame({ type: FrameType.DATA, channel: 0x0102, seq: 5, payload: Uint8Array.of(0xaa) }),
      expected,
    );
    const big = bytes(3000, 9);
    assert.deepStrictEqual(
      encodeData(7, 2 ** 40 + 3, big),
      encodeFrame({ type: FrameType.DATA, channel: 7, seq: 2 ** 40 + 3, payload: big }),
    );
  });

  it('DATA payload given as a view into a larger buffer encodes only the view', () => {
    const backing = bytes(64, 3);
    const view = backing.subarray(10, 20);
    const f = decodeFrame(encodeData(1, 1, view));
    assert.ok(f.type === FrameType.DATA, 'f.type === FrameType.DATA');
    assert.deepStrictEqual(Uint8Array.from(f.payload), Uint8Array.from(view));
  });

  it('HELLO sets flag bit 0 exactly when a key is present', () => {
    assert.equal(encodeFrame({ type: FrameType.HELLO, publicKey: bytes(KEY_BYTES), service: 'a' })[2], 0);
    assert.equal(encodeFrame({ type: FrameType.HELLO, publicKey: bytes(KEY_BYTES), service: 'a', key: '' })[2], 1);
  });

  it('the prepare flags: HELLO bit 1, CHALLENGE bit 0, RESUME bits 0 (prepares) and 1 (prepared)', () => {
    const hello = { type: FrameType.HELLO, publicKey: bytes(KEY_BYTES), service: 'a', prepares: true } as const;
    assert.equal(encodeFrame(hello)[2], 2);
    assert.equal(encodeFrame({ ...hello, key: 'k' })[2], 3);
    assert.equal(encodeFrame({ type: FrameType.CHALLENGE, nonce: bytes(NONCE_BYTES), prepare: true })[2], 1);
    assert.equal(encodeFrame(validResume)[2], 0);
    assert.equal(encodeFrame({ ...validResume, prepares: true })[2], 1);
    assert.equal(encodeFrame({ ...validResume, prepares: true, prepared: true })[2], 3);
  });

  it('decoded byte fields other than DATA payloads do not alias the input', () => {
    const wire = encodeFrame({ type: FrameType.CHALLENGE, nonce: bytes(NONCE_BYTES) });
    const f = decodeFrame(wire);
    assert.ok(f.type === FrameType.CHALLENGE, 'f.type === FrameType.CHALLENGE');
    wire[HEADER_BYTES] = (wire[HEADER_BYTES] as number) ^ 0xff;
    assert.deepStrictEqual(f.nonce, bytes(NONCE_BYTES));
  });
});

describe('decodeFrame rejections', () => {
  const ack = () => encodeFrame({ type: FrameType.ACK, seq: 1 });

  it('UNSUPPORTED_VERSION for any version other than 1', () => {
    for (const version of [0, 2, 0x7f, 0xff]) {
      const wire = ack();
      wire[0] = version;
      throwsProtocol(() => decodeFrame(wire), 'UNSUPPORTED_VERSION');
    }
  });

  it('UNSUPPORTED_VERSION wins over other header problems', () => {
    throwsProtocol(
      () => decodeFrame(raw(99, [], { version: 2, reserved: 1, length: 0xffffffff })),
      'UNSUPPORTED_VERSION',
    );
  });

  it('UNKNOWN_FRAME_TYPE for type 0 and types above ERROR', () => {
    for (const type of [0, 13, 100, 0xff]) {
      throwsProtocol(() => decodeFrame(raw(type, [])), 'UNKNOWN_FRAME_TYPE');
    }
    throwsProtocol(() => decodePayload(13, 0, new Uint8Array(0)), 'UNKNOWN_FRAME_TYPE');
    throwsProtocol(() => decodePayload(0, 0, new Uint8Array(0)), 'UNKNOWN_FRAME_TYPE');
  });

  it('FRAME_TOO_LARGE when the header length exceeds maxFrameBytes; the limit itself is allowed', () => {
    const atLimit = encodeData(1, 1, bytes(90));
    assert.doesNotThrow(() => decodeFrame(atLimit, 100));
    throwsProtocol(() => decodeFrame(atLimit, 99), 'FRAME_TOO_LARGE');
    throwsProtocol(() => decodeFrame(ack(), 0), 'FRAME_TOO_LARGE');
  });

  it('FRAME_TOO_LARGE from the header alone, before looking at the payload', () => {
    // Only the 8 header bytes are present; a length check must not be reported as truncation.
    throwsProtocol(() => decodeFrame(raw(FrameType.DATA, [], { length: 0xffffffff })), 'FRAME_TOO_LARGE');
    throwsProtocol(
      () => decodeFrame(raw(FrameType.DATA, [], { length: DEFAULT_MAX_FRAME_BYTES + 1 })),
      'FRAME_TOO_LARGE',
    );
    throwsProtocol(() => decodeFrame(raw(FrameType.ACK, [], { length: 1025 }), 1024), 'FRAME_TOO_LARGE');
  });

  it('MALFORMED_FRAME for input shorter than the header', () => {
    const wire = ack();
    for (let n = 0; n < HEADER_BYTES; n++) throwsProtocol(() => decodeFrame(wire.subarray(0, n)), 'MALFORMED_FRAME');
  });

  it('MALFORMED_FRAME when the byte count disagrees with the header length', () => {
    const wire = ack();
    throwsProtocol(() => decodeFrame(wire.subarray(0, wire.length - 1)), 'MALFORMED_FRAME');
    throwsProtocol(() => decodeFrame(concat(wire, [0])), 'MALFORMED_FRAME');
    throwsProtocol(() => decodeFrame(concat(wire, wire)), 'MALFORMED_FRAME');
  });

  it('MALFORMED_FRAME for every truncated payload (length field consistent)', () => {
    for (const { name, frame } of SAMPLES) {
      const wire = encodeFrame(frame);
      const payload = wire.subarray(HEADER_BYTES);
      // DATA's payload is "the rest", so only its fixed 10-byte prefix can be truncated.
      const cuts = frame.type === FrameType.DATA ? 10 : payload.length;
      for (let cut = 0; cut < cuts; cut++) {
        const truncated = raw(frame.type, payload.subarray(0, cut), { flags: wire[2] as number });
        const err = throwsProtocol(() => decodeFrame(truncated), 'MALFORMED_FRAME');
        assert.ok(err.message.length > 0, name);
      }
    }
  });

  it('MALFORMED_FRAME for trailing bytes after a complete payload', () => {
    for (const { frame } of SAMPLES) {
      if (frame.type === FrameType.DATA) continue; // DATA payload absorbs all remaining bytes
      const wire = encodeFrame(frame);
      for (const extra of [[0], [1, 2, 3]]) {
        const longer = raw(frame.type, concat(wire.subarray(HEADER_BYTES), extra), { flags: wire[2] as number });
        throwsProtocol(() => decodeFrame(longer), 'MALFORMED_FRAME');
      }
    }
  });

  it('MALFORMED_FRAME for HELLO that sets the key flag but carries no key', () => {
    const wire = encodeFrame({ type: FrameType.HELLO, publicKey: bytes(KEY_BYTES), service: 'svc' });
    throwsProtocol(
      () => decodeFrame(raw(FrameType.HELLO, wire.subarray(HEADER_BYTES), { flags: 1 })),
      'MALFORMED_FRAME',
    );
  });

  const badUtf8: [string, number[]][] = [
    ['invalid byte', [0xff]],
    ['overlong NUL', [0xc0, 0x80]],
    ['UTF-16 surrogate', [0xed, 0xa0, 0x80]],
    ['cut multi-byte sequence', [0x61, 0xe2, 0x82]],
    ['lone continuation byte', [0x80]],
    ['above U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
  ];
  for (const [what, text] of badUtf8) {
    it(`MALFORMED_FRAME for invalid UTF-8 (${what}) in every text field`, () => {
      const key = bytes(KEY_BYTES);
      const mac = bytes(MAC_BYTES);
      const cases: Uint8Array[] = [
        raw(FrameType.CLOSE, [...u16(0), ...u16(text.length), ...text]),
        raw(FrameType.ERROR, [...u16(500), ...u16(text.length), ...text]),
        raw(FrameType.HELLO, concat(key, [text.length], text)),
        raw(FrameType.HELLO, concat(key, [1], utf8('s'), u16(text.length), text), { flags: 1 }),
        raw(FrameType.MOVE, concat(u32(1), u16(text.length), text, u16(0), mac)),
      ];
      for (const wire of cases) {
        const err = throwsProtocol(() => decodeFrame(wire), 'MALFORMED_FRAME');
        assert.ok(err instanceof RoamError, `expected RoamError, got ${String(err)}`);
      }
    });
  }

  it('MALFORMED_FRAME for a nonzero reserved header byte', () => {
    for (const reserved of [1, 0x80, 0xff]) {
      const wire = ack();
      wire[3] = reserved;
      throwsProtocol(() => decodeFrame(wire), 'MALFORMED_FRAME');
    }
  });

  it('MALFORMED_FRAME for a sequence number at or above 2^53 in ACK, DATA, RESUME and RESUMED', () => {
    const overs: number[][] = [
      [...u32(0x0020_0000), ...u32(0)], // exactly 2^53
      [...u32(0x0020_0000), ...u32(1)],
      [...u32(0xffff_ffff), ...u32(0xffff_ffff)],
    ];
    for (const seq of overs) {
      throwsProtocol(() => decodeFrame(raw(FrameType.ACK, seq)), 'MALFORMED_FRAME');
      throwsProtocol(() => decodeFrame(raw(FrameType.DATA, [...u16(1), ...seq, 9])), 'MALFORMED_FRAME');
      throwsProtocol(() => decodeFrame(raw(FrameType.RESUMED, concat(seq, bytes(MAC_BYTES)))), 'MALFORMED_FRAME');
      const resume = concat(bytes(SESSION_ID_BYTES), bytes(NONCE_BYTES), seq, bytes(NONCE_BYTES), bytes(MAC_BYTES));
      throwsProtocol(() => decodeFrame(raw(FrameType.RESUME, resume)), 'MALFORMED_FRAME');
    }
    // 2^53 - 1 is still accepted.
    const max = decodeFrame(raw(FrameType.ACK, [...u32(0x001f_ffff), ...u32(0xffff_ffff)]));
    assert.deepStrictEqual(max, { type: FrameType.ACK, seq: Number.MAX_SAFE_INTEGER });
  });

  it('MALFORMED_FRAME for declared text/token lengths above their limits', () => {
    const mac = bytes(MAC_BYTES);
    // The declared length alone is enough to reject; the bytes need not be present.
    throwsProtocol(() => decodeFrame(raw(FrameType.MOVE, concat(u32(1), u16(MAX_TEXT_BYTES + 1)))), 'MALFORMED_FRAME');
    throwsProtocol(
      () => decodeFrame(raw(FrameType.MOVE, concat(u32(1), u16(0), u16(MAX_TEXT_BYTES + 1), mac))),
      'MALFORMED_FRAME',
    );
    throwsProtocol(() => decodeFrame(raw(FrameType.CLOSE, concat(u16(0), u16(MAX_TEXT_BYTES + 1)))), 'MALFORMED_FRAME');
    throwsProtocol(
      () =>
        decodeFrame(raw(FrameType.HELLO, concat(bytes(KEY_BYTES), [0], u16(MAX_INSTANCE_KEY_BYTES + 1)), { flags: 1 })),
      'MALFORMED_FRAME',
    );
  });

  it('MALFORMED_FRAME for over-limit text/token even when all the bytes are present', () => {
    const mac = bytes(MAC_BYTES);
    const long = (n: number) => utf8('a'.repeat(n));
    const cases: [Uint8Array, string][] = [
      [raw(FrameType.MOVE, concat(u32(1), u16(MAX_TEXT_BYTES + 1), long(MAX_TEXT_BYTES + 1), u16(0), mac)), 'move url'],
      [raw(FrameType.MOVE, concat(u32(1), u16(0), u16(MAX_TEXT_BYTES + 1), bytes(MAX_TEXT_BYTES + 1), mac)), 'token'],
      [raw(FrameType.CLOSE, concat(u16(0), u16(MAX_TEXT_BYTES + 1), long(MAX_TEXT_BYTES + 1))), 'close text'],
      [raw(FrameType.ERROR, concat(u16(0), u16(MAX_TEXT_BYTES + 1), long(MAX_TEXT_BYTES + 1))), 'error text'],
      [
        raw(
          FrameType.HELLO,
          concat(bytes(KEY_BYTES), [0], u16(MAX_INSTANCE_KEY_BYTES + 1), long(MAX_INSTANCE_KEY_BYTES + 1)),
          { flags: 1 },
        ),
        'instance key',
      ],
    ];
    for (const [wire, what] of cases) {
      const err = throwsProtocol(() => decodeFrame(wire), 'MALFORMED_FRAME');
      assert.doesNotMatch(err.message, /truncated|trailing/, what);
    }
    // At the limit, the same shapes decode.
    assert.doesNotThrow(() =>
      decodeFrame(raw(FrameType.CLOSE, concat(u16(0), u16(MAX_TEXT_BYTES), long(MAX_TEXT_BYTES)))),
    );
  });

  it('unknown flag bits are ignored', () => {
    const wire = ack();
    wire[2] = 0xfe;
    assert.deepStrictEqual(decodeFrame(wire), { type: FrameType.ACK, seq: 1 });
  });
});

describe('encodeFrame argument checks (INVALID_ARGUMENT)', () => {
  const pk = bytes(KEY_BYTES);

  it('wrong fixed-size key, id, nonce and mac lengths', () => {
    for (const n of [0, KEY_BYTES - 1, KEY_BYTES + 1]) {
      throwsInvalidArgument(() => encodeFrame({ type: FrameType.HELLO, publicKey: bytes(n), service: 's' }));
    }
    const welcome = {
      type: FrameType.WELCOME,
      sessionId: bytes(SESSION_ID_BYTES),
      publicKey: pk,
      heartbeatMs: 1,
      sessionTtlMs: 1,
      confirm: bytes(MAC_BYTES),
    } as const;
    assert.doesNotThrow(() => encodeFrame(welcome));
    throwsInvalidArgument(() => encodeFrame({ ...welcome, sessionId: bytes(SESSION_ID_BYTES - 1) }));
    throwsInvalidArgument(() => encodeFrame({ ...welcome, publicKey: bytes(KEY_BYTES + 1) }));
    throwsInvalidArgument(() => encodeFrame({ ...welcome, confirm: bytes(MAC_BYTES - 1) }));

    throwsInvalidArgument(() => encodeFrame({ type: FrameType.CHALLENGE, nonce: bytes(NONCE_BYTES + 1) }));

    assert.doesNotThrow(() => encodeFrame(validResume));
    throwsInvalidArgument(() => encodeFrame({ ...validResume, sessionId: bytes(KEY_BYTES) }));
    throwsInvalidArgument(() => encodeFrame({ ...validResume, nonce: bytes(0) }));
    throwsInvalidArgument(() => encodeFrame({ ...validResume, clientNonce: bytes(NONCE_BYTES - 1) }));
    throwsInvalidArgument(() => encodeFrame({ ...validResume, mac: bytes(MAC_BYTES + 1) }));

    throwsInvalidArgument(() => encodeFrame({ type: FrameType.RESUMED, lastSeq: 1, mac: bytes(1) }));
    throwsInvalidArgument(() =>
      encodeFrame({ type: FrameType.MOVE, moveId: 1, url: 'u', token: bytes(1), mac: bytes(MAC_BYTES - 1) }),
    );
  });

  it('a non-Uint8Array where bytes are required', () => {
    const notBytes = Array.from({ length: KEY_BYTES }, () => 0) as unknown as Uint8Array;
    throwsInvalidArgument(() => encodeFrame({ type: FrameType.HELLO, publicKey: notBytes, service: 's' }));
  });

  it('service name above 255 UTF-8 bytes (counted in bytes, not characters)', () => {
    assert.doesNotThrow(() => encodeFrame({ type: FrameType.HELLO, publicKey: pk, service: 'a'.repeat(255) }));
    throwsInvalidArgument(() => encodeFrame({ type: FrameType.HELLO, publicKey: pk, service: 'a'.repeat(256) }));
    // 128 characters but 256 bytes.
    throwsInvalidArgument(() => encodeFrame({ type: FrameType.HELLO, publicKey: pk, service: 'é'.repeat(128) }));
    throwsInvalidArgument(() => encodeFrame({ type: FrameType.HELLO, publicKey: pk, service: '🎲'.repeat(64) }));
  });

  it('instance key above 1024 UTF-8 bytes', () => {
    assert.doesNotThrow(() =>
      encodeFrame({ type: FrameType.HELLO, publicKey: pk, service: 's', key: 'k'.repeat(MAX_INSTANCE_KEY_BYTES) }),
    );
    throwsInvalidArgument(() =>
      encodeFrame({ type: FrameType.HELLO, publicKey: pk, service: 's', key: 'k'.repeat(MAX_INSTANCE_KEY_BYTES + 1) }),
    );
  });

  it('MOVE url or token above 4096 bytes', () => {
    const mac = bytes(MAC_BYTES);
    throwsInvalidArgument(() =>
      encodeFrame({ type: FrameType.MOVE, moveId: 1, url: 'u'.repeat(MAX_TEXT_BYTES + 1), token: bytes(0), mac }),
    );
    throwsInvalidArgument(() =>
      encodeFrame({ type: FrameType.MOVE, moveId: 1, url: 'u', token: bytes(MAX_TEXT_BYTES + 1), mac }),
    );
    assert.doesNotThrow(() =>
      encodeFrame({
        type: FrameType.MOVE,
        moveId: 1,
        url: 'u'.repeat(MAX_TEXT_BYTES),
        token: bytes(MAX_TEXT_BYTES),
        mac,
      }),
    );
  });

  it('negative, fractional, non-finite or unsafe sequence numbers', () => {
    const mac = bytes(MAC_BYTES);
    for (const seq of [-1, -0.5, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, Number.MAX_VALUE]) {
      throwsInvalidArgument(() => encodeFrame({ type: FrameType.ACK, seq }));
      throwsInvalidArgument(() => encodeFrame({ type: FrameType.DATA, channel: 0, seq, payload: bytes(1) }));
      throwsInvalidArgument(() => encodeFrame({ type: FrameType.RESUMED, lastSeq: seq, mac }));
      throwsInvalidArgument(() =>
        encodeFrame({
          type: FrameType.RESUME,
          sessionId: bytes(SESSION_ID_BYTES),
          nonce: bytes(NONCE_BYTES),
          lastSeq: seq,
          clientNonce: bytes(NONCE_BYTES),
          mac,
        }),
      );
    }
  });

  it('DATA channel outside 0..65535 or fractional', () => {
    for (const channel of [-1, 0x10000, 0.5, Number.NaN]) {
      throwsInvalidArgument(() => encodeFrame({ type: FrameType.DATA, channel, seq: 0, payload: bytes(0) }));
    }
  });
});

describe('error codes', () => {
  it('unknown numeric code in CLOSE/ERROR decodes as INTERNAL without throwing', () => {
    for (const n of [2, 99, 499, 9999, 0xffff]) {
      const close = decodeFrame(raw(FrameType.CLOSE, concat(u16(n), u16(3), utf8('bye'))));
      assert.deepStrictEqual(close, { type: FrameType.CLOSE, code: 'INTERNAL', reason: 'bye' });
      const error = decodeFrame(raw(FrameType.ERROR, concat(u16(n), u16(0))));
      assert.deepStrictEqual(error, { type: FrameType.ERROR, code: 'INTERNAL', message: '' });
    }
  });

  it('code numbers are unique and codeName/codeNumber are inverse', () => {
    const names = Object.keys(CODES) as CodeName[];
    assert.equal(new Set(names.map(codeNumber)).size, names.length);
    for (const name of names) assert.equal(codeName(codeNumber(name)), name);
    assert.equal(codeName(-1), 'INTERNAL');
    assert.equal(codeName(1.5), 'INTERNAL');
  });

  it('RoamError.fromWire keeps the code for every table entry', () => {
    for (const name of Object.keys(CODES) as CodeName[]) {
      const err = RoamError.fromWire(CODES[name].n, `msg ${name}`);
      assert.ok(err instanceof RoamError, `expected RoamError, got ${String(err)}`);
      assert.ok(err instanceof Error, `expected Error, got ${String(err)}`);
      assert.equal(err.code, name);
      assert.equal(err.wireCode, CODES[name].n);
      assert.equal(err.message, `msg ${name}`);
      assert.equal(err.name, 'RoamError');
    }
  });

  it('RoamError.fromWire maps an unknown number to INTERNAL', () => {
    const err = RoamError.fromWire(4242, 'from the future');
    assert.equal(err.code, 'INTERNAL');
    assert.equal(err.wireCode, CODES.INTERNAL.n);
    assert.equal(err.message, 'from the future');
  });

  it('RoamError.fromWire on a decoded ERROR frame restores the sender error', () => {
    const sent = new ProtocolError('SEQUENCE_GAP', 'expected 5, got 7');
    const f = decodeFrame(encodeFrame({ type: FrameType.ERROR, code: sent.code, message: sent.message }));
    assert.ok(f.type === FrameType.ERROR, 'f.type === FrameType.ERROR');
    const received = RoamError.fromWire(codeNumber(f.code), f.message);
    assert.equal(received.code, 'SEQUENCE_GAP');
    assert.equal(received.wireCode, sent.wireCode);
    assert.equal(received.message, sent.message);
  });

  it('ProtocolError is a RoamError with its own name', () => {
    const err = new ProtocolError('MALFORMED_FRAME', 'x', { cause: 'c' });
    assert.ok(err instanceof RoamError, `expected RoamError, got ${String(err)}`);
    assert.equal(err.name, 'ProtocolError');
    assert.equal(err.code, 'MALFORMED_FRAME');
    assert.equal(err.wireCode, 100);
    assert.equal(err.cause, 'c');
  });
});
