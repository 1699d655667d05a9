import {
  type CodeName,
  DEFAULT_MAX_FRAME_BYTES,
  encodeData,
  encodeFrame,
  type Frame,
  FrameType,
  HEADER_BYTES,
  ProtocolError,
  RoamError,
} from '../wire/index.js';
import { type Clock, systemClock, type TimerHandle } from './clock.js';
import type { FramedConnection } from './connection.js';
import { Emitter } from './emitter.js';
import { lostReasonFor, SESSION_FATAL_CODES, type SessionEvent } from './events.js';

/** Tunables of the reliable-delivery engine. Defaults suit interactive services on real networks. */
export interface EngineOptions {
  clock?: Clock;
  /** Hard bound on unacknowledged outbound bytes. Exceeding it loses the session with REPLAY_WINDOW_EXCEEDED. Default 4 MiB. */
  maxReplayBytes?: number;
  /** `send` returns false at or above this many unacknowledged bytes; `drain` fires once below half of it. Default maxReplayBytes / 2. */
  highWaterMark?: number;
  /** Smallest heartbeat interval; the interval is max(heartbeatMs, 4 × SRTT). Default 1000 ms. */
  heartbeatMs?: number;
  /** A transport with nothing received for `deadProbes` heartbeat intervals is declared dead. Default 3. */
  deadProbes?: number;
  /**
   * Who sends the heartbeat PINGs. `lead` (default, the client's side): a PING every interval.
   * `follow` (the server's side): a PING only after a whole interval with nothing received, so
   * while the leader's PINGs arrive (and are answered) an idle session costs one PING and one PONG
   * per interval instead of two of each. Either side still declares the transport dead after
   * `deadProbes` silent intervals.
   */
  heartbeat?: 'lead' | 'follow';
  /** An ACK waits at most this long to be coalesced with later ones. Default 10 ms. */
  ackDelayMs?: number;
  /** …or until this many DATA frames are unacknowledged. Default 32. */
  ackEveryFrames?: number;
  /** …or until this many bytes are unacknowledged. Default 256 KiB: small against the replay window, large enough that big messages are not acked one by one. */
  ackEveryBytes?: number;
  maxFrameBytes?: number;
}

/** `attached`: a transport carries the session. `detached`: none does; the session waits for a resume. */
export type EngineState = 'attached' | 'detached' | 'lost' | 'closed';

const DATA_OVERHEAD = HEADER_BYTES + 10;

interface ReplayEntry {
  seq: number;
  bytes: Uint8Array;
}

/** Sequence state and unacknowledged messages: the transport part of a continuation. */
export interface TransportSnapshot {
  sentSeq: number;
  recvSeq: number;
  peerAckedSeq: number;
  unacked: Array<{ seq: number; channel: number; payload: Uint8Array }>;
}

export interface EngineStats {
  sentSeq: number;
  recvSeq: number;
  peerAckedSeq: number;
  replayBytes: number;
  replayFrames: number;
  duplicatesDropped: number;
  retransmitted: number;
}

type EngineEvents = {
  /** An application message, delivered exactly once and in order. */
  message: [payload: Uint8Array, channel: number];
  event: [SessionEvent];
  /** Unacknowledged bytes fell below half the high-water mark after `send` returned false. */
  drain: [];
  /** A MOVE frame, for the owner (the client) to authenticate and act on. */
  move: [Extract<Frame, { type: typeof FrameType.MOVE }>];
  /**
   * A CHALLENGE arrived on the attached transport: the peer (a gateway re-splicing the session to
   * another host) asks for a new RESUME on this same connection. The engine has already let go of
   * `conn` without closing it (state `detached`, no event) and frames after the CHALLENGE queue
   * on it; the owner answers the nonce and calls {@link SessionEngine.attach} with `conn` again.
   */
  challenge: [nonce: Uint8Array, conn: FramedConnection];
  /**
   * A prepared CHALLENGE (a gateway announces a move and asks for a RESUME ahead of it): the
   * engine keeps using `conn`; the owner answers with a prepared RESUME on it.
   */
  prepare: [nonce: Uint8Array, conn: FramedConnection];
  /**
   * A RESUMED arrived on the attached transport: the answer to a prepared RESUME, once the
   * gateway moved the session's upstream. The engine has let go of `conn` as for `challenge`
   * (frames after it queue); the owner checks the proof and re-attaches, or fails `conn`.
   */
  resumed: [frame: Extract<Frame, { type: typeof FrameType.RESUMED }>, conn: FramedConnection];
};

/**
 * One side of a session's reliable, ordered byte-message stream, independent of any transport.
 *
 * Each direction numbers DATA frames from 1. The receiver delivers seq = last+1, drops seq <= last
 * (a retransmitted duplicate) and treats a gap as a protocol violation. Cumulative ACKs, coalesced,
 * free the sender's replay buffer. When a new transport is attached after a resume handshake, the
 * sender retransmits exactly the frames above the peer's last received seq, so nothing is lost and
 * nothing is delivered twice across any number of transport changes.
 */
export class SessionEngine extends Emitter<EngineEvents> {
  readonly clock: Clock;
  readonly maxReplayBytes: number;
  readonly highWaterMark: number;
  readonly maxFrameBytes: number;
  private heartbeatMs: number;
  private readonly deadProbes: number;
  private readonly follows: boolean;
  private readonly ackDelayMs: number;
  private readonly ackEveryFrames: number;
  private readonly ackEveryBytes: number;

  private _state: EngineState = 'detached';
  private conn: FramedConnection | undefined;
  private sentSeq = 0;
  private recvSeq = 0;
  private peerAcked = 0;
  private ackedToPeer = 0;
  private unackedBytesIn = 0;
  private replay: ReplayEntry[] = [];
  private replayHead = 0;
  private replayBytes = 0;
  private blocked = false;
  private detachedAt: number | undefined;
  private lastRecvAt = 0;
  private attachments = 0;
  private pingId = 0;
  private srtt: number | undefined;
  private rttvar: number | undefined;
  private heartbeatTimer: TimerHandle | undefined;
  private ackTimer: TimerHandle | undefined;
  private duplicates = 0;
  private retransmitted = 0;
  private endReason: { code: CodeName; message: string } | undefined;
  /** While frozen, in-order DATA is held here: not delivered, not acknowledged. */
  private held: Array<{ payload: Uint8Array; channel: number }> | undefined;
  private heldBytes = 0;

  constructor(opts: EngineOptions = {}) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.maxReplayBytes = opts.maxReplayBytes ?? 4 * 1024 * 1024;
    this.highWaterMark = opts.highWaterMark ?? Math.floor(this.maxReplayBytes / 2);
    this.heartbeatMs = opts.heartbeatMs ?? 1000;
    this.deadProbes = opts.deadProbes ?? 3;
    this.follows = opts.heartbeat === 'follow';
    this.ackDelayMs = opts.ackDelayMs ?? 10;
    this.ackEveryFrames = opts.ackEveryFrames ?? 32;
    this.ackEveryBytes = opts.ackEveryBytes ?? 256 * 1024;
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    if (this.highWaterMark > this.maxReplayBytes) {
      throw new RoamError('INVALID_ARGUMENT', 'highWaterMark must not exceed maxReplayBytes');
    }
  }

  get state(): EngineState {
    return this._state;
  }
  /** Highest seq received and delivered from the peer; what a RESUME/RESUMED frame reports. */
  get lastReceivedSeq(): number {
    return this.recvSeq;
  }
  get lastSentSeq(): number {
    return this.sentSeq;
  }
  get peerAckedSeq(): number {
    return this.peerAcked;
  }
  /**
   * Counts transports attached so far: equal values before and after mean the same transport
   * carries the session, so a control frame written in between is already on it.
   */
  get transportGeneration(): number {
    return this.attachments;
  }
  /** Smoothed round-trip time in ms (RFC 6298), once a heartbeat has been answered. */
  get rtt(): { srtt: number; rttvar: number } | undefined {
    return this.srtt === undefined || this.rttvar === undefined ? undefined : { srtt: this.srtt, rttvar: this.rttvar };
  }
  /** Current heartbeat interval: max(heartbeatMs, 4 × SRTT). */
  get heartbeatIntervalMs(): number {
    return Math.max(this.heartbeatMs, 4 * (this.srtt ?? 0));
  }
  /** Silence after which the transport is declared dead. */
  get deadAfterMs(): number {
    return this.heartbeatIntervalMs * this.deadProbes;
  }
  get bufferedBytes(): number {
    return this.replayBytes;
  }
  get remoteAddress(): string | undefined {
    return this.conn?.transport.remoteAddress;
  }
  /** Why the session ended, once lost or closed. */
  get ended(): { code: CodeName; message: string } | undefined {
    return this.endReason;
  }

  stats(): EngineStats {
    return {
      sentSeq: this.sentSeq,
      recvSeq: this.recvSeq,
      peerAckedSeq: this.peerAcked,
      replayBytes: this.replayBytes,
      replayFrames: this.replay.length - this.replayHead,
      duplicatesDropped: this.duplicates,
      retransmitted: this.retransmitted,
    };
  }

  /**
   * Queues a message. Returns false when unacknowledged bytes reached the high-water mark: stop
   * sending until `drain`. Ignoring that and passing `maxReplayBytes` loses the session
   * (REPLAY_WINDOW_EXCEEDED) — a bounded buffer is the only honest alternative to unbounded memory.
   * While detached, messages wait in the same buffer and are sent on resume.
   */
  send(payload: Uint8Array, channel = 0): boolean {
    if (this._state === 'lost' || this._state === 'closed') {
      throw new RoamError('INVALID_STATE', `cannot send: session is ${this._state}`);
    }
    if (payload.length + DATA_OVERHEAD > this.maxFrameBytes) {
      throw new RoamError(
        'MESSAGE_TOO_LARGE',
        `message of ${payload.length} bytes exceeds the ${this.maxFrameBytes - DATA_OVERHEAD}-byte limit`,
      );
    }
    if (channel < 0 || channel > 0xffff || !Number.isInteger(channel)) {
      throw new RoamError('INVALID_ARGUMENT', `channel must be an integer in 0..65535, got ${channel}`);
    }
    const bytes = encodeData(channel, this.sentSeq + 1, payload);
    if (this.replayBytes + bytes.length > this.maxReplayBytes) {
      const msg = `${this.replayBytes + bytes.length} unacknowledged bytes exceed the ${this.maxReplayBytes}-byte replay window`;
      this.lose('REPLAY_WINDOW_EXCEEDED', msg);
      throw new RoamError('REPLAY_WINDOW_EXCEEDED', msg);
    }
    this.sentSeq++;
    this.replay.push({ seq: this.sentSeq, bytes });
    this.replayBytes += bytes.length;
    if (this._state === 'attached') this.conn?.write(bytes);
    if (this.replayBytes >= this.highWaterMark) {
      this.blocked = true;
      return false;
    }
    return true;
  }

  /**
   * Hands the session a freshly authenticated transport. `peerLastSeq` is the last seq the peer
   * says it received from us; everything after it is retransmitted. Throws RESUME_SEQ_INVALID when the
   * claim is impossible (beyond what we sent, or behind what the peer already acknowledged).
   */
  attach(conn: FramedConnection, peerLastSeq: number): { replayed: number } {
    this.checkResumeClaim(peerLastSeq);
    const previous = this.conn;
    if (previous && previous !== conn) {
      this.conn = undefined;
      previous.close('SESSION_REPLACED', 'another transport resumed this session', true);
    }
    this.releaseThrough(peerLastSeq);
    // The peer resumes from our lastReceivedSeq and retransmits anything we held.
    if (this.held) {
      this.held.length = 0;
      this.heldBytes = 0;
    }
    this.conn = conn;
    this.attachments++;
    const wasDetachedAt = this.detachedAt;
    this._state = 'attached';
    this.detachedAt = undefined;
    this.lastRecvAt = this.clock.now();
    conn.setHandler({
      frame: (f) => this.onFrame(conn, f),
      closed: (err) => {
        if (this.conn === conn) this.detach(err?.code ?? 'TRANSPORT_CLOSED', err?.message ?? 'transport closed');
      },
    });
    let replayed = 0;
    for (let i = this.replayHead; i < this.replay.length; i++) {
      conn.write((this.replay[i] as ReplayEntry).bytes);
      replayed++;
    }
    this.retransmitted += replayed;
    this.scheduleHeartbeat();
    // A new transport that replaces a live one (the old one died unnoticed) is a resume too.
    if (wasDetachedAt !== undefined || (previous && previous !== conn)) {
      this.emit('event', {
        type: 'resumed',
        gapMs: wasDetachedAt === undefined ? 0 : this.clock.now() - wasDetachedAt,
        replayed,
        remoteAddress: conn.transport.remoteAddress,
      });
    }
    this.maybeDrain();
    return { replayed };
  }

  /** Adopts the server's heartbeat interval from WELCOME (never below 100 ms). */
  setHeartbeatMs(ms: number): void {
    if (ms >= 100 && Number.isFinite(ms)) this.heartbeatMs = ms;
  }

  /** Throws unless a peer that says it received up to `peerLastSeq` can be resumed. */
  checkResumeClaim(peerLastSeq: number): void {
    if (this._state === 'lost' || this._state === 'closed') {
      throw new RoamError('INVALID_STATE', `cannot attach: session is ${this._state}`);
    }
    if (peerLastSeq > this.sentSeq || peerLastSeq < this.peerAcked) {
      throw new RoamError(
        'RESUME_SEQ_INVALID',
        `peer claims last seq ${peerLastSeq}; valid range is ${this.peerAcked}..${this.sentSeq}`,
      );
    }
  }

  /** The transport is gone; keep everything and wait for a resume. */
  detach(code: CodeName, message: string): void {
    if (this._state !== 'attached') return;
    this._state = 'detached';
    this.detachedAt = this.clock.now();
    this.stopTimers();
    const conn = this.conn;
    this.conn = undefined;
    conn?.abort();
    this.emit('event', { type: 'suspended', code, message });
  }

  /** Ends the session for good: the peer is told (when reachable) and memory is released. */
  lose(code: CodeName, message: string): void {
    if (this._state === 'lost' || this._state === 'closed') return;
    this._state = 'lost';
    this.endReason = { code, message };
    this.stopTimers();
    const conn = this.conn;
    this.conn = undefined;
    conn?.close(code, message, true);
    this.releaseAll();
    this.emit('event', { type: 'lost', reason: lostReasonFor(code), code, message });
  }

  /** Graceful close: CLOSE goes out after every queued message on the current transport. */
  close(reason = '', code: CodeName = 'NORMAL'): void {
    if (this._state === 'lost' || this._state === 'closed') return;
    this._state = 'closed';
    this.endReason = { code, message: reason };
    this.stopTimers();
    const conn = this.conn;
    this.conn = undefined;
    conn?.close(code, reason);
    this.releaseAll();
    this.emit('event', { type: 'closed', code, reason, byPeer: false });
  }

  /**
   * The transport half of a continuation: sequence numbers and every unacknowledged message.
   * Call it once the engine is detached, so nothing changes underneath.
   */
  exportTransport(): TransportSnapshot {
    const unacked: TransportSnapshot['unacked'] = [];
    for (let i = this.replayHead; i < this.replay.length; i++) {
      const e = this.replay[i] as ReplayEntry;
      const b = e.bytes;
      unacked.push({
        seq: e.seq,
        channel: ((b[8] as number) << 8) | (b[9] as number),
        payload: b.slice(DATA_OVERHEAD),
      });
    }
    return { sentSeq: this.sentSeq, recvSeq: this.recvSeq, peerAckedSeq: this.peerAcked, unacked };
  }

  /** Rebuilds a detached engine from a continuation's transport state. */
  static restore(t: TransportSnapshot, opts: EngineOptions = {}): SessionEngine {
    const e = new SessionEngine(opts);
    e.sentSeq = t.peerAckedSeq;
    e.recvSeq = t.recvSeq;
    e.peerAcked = t.peerAckedSeq;
    e.ackedToPeer = t.recvSeq;
    for (const u of t.unacked) {
      if (u.seq !== e.sentSeq + 1) {
        throw new RoamError('CONTINUATION_CORRUPT', `unacknowledged seq ${u.seq} does not follow ${e.sentSeq}`);
      }
      const bytes = encodeData(u.channel, u.seq, u.payload);
      e.replay.push({ seq: u.seq, bytes });
      e.replayBytes += bytes.length;
      e.sentSeq = u.seq;
    }
    if (e.sentSeq !== t.sentSeq)
      throw new RoamError('CONTINUATION_CORRUPT', 'unacknowledged messages do not end at sentSeq');
    e.detachedAt = e.clock.now();
    return e;
  }

  /**
   * Leaves memory without ending the session: it lives on in a continuation. No event is emitted
   * and the peer is told nothing (its transport, if any, is dropped so it resumes elsewhere).
   */
  retire(): void {
    if (this._state === 'lost' || this._state === 'closed') return;
    this._state = 'closed';
    this.endReason = { code: 'NORMAL', message: 'suspended to a continuation' };
    this.stopTimers();
    const conn = this.conn;
    this.conn = undefined;
    conn?.abort();
    this.releaseAll();
  }

  /** Sends an already-encoded control frame (MOVE) on the current transport, if any. */
  writeControl(bytes: Uint8Array): boolean {
    if (this._state !== 'attached' || !this.conn) return false;
    this.conn.write(bytes);
    return true;
  }

  /**
   * Stops delivering inbound messages, for a migration's stop-and-copy. DATA that arrives while
   * frozen is held, neither delivered nor acknowledged, so {@link lastReceivedSeq} stays where
   * the snapshot was taken: if the migration commits the peer retransmits those frames to the
   * new owner; if it aborts, {@link thaw} delivers them here. Held bytes are bounded by
   * `maxReplayBytes`; beyond that the transport is dropped (the peer retransmits on resume).
   */
  freeze(): void {
    if (this.held === undefined) this.held = [];
  }

  get frozen(): boolean {
    return this.held !== undefined;
  }

  /** Delivers what was held while frozen, in order, and resumes normal delivery. */
  thaw(): void {
    const held = this.held;
    if (!held) return;
    this.held = undefined;
    this.heldBytes = 0;
    for (const h of held) {
      this.recvSeq++;
      this.unackedBytesIn += h.payload.length + DATA_OVERHEAD;
      this.emit('message', h.payload, h.channel);
    }
    if (held.length > 0) this.scheduleAck();
  }

  /**
   * Drops the current transport without a goodbye, as a dead network would: the peer sees it end
   * and resumes (a client), or waits for a resume (a server). Unacknowledged messages stay in the
   * replay buffer for the next transport.
   */
  dropTransport(): void {
    this.conn?.drop();
  }

  private onFrame(conn: FramedConnection, f: Frame): void {
    this.lastRecvAt = this.clock.now();
    switch (f.type) {
      case FrameType.DATA: {
        const held = this.held;
        if (held) {
          const top = this.recvSeq + held.length;
          if (f.seq <= top) {
            this.duplicates++;
            return;
          }
          if (f.seq !== top + 1) {
            conn.fail(new ProtocolError('SEQUENCE_GAP', `expected seq ${top + 1}, got ${f.seq}`));
            return;
          }
          this.heldBytes += f.payload.length;
          if (this.heldBytes > this.maxReplayBytes) {
            held.length = 0;
            this.heldBytes = 0;
            this.detach('OVERLOADED', 'too much inbound data while frozen');
            return;
          }
          // The payload may be a view into a transport chunk that is reused; keep our own copy.
          held.push({ payload: f.payload.slice(), channel: f.channel });
          return;
        }
        if (f.seq <= this.recvSeq) {
          this.duplicates++;
          return;
        }
        if (f.seq !== this.recvSeq + 1) {
          conn.fail(new ProtocolError('SEQUENCE_GAP', `expected seq ${this.recvSeq + 1}, got ${f.seq}`));
          return;
        }
        this.recvSeq = f.seq;
        this.unackedBytesIn += f.payload.length + DATA_OVERHEAD;
        this.emit('message', f.payload, f.channel);
        this.scheduleAck();
        return;
      }
      case FrameType.ACK:
        if (f.seq > this.sentSeq) {
          conn.fail(new ProtocolError('UNEXPECTED_FRAME', `ACK of seq ${f.seq} beyond last sent ${this.sentSeq}`));
          return;
        }
        if (f.seq > this.peerAcked) {
          this.releaseThrough(f.seq);
          this.maybeDrain();
        }
        return;
      case FrameType.PING:
        conn.writeFrame({ type: FrameType.PONG, id: f.id, time: f.time });
        return;
      case FrameType.PONG:
        this.onRttSample(this.clock.now() - f.time);
        return;
      case FrameType.CLOSE:
        if (this._state !== 'attached') return;
        this._state = 'closed';
        this.endReason = { code: f.code, message: f.reason };
        this.stopTimers();
        this.conn = undefined;
        conn.abort();
        this.releaseAll();
        this.emit('event', { type: 'closed', code: f.code, reason: f.reason, byPeer: true });
        return;
      case FrameType.ERROR:
        if (SESSION_FATAL_CODES.has(f.code)) {
          this.conn = undefined;
          conn.abort();
          this.lose(f.code, f.message);
        } else {
          this.detach(f.code, f.message);
        }
        return;
      case FrameType.MOVE:
        if (this.listenerCount('move') === 0) {
          conn.fail(new ProtocolError('UNEXPECTED_FRAME', 'MOVE is only sent by servers'));
          return;
        }
        this.emit('move', f);
        return;
      case FrameType.CHALLENGE:
        // Without an owner that can re-handshake in-band (servers), a CHALLENGE here is a violation.
        if (this.listenerCount('challenge') === 0) {
          conn.fail(new ProtocolError('UNEXPECTED_FRAME', 'CHALLENGE on an established session'));
          return;
        }
        if (f.prepare && this.listenerCount('prepare') > 0) {
          this.emit('prepare', f.nonce.slice(), conn);
          return;
        }
        this.park(conn);
        this.emit('challenge', f.nonce.slice(), conn);
        return;
      case FrameType.RESUMED:
        if (this.listenerCount('resumed') === 0) {
          conn.fail(new ProtocolError('UNEXPECTED_FRAME', 'RESUMED on an established session'));
          return;
        }
        this.park(conn);
        this.emit('resumed', f, conn);
        return;
      default:
        conn.fail(new ProtocolError('UNEXPECTED_FRAME', `frame type ${f.type} not allowed on an established session`));
    }
  }

  /**
   * Stops using `conn` without closing it: frames that follow queue on it for a handshake.
   * Like {@link detach}, but silent — the owner re-attaches on the same connection, and an
   * ordinary `resumed` event follows (or, if that fails, the owner reports `suspended`).
   */
  private park(conn: FramedConnection): void {
    this.conn = undefined;
    conn.clearHandler();
    this._state = 'detached';
    this.detachedAt = this.clock.now();
    this.stopTimers();
  }

  private onRttSample(r: number): void {
    if (!(r >= 0) || !Number.isFinite(r)) return;
    if (this.srtt === undefined || this.rttvar === undefined) {
      this.srtt = r;
      this.rttvar = r / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - r);
      this.srtt = 0.875 * this.srtt + 0.125 * r;
    }
  }

  private scheduleAck(): void {
    const pending = this.recvSeq - this.ackedToPeer;
    if (pending >= this.ackEveryFrames || this.unackedBytesIn >= this.ackEveryBytes) {
      this.sendAck();
    } else if (this.ackTimer === undefined) {
      this.ackTimer = this.clock.setTimeout(() => {
        this.ackTimer = undefined;
        this.sendAck();
      }, this.ackDelayMs);
    }
  }

  private sendAck(): void {
    if (this.ackTimer !== undefined) {
      this.clock.clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
    if (this.recvSeq === this.ackedToPeer || this._state !== 'attached' || !this.conn) return;
    this.ackedToPeer = this.recvSeq;
    this.unackedBytesIn = 0;
    this.conn.write(encodeFrame({ type: FrameType.ACK, seq: this.recvSeq }));
  }

  private scheduleHeartbeat(): void {
    if (this.heartbeatTimer !== undefined) this.clock.clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = this.clock.setTimeout(() => {
      this.heartbeatTimer = undefined;
      if (this._state !== 'attached' || !this.conn) return;
      const silent = this.clock.now() - this.lastRecvAt;
      if (silent > this.deadAfterMs) {
        this.detach('TRANSPORT_DEAD', `nothing received for ${Math.round(silent)} ms`);
        return;
      }
      // A follower's PING would only repeat what the leader's PINGs and this side's PONGs already
      // establish; it probes once they stop (the leader's interval may be longer: 4 × its SRTT).
      if (!this.follows || silent >= this.heartbeatIntervalMs) {
        this.conn.writeFrame({ type: FrameType.PING, id: ++this.pingId >>> 0, time: this.clock.now() });
      }
      this.scheduleHeartbeat();
    }, this.heartbeatIntervalMs);
  }

  private stopTimers(): void {
    if (this.heartbeatTimer !== undefined) this.clock.clearTimeout(this.heartbeatTimer);
    if (this.ackTimer !== undefined) this.clock.clearTimeout(this.ackTimer);
    this.heartbeatTimer = undefined;
    this.ackTimer = undefined;
    // An ACK we never sent is re-derived from RESUME/RESUMED; nothing to keep.
    this.ackedToPeer = this.recvSeq;
    this.unackedBytesIn = 0;
  }

  private releaseThrough(seq: number): void {
    if (seq > this.peerAcked) this.peerAcked = seq;
    let h = this.replayHead;
    const r = this.replay;
    while (h < r.length && (r[h] as ReplayEntry).seq <= seq) {
      this.replayBytes -= (r[h] as ReplayEntry).bytes.length;
      h++;
    }
    if (h === r.length) {
      this.replay = [];
      this.replayHead = 0;
    } else if (h > 1024 && h * 2 > r.length) {
      this.replay = r.slice(h);
      this.replayHead = 0;
    } else {
      this.replayHead = h;
    }
  }

  private releaseAll(): void {
    this.replay = [];
    this.replayHead = 0;
    this.replayBytes = 0;
    this.blocked = false;
  }

  private maybeDrain(): void {
    if (this.blocked && this.replayBytes < this.highWaterMark / 2) {
      this.blocked = false;
      this.emit('drain');
    }
  }
}
