import { type CodeName, codeName, codeNumber } from './codes.js';
import { ProtocolError, RoamError } from './errors.js';

/** Protocol version carried in every frame header. */
export const WIRE_VERSION = 1;
/** Bytes in a frame header: version u8, type u8, flags u8, reserved u8, payload length u32 BE. */
export const HEADER_BYTES = 8;
/** Default maximum payload length; checked before any allocation. */
export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;

export const FrameType = {
  HELLO: 1,
  WELCOME: 2,
  CHALLENGE: 3,
  RESUME: 4,
  RESUMED: 5,
  DATA: 6,
  ACK: 7,
  PING: 8,
  PONG: 9,
  MOVE: 10,
  CLOSE: 11,
  ERROR: 12,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const KEY_BYTES = 32;
export const SESSION_ID_BYTES = 16;
export const NONCE_BYTES = 16;
export const MAC_BYTES = 32;
export const MAX_SERVICE_NAME_BYTES = 255;
export const MAX_INSTANCE_KEY_BYTES = 1024;
export const MAX_TEXT_BYTES = 4096;

/**
 * Client opens a new session: its ephemeral X25519 public key, the service and instance key.
 * `prepares` (flag bit 1): the client answers a prepared CHALLENGE (see ChallengeFrame).
 */
export interface HelloFrame {
  type: typeof FrameType.HELLO;
  publicKey: Uint8Array;
  service: string;
  key?: string | undefined;
  prepares?: true;
}
/** Server accepts a new session; `confirm` = HMAC(sessionKey, "roam welcome" ‖ sessionId). */
export interface WelcomeFrame {
  type: typeof FrameType.WELCOME;
  sessionId: Uint8Array;
  publicKey: Uint8Array;
  heartbeatMs: number;
  sessionTtlMs: number;
  confirm: Uint8Array;
}
/**
 * Server's fresh nonce, sent first on every new transport; a RESUME must answer it. With
 * `prepare` (flag bit 0, only in-band from a gateway to a client that `prepares`): a move is
 * coming; answer with a RESUME now and keep using the session meanwhile.
 */
export interface ChallengeFrame {
  type: typeof FrameType.CHALLENGE;
  nonce: Uint8Array;
  prepare?: true;
}
/**
 * Client's resume proof: HMAC(key, "roam resume" ‖ nonce ‖ sessionId ‖ lastSeq). Flags (not
 * covered by the proof; they change no check that protects the session): `prepares` (bit 0), as
 * in HelloFrame; `prepared` (bit 1), it answers a prepared CHALLENGE, so `lastSeq` may lag behind
 * what the client has acknowledged since.
 */
export interface ResumeFrame {
  type: typeof FrameType.RESUME;
  sessionId: Uint8Array;
  nonce: Uint8Array;
  lastSeq: number;
  clientNonce: Uint8Array;
  mac: Uint8Array;
  prepares?: true;
  prepared?: true;
}
/** Server's answer: its own last received seq, proven with HMAC(key, "roam resumed" ‖ clientNonce ‖ sessionId ‖ lastSeq). */
export interface ResumedFrame {
  type: typeof FrameType.RESUMED;
  lastSeq: number;
  mac: Uint8Array;
}
export interface DataFrame {
  type: typeof FrameType.DATA;
  channel: number;
  seq: number;
  payload: Uint8Array;
}
/** Cumulative: every DATA up to and including `seq` was received. */
export interface AckFrame {
  type: typeof FrameType.ACK;
  seq: number;
}
export interface PingFrame {
  type: typeof FrameType.PING;
  id: number;
  time: number;
}
export interface PongFrame {
  type: typeof FrameType.PONG;
  id: number;
  time: number;
}
/**
 * Server redirects the client; `mac` = HMAC(key, "roam move" ‖ sessionId ‖ moveId ‖ url ‖ token).
 * With `hint` (flag bit 0) it only announces a MOVE to come: the client may open a transport to
 * `url` ahead of time, and keeps using the current one (the proof then has its own label).
 */
export interface MoveFrame {
  type: typeof FrameType.MOVE;
  moveId: number;
  url: string;
  token: Uint8Array;
  mac: Uint8Array;
  hint?: true;
}
export interface CloseFrame {
  type: typeof FrameType.CLOSE;
  code: CodeName;
  reason: string;
}
export interface ErrorFrame {
  type: typeof FrameType.ERROR;
  code: CodeName;
  message: string;
}

export type Frame =
  | HelloFrame
  | WelcomeFrame
  | ChallengeFrame
  | ResumeFrame
  | ResumedFrame
  | DataFrame
  | AckFrame
  | PingFrame
  | PongFrame
  | MoveFrame
  | CloseFrame
  | ErrorFrame;

const FLAG_HAS_KEY = 1;
const FLAG_HELLO_PREPARES = 2;
const FLAG_CHALLENGE_PREPARE = 1;
const FLAG_RESUME_PREPARES = 1;
const FLAG_RESUME_PREPARED = 2;
const FLAG_MOVE_HINT = 1;
const utf8enc = new TextEncoder();
const utf8dec = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function malformed(msg: string): never {
  throw new ProtocolError('MALFORMED_FRAME', msg);
}

/** Big-endian writer over a preallocated buffer. */
class Writer {
  readonly buf: Uint8Array;
  readonly view: DataView;
  off = HEADER_BYTES;
  constructor(payloadBytes: number) {
    this.buf = new Uint8Array(HEADER_BYTES + payloadBytes);
    this.view = new DataView(this.buf.buffer);
  }
  u8(v: number): void {
    this.view.setUint8(this.off, v);
    this.off += 1;
  }
  u16(v: number): void {
    this.view.setUint16(this.off, v);
    this.off += 2;
  }
  u32(v: number): void {
    this.view.setUint32(this.off, v);
    this.off += 4;
  }
  u64(v: number): void {
    this.view.setUint32(this.off, Math.floor(v / 0x100000000));
    this.view.setUint32(this.off + 4, v >>> 0);
    this.off += 8;
  }
  f64(v: number): void {
    this.view.setFloat64(this.off, v);
    this.off += 8;
  }
  bytes(b: Uint8Array): void {
    this.buf.set(b, this.off);
    this.off += b.length;
  }
  finish(type: FrameType, flags = 0): Uint8Array {
    writeHeader(this.view, type, flags, this.off - HEADER_BYTES);
    return this.buf;
  }
}

function writeHeader(view: DataView, type: FrameType, flags: number, length: number): void {
  view.setUint8(0, WIRE_VERSION);
  view.setUint8(1, type);
  view.setUint8(2, flags);
  view.setUint8(3, 0);
  view.setUint32(4, length);
}

/** Big-endian reader that throws MALFORMED_FRAME instead of reading past the payload. */
class Reader {
  off = 0;
  readonly view: DataView;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  need(n: number): void {
    if (this.off + n > this.buf.length) malformed(`payload truncated: needed ${n} more bytes at offset ${this.off}`);
  }
  u8(): number {
    this.need(1);
    return this.view.getUint8(this.off++);
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.off);
    this.off += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.off);
    this.off += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const hi = this.view.getUint32(this.off);
    const lo = this.view.getUint32(this.off + 4);
    this.off += 8;
    if (hi > 0x1fffff) malformed('sequence number above 2^53');
    return hi * 0x100000000 + lo;
  }
  f64(): number {
    this.need(8);
    const v = this.view.getFloat64(this.off);
    this.off += 8;
    return v;
  }
  fixed(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.slice(this.off, this.off + n);
    this.off += n;
    return b;
  }
  text(len: number, max: number, what: string): string {
    if (len > max) malformed(`${what} is ${len} bytes, limit ${max}`);
    this.need(len);
    const start = this.off;
    this.off += len;
    try {
      return utf8dec.decode(this.buf.subarray(start, this.off));
    } catch (cause) {
      throw new ProtocolError('MALFORMED_FRAME', `${what} is not valid UTF-8`, { cause });
    }
  }
  rest(): Uint8Array {
    const b = this.buf.subarray(this.off);
    this.off = this.buf.length;
    return b;
  }
  end(): void {
    if (this.off !== this.buf.length) malformed(`${this.buf.length - this.off} trailing bytes in payload`);
  }
}

function checkFixed(b: Uint8Array, n: number, what: string): void {
  if (!(b instanceof Uint8Array) || b.length !== n) {
    throw new RoamError('INVALID_ARGUMENT', `${what} must be ${n} bytes`);
  }
}

function encodeText(s: string, max: number, what: string): Uint8Array {
  const b = utf8enc.encode(s);
  if (b.length > max) throw new RoamError('INVALID_ARGUMENT', `${what} is ${b.length} bytes, limit ${max}`);
  return b;
}

function checkU32(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff)
    throw new RoamError('INVALID_ARGUMENT', `${what} must be a u32, got ${v}`);
}

function checkSeq(seq: number): void {
  if (!Number.isSafeInteger(seq) || seq < 0) throw new RoamError('INVALID_ARGUMENT', `bad sequence number ${seq}`);
}

/**
 * Encodes a DATA frame; the hot path, so it avoids the generic writer and checks nothing: callers
 * (the session engine) guarantee a u16 channel and a safe-integer seq. Use `encodeFrame` otherwise.
 */
export function encodeData(channel: number, seq: number, payload: Uint8Array): Uint8Array {
  const buf = new Uint8Array(HEADER_BYTES + 10 + payload.length);
  const view = new DataView(buf.buffer);
  writeHeader(view, FrameType.DATA, 0, 10 + payload.length);
  view.setUint16(8, channel);
  view.setUint32(10, Math.floor(seq / 0x100000000));
  view.setUint32(14, seq >>> 0);
  buf.set(payload, 18);
  return buf;
}

/** Encodes any frame to bytes. Throws `INVALID_ARGUMENT` for fields that cannot be encoded. */
export function encodeFrame(f: Frame): Uint8Array {
  switch (f.type) {
    case FrameType.HELLO: {
      checkFixed(f.publicKey, KEY_BYTES, 'publicKey');
      const svc = encodeText(f.service, MAX_SERVICE_NAME_BYTES, 'service name');
      const key = f.key === undefined ? undefined : encodeText(f.key, MAX_INSTANCE_KEY_BYTES, 'instance key');
      const w = new Writer(KEY_BYTES + 1 + svc.length + (key ? 2 + key.length : 0));
      w.bytes(f.publicKey);
      w.u8(svc.length);
      w.bytes(svc);
      if (key) {
        w.u16(key.length);
        w.bytes(key);
      }
      return w.finish(f.type, (key ? FLAG_HAS_KEY : 0) | (f.prepares ? FLAG_HELLO_PREPARES : 0));
    }
    case FrameType.WELCOME: {
      checkFixed(f.sessionId, SESSION_ID_BYTES, 'sessionId');
      checkFixed(f.publicKey, KEY_BYTES, 'publicKey');
      checkFixed(f.confirm, MAC_BYTES, 'confirm');
      checkU32(f.heartbeatMs, 'heartbeatMs');
      checkU32(f.sessionTtlMs, 'sessionTtlMs');
      const w = new Writer(SESSION_ID_BYTES + KEY_BYTES + 8 + MAC_BYTES);
      w.bytes(f.sessionId);
      w.bytes(f.publicKey);
      w.u32(f.heartbeatMs);
      w.u32(f.sessionTtlMs);
      w.bytes(f.confirm);
      return w.finish(f.type);
    }
    case FrameType.CHALLENGE: {
      checkFixed(f.nonce, NONCE_BYTES, 'nonce');
      const w = new Writer(NONCE_BYTES);
      w.bytes(f.nonce);
      return w.finish(f.type, f.prepare ? FLAG_CHALLENGE_PREPARE : 0);
    }
    case FrameType.RESUME: {
      checkFixed(f.sessionId, SESSION_ID_BYTES, 'sessionId');
      checkFixed(f.nonce, NONCE_BYTES, 'nonce');
      checkFixed(f.clientNonce, NONCE_BYTES, 'clientNonce');
      checkFixed(f.mac, MAC_BYTES, 'mac');
      checkSeq(f.lastSeq);
      const w = new Writer(SESSION_ID_BYTES + NONCE_BYTES + 8 + NONCE_BYTES + MAC_BYTES);
      w.bytes(f.sessionId);
      w.bytes(f.nonce);
      w.u64(f.lastSeq);
      w.bytes(f.clientNonce);
      w.bytes(f.mac);
      return w.finish(f.type, (f.prepares ? FLAG_RESUME_PREPARES : 0) | (f.prepared ? FLAG_RESUME_PREPARED : 0));
    }
    case FrameType.RESUMED: {
      checkFixed(f.mac, MAC_BYTES, 'mac');
      checkSeq(f.lastSeq);
      const w = new Writer(8 + MAC_BYTES);
      w.u64(f.lastSeq);
      w.bytes(f.mac);
      return w.finish(f.type);
    }
    case FrameType.DATA:
      checkSeq(f.seq);
      if (!Number.isInteger(f.channel) || f.channel < 0 || f.channel > 0xffff) {
        throw new RoamError('INVALID_ARGUMENT', `bad channel ${f.channel}`);
      }
      return encodeData(f.channel, f.seq, f.payload);
    case FrameType.ACK: {
      checkSeq(f.seq);
      const w = new Writer(8);
      w.u64(f.seq);
      return w.finish(f.type);
    }
    case FrameType.PING:
    case FrameType.PONG: {
      checkU32(f.id, 'ping id');
      const w = new Writer(12);
      w.u32(f.id);
      w.f64(f.time);
      return w.finish(f.type);
    }
    case FrameType.MOVE: {
      checkFixed(f.mac, MAC_BYTES, 'mac');
      checkU32(f.moveId, 'moveId');
      const url = encodeText(f.url, MAX_TEXT_BYTES, 'move url');
      if (f.token.length > MAX_TEXT_BYTES) throw new RoamError('INVALID_ARGUMENT', 'move token too long');
      const w = new Writer(4 + 2 + url.length + 2 + f.token.length + MAC_BYTES);
      w.u32(f.moveId);
      w.u16(url.length);
      w.bytes(url);
      w.u16(f.token.length);
      w.bytes(f.token);
      w.bytes(f.mac);
      return w.finish(f.type, f.hint ? FLAG_MOVE_HINT : 0);
    }
    case FrameType.CLOSE:
    case FrameType.ERROR: {
      const text = f.type === FrameType.CLOSE ? f.reason : f.message;
      const t = encodeText(truncateText(text), MAX_TEXT_BYTES, 'text');
      const w = new Writer(4 + t.length);
      w.u16(codeNumber(f.code));
      w.u16(t.length);
      w.bytes(t);
      return w.finish(f.type);
    }
  }
}

/** Cuts human text so it always fits MAX_TEXT_BYTES once encoded. */
function truncateText(s: string): string {
  if (s.length <= MAX_TEXT_BYTES / 4) return s;
  let cut = MAX_TEXT_BYTES / 4 - 1;
  // Never split a surrogate pair: half an emoji would arrive as U+FFFD.
  const last = s.charCodeAt(cut - 1);
  if (last >= 0xd800 && last <= 0xdbff) cut--;
  return `${s.slice(0, cut)}…`;
}

/**
 * Decodes one frame's payload. `payload` may be a view into a larger buffer; DATA payloads are
 * returned as views (zero copy), every other byte field is copied.
 */
export function decodePayload(type: number, flags: number, payload: Uint8Array): Frame {
  if (type === FrameType.DATA) return decodeData(payload);
  const r = new Reader(payload);
  let f: Frame;
  switch (type) {
    case FrameType.HELLO: {
      const publicKey = r.fixed(KEY_BYTES);
      const service = r.text(r.u8(), MAX_SERVICE_NAME_BYTES, 'service name');
      const key = flags & FLAG_HAS_KEY ? r.text(r.u16(), MAX_INSTANCE_KEY_BYTES, 'instance key') : undefined;
      f = { type, publicKey, service, key };
      if (flags & FLAG_HELLO_PREPARES) f.prepares = true;
      break;
    }
    case FrameType.WELCOME:
      f = {
        type,
        sessionId: r.fixed(SESSION_ID_BYTES),
        publicKey: r.fixed(KEY_BYTES),
        heartbeatMs: r.u32(),
        sessionTtlMs: r.u32(),
        confirm: r.fixed(MAC_BYTES),
      };
      break;
    case FrameType.CHALLENGE:
      f = { type, nonce: r.fixed(NONCE_BYTES) };
      if (flags & FLAG_CHALLENGE_PREPARE) f.prepare = true;
      break;
    case FrameType.RESUME:
      f = {
        type,
        sessionId: r.fixed(SESSION_ID_BYTES),
        nonce: r.fixed(NONCE_BYTES),
        lastSeq: r.u64(),
        clientNonce: r.fixed(NONCE_BYTES),
        mac: r.fixed(MAC_BYTES),
      };
      if (flags & FLAG_RESUME_PREPARES) f.prepares = true;
      if (flags & FLAG_RESUME_PREPARED) f.prepared = true;
      break;
    case FrameType.RESUMED:
      f = { type, lastSeq: r.u64(), mac: r.fixed(MAC_BYTES) };
      break;
    case FrameType.DATA: {
      const channel = r.u16();
      const seq = r.u64();
      f = { type, channel, seq, payload: r.rest() };
      break;
    }
    case FrameType.ACK:
      f = { type, seq: r.u64() };
      break;
    case FrameType.PING:
    case FrameType.PONG:
      f = { type, id: r.u32(), time: r.f64() };
      break;
    case FrameType.MOVE: {
      const moveId = r.u32();
      const url = r.text(r.u16(), MAX_TEXT_BYTES, 'move url');
      const tokenLen = r.u16();
      if (tokenLen > MAX_TEXT_BYTES) malformed('move token too long');
      const token = r.fixed(tokenLen);
      f = { type, moveId, url, token, mac: r.fixed(MAC_BYTES) };
      if (flags & FLAG_MOVE_HINT) f.hint = true;
      break;
    }
    case FrameType.CLOSE:
    case FrameType.ERROR: {
      const code = codeName(r.u16());
      const text = r.text(r.u16(), MAX_TEXT_BYTES, 'text');
      f = type === FrameType.CLOSE ? { type, code, reason: text } : { type, code, message: text };
      break;
    }
    default:
      throw new ProtocolError('UNKNOWN_FRAME_TYPE', `unknown frame type ${type}`);
  }
  r.end();
  return f;
}

/** DATA is the hot path: read its 10-byte prefix in place, no Reader or DataView per frame. */
function decodeData(p: Uint8Array): DataFrame {
  if (p.length < 10) malformed(`payload truncated: DATA needs 10 bytes, got ${p.length}`);
  const hi = (((p[2] as number) << 24) >>> 0) + ((p[3] as number) << 16) + ((p[4] as number) << 8) + (p[5] as number);
  if (hi > 0x1fffff) malformed('sequence number above 2^53');
  const lo = (((p[6] as number) << 24) >>> 0) + ((p[7] as number) << 16) + ((p[8] as number) << 8) + (p[9] as number);
  return {
    type: FrameType.DATA,
    channel: ((p[0] as number) << 8) | (p[1] as number),
    seq: hi * 0x100000000 + lo,
    payload: p.subarray(10),
  };
}

/** Decodes exactly one complete frame (header + payload). */
export function decodeFrame(bytes: Uint8Array, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Frame {
  if (bytes.length < HEADER_BYTES) malformed(`frame shorter than its ${HEADER_BYTES}-byte header`);
  const h = readHeader(bytes, 0, maxFrameBytes);
  if (bytes.length !== HEADER_BYTES + h.length) {
    malformed(`frame is ${bytes.length} bytes, header says ${HEADER_BYTES + h.length}`);
  }
  return decodePayload(h.type, h.flags, bytes.subarray(HEADER_BYTES));
}

export interface FrameHeader {
  type: number;
  flags: number;
  length: number;
}

/** Validates a header at `off`; all checks happen before the caller allocates for the payload. */
export function readHeader(buf: Uint8Array, off: number, maxFrameBytes: number): FrameHeader {
  const version = buf[off] as number;
  if (version !== WIRE_VERSION) {
    throw new ProtocolError('UNSUPPORTED_VERSION', `frame version ${version}, this endpoint speaks ${WIRE_VERSION}`);
  }
  const type = buf[off + 1] as number;
  if (type < FrameType.HELLO || type > FrameType.ERROR) {
    throw new ProtocolError('UNKNOWN_FRAME_TYPE', `unknown frame type ${type}`);
  }
  const flags = buf[off + 2] as number;
  if (buf[off + 3] !== 0) malformed('reserved header byte is not zero');
  const length =
    (((buf[off + 4] as number) << 24) >>> 0) +
    ((buf[off + 5] as number) << 16) +
    ((buf[off + 6] as number) << 8) +
    (buf[off + 7] as number);
  if (length > maxFrameBytes) {
    throw new ProtocolError('FRAME_TOO_LARGE', `frame payload of ${length} bytes exceeds limit ${maxFrameBytes}`);
  }
  return { type, flags, length };
}
