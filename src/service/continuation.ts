import { Packr, Unpackr } from 'msgpackr';
import {
  KEY_BYTES,
  MAX_INSTANCE_KEY_BYTES,
  MAX_SERVICE_NAME_BYTES,
  RoamError,
  SESSION_ID_BYTES,
} from '../wire/index.js';
import { stateKeyProblem, utf8ByteLength } from './state.js';
import { MAX_TIMER_NAME_LENGTH, type TimerRecord } from './timers.js';

/** Format version written by {@link encodeContinuation}; the only one {@link decodeContinuation} reads. */
export const CONTINUATION_FORMAT_VERSION = 1;

/** First four bytes of every encoded continuation, in ASCII. */
export const CONTINUATION_MAGIC = 'RMCN';
// A private byte copy: an exported Uint8Array could be changed by any importer.
const MAGIC_BYTES = Uint8Array.from(CONTINUATION_MAGIC, (ch) => ch.charCodeAt(0));

/** Bytes before the body: magic, u16 version, u32 body length. */
const HEADER_BYTES = 10;
/** Bytes after the body: CRC-32C of header and body. */
const TRAILER_BYTES = 4;

/** Longest service version string and compat tag, in UTF-8 bytes. */
export const MAX_SERVICE_VERSION_BYTES = 255;

/** A session's place in its ordered, reliable message stream, as the session engine keeps it. */
export interface SessionTransportState {
  /** Last DATA seq sent to the client. */
  sentSeq: number;
  /** Last DATA seq received from the client. */
  recvSeq: number;
  /** Highest seq the client acknowledged. */
  peerAckedSeq: number;
  /** Sent but not acknowledged, ascending seq, each in (peerAckedSeq, sentSeq]; replayed on resume. */
  unacked: Array<{ seq: number; channel: number; payload: Uint8Array }>;
  /** Received but not yet processed by the service, in arrival order. */
  inbound: Array<{ channel: number; payload: Uint8Array }>;
}

/** The rest of one session: enough to resume it on any host that runs a compatible service. */
export interface SessionContinuation {
  /** 16 bytes. */
  sessionId: Uint8Array;
  /** 32-byte raw HMAC key; whoever holds the continuation can impersonate the session. */
  sessionKey: Uint8Array;
  /** Encoded state entries, as from `StateStore.snapshot()`. */
  state: Array<[string, Uint8Array]>;
  /** State keys handed to the client on resume (Migrate's export()). */
  exported: string[];
  transport: SessionTransportState;
  /** Lowercase hex ids (32 chars) of sessions that must be suspended and moved with this one. */
  dependsOn: string[];
  /** Epoch ms. */
  suspendedAt: number;
}

/**
 * The serialized rest of an instance and its sessions. `internal` continuations resume into a
 * running instance of the service; `complete` ones start a fresh instance first.
 */
export interface Continuation {
  kind: 'internal' | 'complete';
  service: { name: string; version: string; compat: string[] };
  /** The instance's key (a room, a document), or null for a per-session instance. */
  instanceKey: string | null;
  /** Encoded instance state entries, as from `StateStore.snapshot()`. */
  instanceState: Array<[string, Uint8Array]>;
  timers: TimerRecord[];
  sessions: SessionContinuation[];
  /** Epoch ms. */
  createdAt: number;
  /** Epoch ms after which the continuation may be garbage-collected instead of resumed. */
  expiresAt: number;
}

// ---------------------------------------------------------------------------------------------
// CRC-32C (Castagnoli): catches every error burst up to 32 bits, so any single changed byte.
// It guards against damage, not forgery; continuations travel over authenticated host links.

// Slicing-by-8: eight derived tables let the loop consume 8 bytes per step, about 3x the
// byte-at-a-time speed, which matters because every byte of migrated state passes through here.
const CRC_TABLES = (() => {
  const t = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n] as number;
    for (let k = 1; k < 8; k++) {
      c = (t[c & 0xff] as number) ^ (c >>> 8);
      t[k * 256 + n] = c >>> 0;
    }
  }
  return t;
})();

/** CRC-32C of `bytes`. */
export function crc32c(bytes: Uint8Array): number {
  const t = CRC_TABLES;
  let c = 0xffffffff;
  let i = 0;
  const n = bytes.length;
  for (const end8 = n - (n % 8); i < end8; i += 8) {
    c ^=
      (bytes[i] as number) |
      ((bytes[i + 1] as number) << 8) |
      ((bytes[i + 2] as number) << 16) |
      ((bytes[i + 3] as number) << 24);
    c =
      (t[1792 + (c & 0xff)] as number) ^
      (t[1536 + ((c >>> 8) & 0xff)] as number) ^
      (t[1280 + ((c >>> 16) & 0xff)] as number) ^
      (t[1024 + (c >>> 24)] as number) ^
      (t[768 + (bytes[i + 4] as number)] as number) ^
      (t[512 + (bytes[i + 5] as number)] as number) ^
      (t[256 + (bytes[i + 6] as number)] as number) ^
      (t[bytes[i + 7] as number] as number);
  }
  for (; i < n; i++) c = (t[(c ^ (bytes[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Body: one msgpack array of positional fields. Field names would cost ~200 bytes per
// continuation; positions are fixed by the format version instead.
//
// [kind(0 internal|1 complete), name, version, compat[], instanceKey|nil, state, timers[],
//  sessions[], createdAt, expiresAt]
// state    = [[key, bin], ...]
// timer    = [name, deadline, periodMs|nil, catchUp(0 skip|1 burst)]
// session  = [id bin16, key bin32, state, exported[], sentSeq, recvSeq, peerAckedSeq,
//             unacked [[seq, channel, bin]...], inbound [[channel, bin]...], dependsOn [bin16...],
//             suspendedAt]

const bodyPackr = new Packr({ useRecords: false });
const bodyUnpackr = new Unpackr({ useRecords: false });

type ErrCode = 'CONTINUATION_CORRUPT' | 'INVALID_ARGUMENT';

class Parser {
  constructor(
    private readonly code: ErrCode,
    /** Copy binaries out of the input so the result neither aliases nor pins it. */
    private readonly copy: boolean,
  ) {}

  fail(what: string): never {
    throw new RoamError(
      this.code,
      this.code === 'CONTINUATION_CORRUPT' ? `continuation body: ${what}` : `continuation: ${what}`,
    );
  }

  array(v: unknown, what: string, length?: number): unknown[] {
    if (!Array.isArray(v)) this.fail(`${what} is not an array`);
    if (length !== undefined && v.length !== length) this.fail(`${what} has ${v.length} fields, expected ${length}`);
    return v;
  }

  string(v: unknown, what: string, maxBytes: number, minBytes = 0): string {
    if (typeof v !== 'string') this.fail(`${what} is not a string`);
    if (/\p{Cs}/u.test(v)) this.fail(`${what} contains a lone surrogate`);
    const n = utf8ByteLength(v);
    if (n > maxBytes || n < minBytes) this.fail(`${what} is ${n} bytes; allowed ${minBytes}..${maxBytes}`);
    return v;
  }

  bytes(v: unknown, what: string, length?: number): Uint8Array {
    if (!(v instanceof Uint8Array)) this.fail(`${what} is not binary`);
    if (length !== undefined && v.length !== length) this.fail(`${what} is ${v.length} bytes, expected ${length}`);
    if (!this.copy) return v;
    const out = new Uint8Array(v.length);
    out.set(v);
    return out;
  }

  time(v: unknown, what: string): number {
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(`${what} is not a finite number`);
    return v;
  }

  seq(v: unknown, what: string): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) this.fail(`${what} is not a sequence number`);
    return v;
  }

  channel(v: unknown, what: string): number {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff) this.fail(`${what} is not a channel`);
    return v;
  }

  key(v: unknown, what: string): string {
    const problem = stateKeyProblem(v);
    if (problem !== undefined) this.fail(`${what}: ${problem}`);
    return v as string;
  }

  state(v: unknown, what: string): Array<[string, Uint8Array]> {
    const seen = new Set<string>();
    return this.array(v, what).map((pair, i) => {
      const [k, b] = this.array(pair, `${what}[${i}]`, 2);
      const key = this.key(k, `${what}[${i}] key`);
      if (seen.has(key)) this.fail(`${what} repeats key ${JSON.stringify(key)}`);
      seen.add(key);
      return [key, this.bytes(b, `${what}[${i}] value`)];
    });
  }

  timer(v: unknown, i: number): TimerRecord {
    const [name, deadline, period, catchUp] = this.array(v, `timer ${i}`, 4);
    const rec: TimerRecord = {
      name: this.string(name, `timer ${i} name`, Number.POSITIVE_INFINITY),
      deadline: this.time(deadline, `timer ${i} deadline`),
      catchUp: catchUp === 0 ? 'skip' : catchUp === 1 ? 'burst' : this.fail(`timer ${i} catch-up policy`),
    };
    if (rec.name.length > MAX_TIMER_NAME_LENGTH) this.fail(`timer ${i} name is too long`);
    if (period !== null) {
      if (typeof period !== 'number' || !Number.isFinite(period) || period <= 0) this.fail(`timer ${i} period`);
      rec.periodMs = period;
    }
    return rec;
  }

  session(v: unknown, i: number): SessionContinuation {
    const w = `session ${i}`;
    const [id, key, state, exported, sent, recv, acked, unacked, inbound, deps, suspendedAt] = this.array(v, w, 11);
    const sentSeq = this.seq(sent, `${w} sentSeq`);
    const peerAckedSeq = this.seq(acked, `${w} peerAckedSeq`);
    if (peerAckedSeq > sentSeq) this.fail(`${w} acknowledged seq ${peerAckedSeq} beyond sent seq ${sentSeq}`);
    let prev = peerAckedSeq;
    const unackedOut = this.array(unacked, `${w} unacked`).map((m, j) => {
      const [seq, ch, payload] = this.array(m, `${w} unacked[${j}]`, 3);
      const s = this.seq(seq, `${w} unacked[${j}] seq`);
      if (s <= prev || s > sentSeq) this.fail(`${w} unacked[${j}] seq ${s} out of order or range`);
      prev = s;
      return {
        seq: s,
        channel: this.channel(ch, `${w} unacked[${j}] channel`),
        payload: this.bytes(payload, `${w} unacked[${j}] payload`),
      };
    });
    const inboundOut = this.array(inbound, `${w} inbound`).map((m, j) => {
      const [ch, payload] = this.array(m, `${w} inbound[${j}]`, 2);
      return {
        channel: this.channel(ch, `${w} inbound[${j}] channel`),
        payload: this.bytes(payload, `${w} inbound[${j}] payload`),
      };
    });
    const exportedSeen = new Set<string>();
    const exportedOut = this.array(exported, `${w} exported`).map((k, j) => {
      const key = this.key(k, `${w} exported[${j}]`);
      if (exportedSeen.has(key)) this.fail(`${w} exports ${JSON.stringify(key)} twice`);
      exportedSeen.add(key);
      return key;
    });
    const depSeen = new Set<string>();
    const dependsOn = this.array(deps, `${w} dependsOn`).map((d, j) => {
      const hex = toHex(this.bytes(d, `${w} dependsOn[${j}]`, SESSION_ID_BYTES));
      if (depSeen.has(hex)) this.fail(`${w} depends on ${hex} twice`);
      depSeen.add(hex);
      return hex;
    });
    return {
      sessionId: this.bytes(id, `${w} id`, SESSION_ID_BYTES),
      sessionKey: this.bytes(key, `${w} key`, KEY_BYTES),
      state: this.state(state, `${w} state`),
      exported: exportedOut,
      transport: {
        sentSeq,
        recvSeq: this.seq(recv, `${w} recvSeq`),
        peerAckedSeq,
        unacked: unackedOut,
        inbound: inboundOut,
      },
      dependsOn,
      suspendedAt: this.time(suspendedAt, `${w} suspendedAt`),
    };
  }

  continuation(v: unknown): Continuation {
    const [kind, name, version, compat, instanceKey, state, timers, sessions, createdAt, expiresAt] = this.array(
      v,
      'body',
      10,
    );
    const timerNames = new Set<string>();
    const timersOut = this.array(timers, 'timers').map((t, i) => {
      const rec = this.timer(t, i);
      if (timerNames.has(rec.name)) this.fail(`timer name ${JSON.stringify(rec.name)} repeats`);
      timerNames.add(rec.name);
      return rec;
    });
    const ids = new Set<string>();
    const sessionsOut = this.array(sessions, 'sessions').map((s, i) => {
      const sc = this.session(s, i);
      const hex = toHex(sc.sessionId);
      if (ids.has(hex)) this.fail(`session ${hex} appears twice`);
      ids.add(hex);
      return sc;
    });
    return {
      kind: kind === 0 ? 'internal' : kind === 1 ? 'complete' : this.fail('kind is neither internal nor complete'),
      service: {
        name: this.string(name, 'service name', MAX_SERVICE_NAME_BYTES, 1),
        version: this.string(version, 'service version', MAX_SERVICE_VERSION_BYTES),
        compat: this.array(compat, 'compat').map((t, i) => this.string(t, `compat[${i}]`, MAX_SERVICE_VERSION_BYTES)),
      },
      instanceKey: instanceKey === null ? null : this.string(instanceKey, 'instance key', MAX_INSTANCE_KEY_BYTES),
      instanceState: this.state(state, 'instance state'),
      timers: timersOut,
      sessions: sessionsOut,
      createdAt: this.time(createdAt, 'createdAt'),
      expiresAt: this.time(expiresAt, 'expiresAt'),
    };
  }
}

function toHex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

function fromSessionHex(s: unknown): Uint8Array {
  if (typeof s !== 'string' || !/^[0-9a-f]{32}$/.test(s)) {
    throw new RoamError('INVALID_ARGUMENT', `continuation: dependsOn entry ${String(s)} is not 32 lowercase hex chars`);
  }
  const b = new Uint8Array(SESSION_ID_BYTES);
  for (let i = 0; i < b.length; i++) b[i] = Number.parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return b;
}

function enumIndex<T>(v: T, values: readonly T[], what: string): number {
  const i = values.indexOf(v);
  if (i < 0) {
    throw new RoamError('INVALID_ARGUMENT', `continuation: ${what} ${String(v)} is not one of ${values.join(', ')}`);
  }
  return i;
}

function toBody(c: Continuation): unknown[] {
  return [
    enumIndex(c.kind, ['internal', 'complete'], 'kind'),
    c.service.name,
    c.service.version,
    c.service.compat,
    c.instanceKey,
    c.instanceState,
    c.timers.map((t) => [t.name, t.deadline, t.periodMs ?? null, enumIndex(t.catchUp, ['skip', 'burst'], 'catchUp')]),
    c.sessions.map((s) => [
      s.sessionId,
      s.sessionKey,
      s.state,
      s.exported,
      s.transport.sentSeq,
      s.transport.recvSeq,
      s.transport.peerAckedSeq,
      s.transport.unacked.map((m) => [m.seq, m.channel, m.payload]),
      s.transport.inbound.map((m) => [m.channel, m.payload]),
      s.dependsOn.map(fromSessionHex),
      s.suspendedAt,
    ]),
    c.createdAt,
    c.expiresAt,
  ];
}

/**
 * Encodes a continuation: "RMCN", u16 format version, u32 body length, msgpack body, CRC-32C of
 * everything before it (all integers big-endian).
 *
 * @throws RoamError `INVALID_ARGUMENT` if `c` breaks any rule {@link decodeContinuation} checks,
 *   so nothing is ever encoded that would not decode.
 */
export function encodeContinuation(c: Continuation): Uint8Array {
  let body: Uint8Array;
  try {
    const tuple = toBody(c);
    new Parser('INVALID_ARGUMENT', false).continuation(tuple);
    body = bodyPackr.pack(tuple);
  } catch (err) {
    if (err instanceof RoamError) throw err;
    throw new RoamError('INVALID_ARGUMENT', `continuation cannot be encoded: ${String(err)}`, { cause: err });
  }
  if (body.length > 0xffffffff) throw new RoamError('INVALID_ARGUMENT', 'continuation body exceeds 4 GiB');
  const out = new Uint8Array(HEADER_BYTES + body.length + TRAILER_BYTES);
  const view = new DataView(out.buffer);
  out.set(MAGIC_BYTES, 0);
  view.setUint16(4, CONTINUATION_FORMAT_VERSION);
  view.setUint32(6, body.length);
  out.set(body, HEADER_BYTES);
  view.setUint32(HEADER_BYTES + body.length, crc32c(out.subarray(0, HEADER_BYTES + body.length)));
  return out;
}

/**
 * Decodes and fully validates a continuation. The result shares no memory with `bytes`.
 *
 * State values are checked to be binary, not decoded: `StateStore.restore` does that.
 *
 * @throws RoamError `CONTINUATION_VERSION` for a format version other than
 *   {@link CONTINUATION_FORMAT_VERSION}; `CONTINUATION_CORRUPT` for anything else wrong
 *   (truncation, trailing bytes, checksum, shapes, types, lengths, duplicates). Never anything else.
 */
export function decodeContinuation(bytes: Uint8Array): Continuation {
  if (!(bytes instanceof Uint8Array)) throw new RoamError('CONTINUATION_CORRUPT', 'continuation is not bytes');
  if (bytes.length < HEADER_BYTES + TRAILER_BYTES) {
    throw new RoamError('CONTINUATION_CORRUPT', `continuation truncated: ${bytes.length} bytes`);
  }
  for (let i = 0; i < MAGIC_BYTES.length; i++) {
    if (bytes[i] !== MAGIC_BYTES[i]) throw new RoamError('CONTINUATION_CORRUPT', 'not a continuation (bad magic)');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint16(4);
  // Checked before the checksum: another version may lay out or checksum its bytes differently.
  if (version !== CONTINUATION_FORMAT_VERSION) {
    throw new RoamError('CONTINUATION_VERSION', `continuation format version ${version} is not supported`);
  }
  const bodyLength = view.getUint32(6);
  // The declared length is compared with what actually arrived before anything is sized from it.
  if (HEADER_BYTES + bodyLength + TRAILER_BYTES !== bytes.length) {
    throw new RoamError(
      'CONTINUATION_CORRUPT',
      `continuation declares a ${bodyLength}-byte body but carries ${bytes.length - HEADER_BYTES - TRAILER_BYTES}`,
    );
  }
  const end = HEADER_BYTES + bodyLength;
  if (crc32c(bytes.subarray(0, end)) !== view.getUint32(end)) {
    throw new RoamError('CONTINUATION_CORRUPT', 'continuation checksum mismatch');
  }
  let tuple: unknown;
  try {
    tuple = bodyUnpackr.unpack(bytes.subarray(HEADER_BYTES, end));
  } catch (err) {
    throw new RoamError('CONTINUATION_CORRUPT', 'continuation body is not valid msgpack', { cause: err });
  }
  try {
    return new Parser('CONTINUATION_CORRUPT', true).continuation(tuple);
  } catch (err) {
    if (err instanceof RoamError) throw err;
    // Whatever exotic value msgpack produced, a surprise while inspecting it is still corruption.
    throw new RoamError('CONTINUATION_CORRUPT', `continuation body is malformed: ${String(err)}`, { cause: err });
  }
}

/**
 * Encoded size of `c` minus the UTF-8 bytes of every state key and the bytes of every state
 * value (instance and sessions): what the continuation costs beyond the state it carries.
 */
export function continuationOverhead(c: Continuation): number {
  let state = 0;
  const count = (entries: Array<[string, Uint8Array]>): void => {
    for (const [k, v] of entries) state += utf8ByteLength(k) + v.length;
  };
  count(c.instanceState);
  for (const s of c.sessions) count(s.state);
  return encodeContinuation(c).length - state;
}
