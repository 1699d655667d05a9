import { unpack } from 'msgpackr';
import {
  type Clock,
  checkResumed,
  clientHello,
  clientResume,
  Emitter,
  type EngineOptions,
  FramedConnection,
  lostReasonFor,
  prepareResume,
  SESSION_FATAL_CODES,
  type SessionCrypto,
  SessionEngine,
  type SessionEvent,
  type SessionKey,
  systemClock,
  type TimerHandle,
  type Transport,
  toHex,
  verifyMove,
} from '../session/index.js';
import {
  type CodeName,
  codeText,
  DEFAULT_MAX_FRAME_BYTES,
  type Frame,
  type FrameType,
  RoamError,
} from '../wire/index.js';

/** Opens a transport to `url`. The node entry registers ws/wss/tcp/tls; browsers use WebSocket. */
export type Connector = (url: string, opts: { localAddress?: string | undefined }) => Promise<Transport>;

/** Reconnect policy: exponential backoff with full jitter, so a thousand clients that lose one host do not return in lock-step. */
export interface ReconnectOptions {
  /** Upper bound of the first random delay. Default 100 ms. */
  initialDelayMs?: number;
  /** Cap of the backoff. Default 5000 ms. */
  maxDelayMs?: number;
  /** Give up a first connection after this long. Default 30 s. Resumes give up when the session's TTL passes. */
  connectTimeoutMs?: number;
}

export interface ConnectOptions {
  /** Service name on the server. */
  service: string;
  /** Instance key: sessions with the same key share one instance (a room, a game, a document). */
  key?: string;
  /** How to open transports. Required in `roam/client` for browsers only if the URL is not ws:// or wss://. */
  connector?: Connector;
  /** Local address to bind (Node only); change it with `setLocalAddress` to move the client. */
  localAddress?: string;
  reconnect?: ReconnectOptions;
  /** Time allowed for each handshake. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Reliable-delivery tunables (replay window, heartbeats, ACK coalescing). */
  engine?: EngineOptions;
  clock?: Clock;
  /** Key agreement and MAC implementation. Default: WebCrypto (browsers); node:crypto under Node. */
  crypto?: SessionCrypto;
  /** Random source for jitter, in [0, 1). */
  random?: () => number;
}

export type SessionState = 'connecting' | 'open' | 'suspended' | 'lost' | 'closed';

type SessionEvents = {
  /** One application message, exactly once, in order. */
  message: [data: Uint8Array, channel: number];
  /** Every lifecycle event, as one typed union. */
  event: [SessionEvent];
  open: [Extract<SessionEvent, { type: 'open' }>];
  suspended: [Extract<SessionEvent, { type: 'suspended' }>];
  resumed: [Extract<SessionEvent, { type: 'resumed' }>];
  moved: [Extract<SessionEvent, { type: 'moved' }>];
  lost: [Extract<SessionEvent, { type: 'lost' }>];
  closed: [Extract<SessionEvent, { type: 'closed' }>];
  /** Unacknowledged bytes fell below the low-water mark after `send` returned false. */
  drain: [];
  /** A value the service exported with `session.export(key)`, delivered when the session is restored. */
  exported: [key: string, value: unknown];
  /** Non-fatal problems: rejected MOVE frames, failed reconnect attempts. */
  warning: [RoamError];
};

/** Refusals after which retrying a resume cannot help: the session is gone, or this client is not its key holder. */
const FATAL_ON_RESUME: ReadonlySet<CodeName> = new Set<CodeName>([
  ...SESSION_FATAL_CODES,
  'RESUME_PROOF_INVALID',
  'HANDSHAKE_FAILED',
  'RESUME_SEQ_INVALID',
  'CONTINUATION_CORRUPT',
]);
/** A transport being opened, or open, for a MOVE the server announced. */
interface Prepared {
  url: string;
  conn: Promise<FramedConnection | undefined>;
  timer: TimerHandle;
  /** Given up (expired, another endpoint, session over): the connection is closed once it opens. */
  dropped: boolean;
}

/** How long a transport opened on a MOVE hint waits for its MOVE (servers accept a challenge for 10 s). */
const PREPARED_TTL_MS = 5000;

/** INSTANCE_ELSEWHERE answers followed in a row before backing off (owners can move meanwhile). */
const MAX_REDIRECTS = 3;

/**
 * Where an INSTANCE_ELSEWHERE answer sends a HELLO: the URL in its message, if it parses and keeps
 * the transport's security (ws→ws or wss, wss→wss, tcp→tcp or tls, tls→tls). Undefined otherwise.
 */
export function redirectTarget(from: string, to: string): string | undefined {
  let a: URL;
  let b: URL;
  try {
    a = new URL(from);
    b = new URL(to);
  } catch {
    return undefined;
  }
  return REDIRECT_SCHEMES[a.protocol]?.includes(b.protocol) ? to : undefined;
}

/** The schemes a redirect may go to, from each scheme: the same, or its TLS form. */
const REDIRECT_SCHEMES: Readonly<Record<string, readonly string[]>> = {
  'ws:': ['ws:', 'wss:'],
  'wss:': ['wss:'],
  'tcp:': ['tcp:', 'tls:'],
  'tls:': ['tls:'],
};

const FATAL_ON_HELLO: ReadonlySet<CodeName> = new Set<CodeName>(['UNKNOWN_SERVICE', 'HANDSHAKE_FAILED', 'OVERLOADED']);

const utf8 = new TextEncoder();
const utf8dec = new TextDecoder();

/** Channels from 0xff00 up are roam's own; 0xffff carries exported values as `key \0 msgpack`. */
export const EXPORT_CHANNEL = 0xffff;

/**
 * A client's logical connection to one service instance. It survives transport drops, address
 * changes and server moves: messages are delivered exactly once and in order in both directions.
 *
 * @example
 * const s = connect('ws://127.0.0.1:7071', { service: 'echo' });
 * s.on('message', (data) => console.log(new TextDecoder().decode(data)));
 * await s.ready;
 * s.send('hello');
 */
export class Session extends Emitter<SessionEvents> {
  /** Resolves once the session is open; rejects if it is lost or closed first. */
  readonly ready: Promise<void>;
  private _state: SessionState = 'connecting';
  private _url: string;
  private _id: Uint8Array | undefined;
  private key: SessionKey | undefined;
  private sessionTtlMs = 0;
  private localAddress: string | undefined;
  private readonly engine: SessionEngine;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly connector: Connector;
  private readonly handshakeTimeoutMs: number;
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly connectTimeoutMs: number;
  private readonly maxFrameBytes: number;
  /** The server may send its whole replay window before we finish verifying WELCOME/RESUMED. */
  private readonly maxQueuedBytes: number;
  private lastMoveId = 0;
  private lastMoveUrl: string | undefined;
  /**
   * Where the session was before its last MOVE, until the new endpoint resumes it. A MOVE is
   * tentative: a host sends it as it freezes the session, before the destination has committed,
   * so the new transport's setup overlaps the hand-over. If the destination cannot be reached or
   * says the migration aborted, the session resumes where it came from.
   */
  private fallbackUrl: string | undefined;
  /** A transport opened ahead of a MOVE the server announced (a hint), until it is used or expires. */
  private prepared: Prepared | undefined;
  /** The RESUME this client prepared for a gateway (after a prepared CHALLENGE) and its nonce. */
  private preparedResume: { conn: FramedConnection; clientNonce: Uint8Array } | undefined;
  private wakeTimer: TimerHandle | undefined;
  private wake: (() => void) | undefined;
  private attempt = 0;
  private resumeImmediately = false;
  private resolveReady!: () => void;
  private rejectReady!: (err: RoamError) => void;
  private connecting: FramedConnection | undefined;

  constructor(
    url: string,
    private readonly opts: ConnectOptions & { connector: Connector },
  ) {
    super();
    if (!opts.service) throw new RoamError('INVALID_ARGUMENT', 'connect() needs a service name');
    this._url = url;
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.connector = opts.connector;
    this.localAddress = opts.localAddress;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 10_000;
    this.initialDelayMs = opts.reconnect?.initialDelayMs ?? 100;
    this.maxDelayMs = opts.reconnect?.maxDelayMs ?? 5000;
    this.connectTimeoutMs = opts.reconnect?.connectTimeoutMs ?? 30_000;
    this.maxFrameBytes = opts.engine?.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.maxQueuedBytes = this.maxFrameBytes + (opts.engine?.maxReplayBytes ?? 4 * 1024 * 1024);
    this.engine = new SessionEngine({ ...opts.engine, clock: this.clock });
    this.ready = new Promise<void>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    // A caller that never awaits `ready` must not get an unhandled rejection.
    this.ready.catch(() => {});
    this.engine.on('message', (data, channel) => {
      if (channel === EXPORT_CHANNEL) this.onExported(data);
      else this.emit('message', data, channel);
    });
    this.engine.on('drain', () => this.emit('drain'));
    this.engine.on('event', (ev) => this.onEngineEvent(ev));
    this.engine.on('move', (f) => {
      void this.onMove(f);
    });
    this.engine.on('challenge', (nonce, conn) => {
      void this.onInbandChallenge(nonce, conn);
    });
    this.engine.on('prepare', (nonce, conn) => {
      void this.onPrepare(nonce, conn);
    });
    this.engine.on('resumed', (f, conn) => {
      void this.onInbandResumed(f, conn);
    });
    this.holdAlive();
    void this.run();
  }

  private release: (() => void) | undefined;

  /** While connecting or resuming there may be no socket; hold the process open like one would. */
  private holdAlive(): void {
    if (!this.release) this.release = this.clock.keepAlive?.();
  }

  private letGo(): void {
    this.release?.();
    this.release = undefined;
  }

  get state(): SessionState {
    return this._state;
  }
  /** Session id in hex, once open. */
  get id(): string | undefined {
    return this._id ? toHex(this._id) : undefined;
  }
  /** The endpoint the session currently resumes to (changes after a MOVE). */
  get url(): string {
    return this._url;
  }
  get rtt(): { srtt: number; rttvar: number } | undefined {
    return this.engine.rtt;
  }
  /** Unacknowledged outbound bytes. */
  get bufferedAmount(): number {
    return this.engine.bufferedBytes;
  }
  get stats(): ReturnType<SessionEngine['stats']> {
    return this.engine.stats();
  }

  /**
   * Sends a message (bytes, or a string as UTF-8). Returns false when the replay buffer reached its
   * high-water mark: wait for `drain` before sending more. Works while suspended: messages wait
   * and go out on resume.
   */
  send(data: Uint8Array | string, channel = 0): boolean {
    if (this._state === 'connecting') {
      throw new RoamError('INVALID_STATE', 'session is not open yet: await session.ready');
    }
    return this.engine.send(typeof data === 'string' ? utf8.encode(data) : data, channel);
  }

  /** Closes the session for good; queued messages are sent first when a transport is up. */
  close(reason = ''): void {
    if (this._state === 'lost' || this._state === 'closed') return;
    this.connecting?.abort();
    if (this._state === 'connecting') {
      this.finish({ type: 'closed', code: 'NORMAL', reason, byPeer: false });
      return;
    }
    this.engine.close(reason);
  }

  /** Binds future transports to another local address (Node), e.g. after a network change. */
  setLocalAddress(addr: string | undefined): void {
    this.localAddress = addr;
  }

  /**
   * Drops the current transport and resumes at once on a new one — call it when the platform says
   * the network changed (browser `online`, a new default route) instead of waiting for heartbeats.
   */
  reconnectNow(): void {
    if (this._state === 'open') {
      this.resumeImmediately = true;
      this.engine.dropTransport();
      // An in-band re-resume in progress gives up too and falls back to a new transport.
      this.connecting?.abort();
    } else if (this._state === 'suspended') {
      this.attempt = 0;
      this.wake?.();
    }
  }

  private onEngineEvent(ev: SessionEvent): void {
    switch (ev.type) {
      case 'suspended':
        this._state = 'suspended';
        this.holdAlive();
        this.publish(ev);
        void this.resumeLoop();
        return;
      case 'resumed':
        this._state = 'open';
        this.letGo();
        this.publish(ev);
        return;
      case 'lost':
      case 'closed':
        this.finish(ev);
        return;
      default:
        this.publish(ev);
    }
  }

  private publish(ev: SessionEvent): void {
    this.emit('event', ev);
    // The per-type channels carry the same object; the cast is sound because the name is the type.
    (this.emit as (k: string, e: SessionEvent) => void)(ev.type, ev);
  }

  private finish(ev: Extract<SessionEvent, { type: 'lost' | 'closed' }>): void {
    if (this._state === 'lost' || this._state === 'closed') return;
    this._state = ev.type;
    this.letGo();
    this.cancelWait();
    this.dropPrepared();
    this.rejectReady(
      new RoamError(ev.code, ev.type === 'lost' ? `session lost: ${ev.message}` : `session closed: ${ev.reason}`),
    );
    this.publish(ev);
  }

  /** Opens a transport and frames it; undefined (and nothing left open) if the state moved on meanwhile. */
  private async openConnection(expected: SessionState): Promise<FramedConnection | undefined> {
    const ready = await this.takePrepared(this._url);
    const conn = ready ?? this.frame(await this.connector(this._url, { localAddress: this.localAddress }));
    this.connecting = conn;
    if (this._state !== expected) {
      conn.abort();
      return undefined;
    }
    return conn;
  }

  private frame(transport: Transport): FramedConnection {
    return new FramedConnection(transport, { maxFrameBytes: this.maxFrameBytes, maxQueuedBytes: this.maxQueuedBytes });
  }

  /**
   * A MOVE hint: the server will soon move the session to `url`. Open the transport there now (its
   * CHALLENGE waits in the connection's queue) and keep using the current one; the MOVE then
   * resumes on it without connection setup. Unused, it is closed after PREPARED_TTL_MS, well
   * within the server's challenge lifetime.
   */
  private onMoveHint(url: string): void {
    if (this.prepared?.url === url) return;
    this.dropPrepared();
    const entry: Prepared = {
      url,
      conn: Promise.resolve(undefined),
      timer: this.clock.setTimeout(() => {
        if (this.prepared === entry) this.dropPrepared();
      }, PREPARED_TTL_MS),
      dropped: false,
    };
    entry.conn = this.connector(url, { localAddress: this.localAddress }).then(
      (transport) => {
        const conn = this.frame(transport);
        // Taken by a MOVE while it connected (takePrepared awaits this very promise), or dropped.
        if (!entry.dropped) return conn;
        conn.abort();
        return undefined;
      },
      // Unreachable now: the MOVE, if it comes, connects (and falls back) as usual.
      () => undefined,
    );
    this.prepared = entry;
  }

  /** The transport prepared for `url`, if there is one and it is still open. */
  private async takePrepared(url: string): Promise<FramedConnection | undefined> {
    const p = this.prepared;
    if (!p || p.url !== url) return undefined;
    this.prepared = undefined;
    this.clock.clearTimeout(p.timer);
    const conn = await p.conn;
    if (conn?.isOpen) return conn;
    conn?.abort();
    return undefined;
  }

  private dropPrepared(): void {
    const p = this.prepared;
    if (!p) return;
    this.prepared = undefined;
    p.dropped = true;
    this.clock.clearTimeout(p.timer);
    void p.conn.then((c) => c?.abort());
  }

  /** First connection: HELLO, retried with backoff until it succeeds or connectTimeoutMs passes. */
  private async run(): Promise<void> {
    const started = this.clock.now();
    const given = this._url;
    let redirects = 0;
    for (;;) {
      if (this._state !== 'connecting') return;
      let conn: FramedConnection | undefined;
      try {
        conn = await this.openConnection('connecting');
        if (!conn) return;
        const est = await clientHello(
          conn,
          this.clock,
          this.handshakeTimeoutMs,
          this.opts.service,
          this.opts.key,
          this.opts.crypto,
          { prepares: true },
        );
        this.connecting = undefined;
        if (this._state !== 'connecting') {
          conn.close();
          return;
        }
        this._id = est.sessionId;
        this.key = est.key;
        this.sessionTtlMs = est.sessionTtlMs;
        if (this.opts.engine?.heartbeatMs === undefined) this.engine.setHeartbeatMs(est.heartbeatMs);
        this._state = 'open';
        this.attempt = 0;
        this.letGo();
        this.resolveReady();
        this.publish({ type: 'open', sessionId: toHex(est.sessionId) });
        // After `open`, so messages that arrived with WELCOME reach listeners set up on open.
        this.engine.attach(conn, 0);
        return;
      } catch (err) {
        this.connecting = undefined;
        conn?.abort();
        const e = asRoamError(err);
        // The keyed instance runs on another host of the cluster: open the session there.
        if (e.code === 'INSTANCE_ELSEWHERE' && redirects < MAX_REDIRECTS && this.redirect(e)) {
          redirects++;
          continue;
        }
        if (FATAL_ON_HELLO.has(e.code)) {
          this.finish({ type: 'lost', reason: lostReasonFor(e.code), code: e.code, message: e.message });
          return;
        }
        if (this.clock.now() - started > this.connectTimeoutMs) {
          this.finish({
            type: 'lost',
            reason: 'reconnect_exhausted',
            code: 'RECONNECT_EXHAUSTED',
            message: `could not open a session within ${this.connectTimeoutMs} ms: ${e.message}`,
          });
          return;
        }
        this.warn(e);
        // A redirect that led nowhere (its host just died, say): start over where the application
        // pointed us, whose answer is current.
        this._url = given;
        redirects = 0;
        await this.backoff();
      }
    }
  }

  /** After a transport loss: RESUME on new transports until it works, the TTL passes, or the server says the session is gone. */
  private async resumeLoop(): Promise<void> {
    const detachedAt = this.clock.now();
    this.attempt = this.resumeImmediately ? -1 : 0;
    this.resumeImmediately = false;
    let redirects = 0;
    while (this._state === 'suspended') {
      await this.backoff();
      if (this._state !== 'suspended') return;
      if (this.clock.now() - detachedAt > this.sessionTtlMs) {
        this.engine.lose('SESSION_EXPIRED', `no resume within the session's ${this.sessionTtlMs} ms TTL`);
        return;
      }
      let conn: FramedConnection | undefined;
      try {
        conn = await this.openConnection('suspended');
        if (!conn) return;
        const id = this._id as Uint8Array;
        const peerLast = await clientResume(
          conn,
          this.clock,
          this.handshakeTimeoutMs,
          id,
          this.key as SessionKey,
          this.engine.lastReceivedSeq,
          undefined,
          { prepares: true },
        );
        this.connecting = undefined;
        if (this._state !== 'suspended') {
          conn.abort();
          return;
        }
        this.fallbackUrl = undefined;
        this.engine.attach(conn, peerLast);
        return;
      } catch (err) {
        this.connecting = undefined;
        conn?.abort();
        const e = asRoamError(err);
        // A moved session's stub, reached by a stale route after we had gone on elsewhere,
        // names the host that has the session now: resume there at once.
        if (
          e.code === 'INSTANCE_ELSEWHERE' &&
          this._state === 'suspended' &&
          redirects < MAX_REDIRECTS &&
          this.redirect(e)
        ) {
          redirects++;
          this.fallbackUrl = undefined;
          this.attempt = -1;
          continue;
        }
        if (this.fallbackUrl !== undefined && this._state === 'suspended') {
          this.fallBack(e);
          continue;
        }
        if (FATAL_ON_RESUME.has(e.code)) {
          this.engine.lose(e.code, e.message);
          return;
        }
        this.warn(e);
      }
    }
  }

  /**
   * In-band re-resume: a CHALLENGE arrived on the open transport. A gateway moved the session's
   * upstream to another host (after an authenticated MOVE the host sent and the gateway kept)
   * and asks for a RESUME on this same connection. The engine has stopped using the connection
   * for data without closing it; we answer the nonce with the session key, check the server's
   * RESUMED proof exactly as on a new transport (so a gateway cannot fake a host), and re-attach:
   * everything the new host has not received is retransmitted from the replay buffer.
   *
   * The app sees only `resumed` (the state stays `open`; `send` keeps queueing meanwhile). If the
   * re-resume fails the app sees `suspended` and the session resumes on a new transport as after
   * any transport loss — unless the refusal is final (unknown session, bad proof), then `lost`.
   */
  private async onInbandChallenge(nonce: Uint8Array, conn: FramedConnection): Promise<void> {
    const key = this.key;
    const id = this._id;
    // A CHALLENGE of its own: the gateway is not using what this client prepared, if anything.
    this.preparedResume = undefined;
    if (this._state !== 'open' || !key || !id) {
      conn.abort();
      return;
    }
    this.connecting = conn;
    try {
      const peerLast = await clientResume(
        conn,
        this.clock,
        this.handshakeTimeoutMs,
        id,
        key,
        this.engine.lastReceivedSeq,
        nonce,
        { prepares: true },
      );
      if (this.connecting === conn) this.connecting = undefined;
      if (this._state !== 'open' || this.engine.state !== 'detached') {
        conn.abort();
        return;
      }
      this.engine.attach(conn, peerLast);
    } catch (err) {
      if (this.connecting === conn) this.connecting = undefined;
      this.inbandFailed(conn, err);
    }
  }

  /**
   * An in-band re-resume failed: a final refusal loses the session; otherwise (the gateway or the
   * new host gave up on this connection) it resumes on a new transport, at once.
   */
  private inbandFailed(conn: FramedConnection, err: unknown): void {
    conn.abort();
    if (this._state !== 'open' || this.engine.state !== 'detached') return;
    const e = asRoamError(err);
    if (FATAL_ON_RESUME.has(e.code)) {
      this.engine.lose(e.code, e.message);
      return;
    }
    this.warn(e);
    this.resumeImmediately = true;
    this.onEngineEvent({ type: 'suspended', code: e.code, message: e.message });
  }

  private async onMove(f: Extract<Frame, { type: typeof FrameType.MOVE }>): Promise<void> {
    const key = this.key;
    const id = this._id;
    if (!key || !id) return;
    if (!(await verifyMove(key, id, f))) {
      this.warn(new RoamError('MOVE_INVALID', `${codeText('MOVE_INVALID')} (moveId ${f.moveId})`));
      return;
    }
    if (f.hint) {
      // Only a hint of a move still to come; it takes no move id.
      if (f.moveId > this.lastMoveId && this._state === 'open') this.onMoveHint(f.url);
      return;
    }
    if (this.prepared && this.prepared.url !== f.url) this.dropPrepared();
    // A host repeats a MOVE (same id, same endpoint) to a client that came back before the move
    // completed; any other id at or below the last one is a replay.
    const repeat = f.moveId === this.lastMoveId && f.url === this.lastMoveUrl;
    if (f.moveId < this.lastMoveId || (f.moveId === this.lastMoveId && !repeat)) {
      this.warn(new RoamError('MOVE_INVALID', `${codeText('MOVE_INVALID')} (moveId ${f.moveId} reused)`));
      return;
    }
    // Already on the way there: a repeat that crossed the first MOVE changes nothing.
    if (repeat && this._url === f.url) return;
    this.lastMoveId = f.moveId;
    this.lastMoveUrl = f.url;
    this.fallbackUrl = this._url;
    this._url = f.url;
    this.publish({ type: 'moved', url: f.url });
    // The old endpoint has handed the session over; resume at the new one straight away.
    this.resumeImmediately = true;
    this.engine.dropTransport();
  }

  /**
   * A prepared CHALLENGE: the gateway will move the session's upstream soon and wants the RESUME
   * for it now. Answered at once with what this client has received so far; the session carries
   * on meanwhile (the destination replays from whatever it acknowledged by then).
   */
  private async onPrepare(nonce: Uint8Array, conn: FramedConnection): Promise<void> {
    const key = this.key;
    const id = this._id;
    if (this._state !== 'open' || !key || !id) return;
    const clientNonce = await prepareResume(conn, id, key, this.engine.lastReceivedSeq, nonce);
    this.preparedResume = { conn, clientNonce };
  }

  /**
   * The RESUMED for a prepared RESUME, in-band: the gateway moved the session's upstream and the
   * destination took the RESUME. The engine has let go of `conn`; the proof is checked as for any
   * RESUMED before it takes `conn` back, and what the destination has not received is resent.
   */
  private async onInbandResumed(
    f: Extract<Frame, { type: typeof FrameType.RESUMED }>,
    conn: FramedConnection,
  ): Promise<void> {
    const p = this.preparedResume;
    this.preparedResume = undefined;
    const key = this.key;
    const id = this._id;
    try {
      if (!p || p.conn !== conn || !key || !id) {
        throw new RoamError('UNEXPECTED_FRAME', 'RESUMED that answers no RESUME of this client');
      }
      await checkResumed(key, p.clientNonce, id, f);
    } catch (err) {
      this.inbandFailed(conn, err);
      return;
    }
    if (this._state !== 'open' || this.engine.state !== 'detached') {
      conn.abort();
      return;
    }
    this.engine.attach(conn, f.lastSeq);
  }

  private onExported(data: Uint8Array): void {
    const nul = data.indexOf(0);
    if (nul < 0) return;
    try {
      this.emit('exported', utf8dec.decode(data.subarray(0, nul)), unpack(data.subarray(nul + 1)));
    } catch (err) {
      this.warn(new RoamError('MALFORMED_FRAME', 'exported value could not be decoded', { cause: err }));
    }
  }

  /**
   * Resuming after a tentative MOVE failed: try the endpoint the session came from. A definite
   * answer from the new endpoint (migration aborted, no such session) ends the tentative move;
   * an unreachable one keeps both endpoints in play, alternately, until one resumes the session.
   */
  private fallBack(e: RoamError): void {
    const back = this.fallbackUrl as string;
    const definite = e.code === 'MIGRATION_ABORTED' || FATAL_ON_RESUME.has(e.code);
    this.fallbackUrl = definite ? undefined : this._url;
    this._url = back;
    if (definite) this.attempt = -1;
    this.warn(e);
  }

  /** Takes the URL an INSTANCE_ELSEWHERE answer names as the next endpoint, if it may be followed. */
  private redirect(e: RoamError): boolean {
    const to = redirectTarget(this._url, e.message);
    if (to === undefined) return false;
    this._url = to;
    this.publish({ type: 'moved', url: to });
    return true;
  }

  private warn(e: RoamError): void {
    if (this.listenerCount('warning') > 0) this.emit('warning', e);
  }

  /** Waits a full-jitter exponential delay; `reconnectNow` and `close` cut it short. */
  private backoff(): Promise<void> {
    const n = this.attempt++;
    const cap = n < 0 ? 0 : Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** n);
    const delay = Math.floor(this.random() * cap);
    if (delay <= 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.wake = () => {
        this.cancelWait();
        resolve();
      };
      this.wakeTimer = this.clock.setTimeout(() => this.wake?.(), delay);
    });
  }

  private cancelWait(): void {
    if (this.wakeTimer !== undefined) this.clock.clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
    const w = this.wake;
    this.wake = undefined;
    if (w && this._state !== 'suspended' && this._state !== 'connecting') w();
  }
}

function asRoamError(err: unknown): RoamError {
  if (err instanceof RoamError) return err;
  const e = err as Error;
  return new RoamError('TRANSPORT_CLOSED', e?.message ?? String(err), { cause: err });
}
