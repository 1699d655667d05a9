import {
  type Clock,
  Emitter,
  type EngineOptions,
  equalBytes,
  FramedConnection,
  type IssuedChallenge,
  moveMac,
  type Opening,
  type SessionCrypto,
  SessionEngine,
  type SessionEvent,
  type SessionKey,
  serverOpen,
  serverOpenIssued,
  serverResumed,
  serverWelcome,
  systemClock,
  type TimerHandle,
  type Transport,
  type TransportSnapshot,
  toHex,
  verifyResume,
} from '../session/index.js';
import { nodeSessionCrypto } from '../transport/crypto-node.js';
import { type Listener, type ListenOptions, listenTransport } from '../transport/index.js';
import { type CodeName, DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameType, RoamError } from '../wire/index.js';
import { createLogger, type Logger } from './logger.js';

/**
 * A service as the minimal server knows it: called once per new session. The full service API
 * (instances, state stores, timers, continuations) lives in roam/service.
 */
export interface SessionHandler {
  open(session: ServerSession): void;
  /**
   * Runs before WELCOME, so a HELLO can still be refused or sent elsewhere without a session
   * ever existing: throw a RoamError (e.g. `INSTANCE_ELSEWHERE`) and the client gets it as an
   * ERROR frame.
   */
  admit?(hello: { service: string; key: string | undefined }): Promise<void>;
}

export interface SessionServerOptions {
  services: Record<string, SessionHandler>;
  /** How long a detached session waits for its client to resume. Default 5 min. */
  sessionTtlMs?: number;
  /** Time allowed for a new transport to finish its handshake. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** A RESUME must answer a challenge younger than this. Default 10 s. */
  challengeTtlMs?: number;
  /** Refuse new sessions above this many. Default 100,000. */
  maxSessions?: number;
  /** How long the reason of an ended session is remembered, so a late resume learns why. Default 1 h. */
  tombstoneTtlMs?: number;
  /** At most this many tombstones are kept (oldest dropped first). Default 100,000. */
  maxTombstones?: number;
  engine?: EngineOptions;
  clock?: Clock;
  logger?: Logger;
  /** Key agreement and MAC implementation. Default: node:crypto. */
  crypto?: SessionCrypto;
  /**
   * Brings back a session that is not in memory (suspended to a Store). Must call `verify` with
   * the session's key before restoring anything, and return the restored session (already adopted).
   * Returning undefined means unknown.
   */
  restore?: (sessionId: string, verify: (key: SessionKey) => Promise<void>) => Promise<ServerSession | undefined>;
  /**
   * True while a migration is bringing the session here from another host. A RESUME for it then
   * goes to `restore` (which waits for that migration's verdict) even if this server still holds
   * an older copy: the stub left when the session moved away earlier, which is behind the client.
   */
  arriving?: (sessionId: string) => boolean;
  /**
   * The client URL a moved session's stub points its client at, if `sessionId` is such a stub. A
   * RESUME that claims more than the stub ever sent (its client already resumed there and went on,
   * then reached this server again through a stale route) is answered `INSTANCE_ELSEWHERE` with
   * that URL, which clients and gateways follow, instead of being refused as `RESUME_SEQ_INVALID`.
   */
  movedTo?: (sessionId: string) => string | undefined;
  /**
   * When set, a detached session is handed to `onGrace` after `detachedGraceMs` (to be suspended
   * to a Store) instead of being lost at `sessionTtlMs`.
   */
  detachedGraceMs?: number;
  onGrace?: (session: ServerSession) => void;
}

/** How {@link SessionServer.accept} treats a transport. */
export interface AcceptOptions {
  /** The CHALLENGE a gateway already sent on this transport; see {@link SessionServer.accept}. */
  challenge?: { nonce: Uint8Array; issuedAt?: number };
}

const utf8 = new TextEncoder();

type ServerSessionEvents = {
  message: [data: Uint8Array, channel: number];
  event: [SessionEvent];
  drain: [];
};

/**
 * The MOVE id taken for `url`; once sent, its frame (MAC included) for repeats, and the transport
 * generation it was last written on.
 */
interface PreparedMove {
  id: number;
  url: string;
  sent?: { token: Uint8Array; frame: Promise<Uint8Array>; generation: number };
}

/** The server's side of one client session. */
export class ServerSession extends Emitter<ServerSessionEvents> {
  readonly id: string;
  /** Last MOVE id sent. Travels with the session (migration) since the client refuses a reused id. */
  moveId = 0;
  private prepared: PreparedMove | undefined;

  constructor(
    readonly sessionId: Uint8Array,
    readonly service: string,
    readonly key: string | undefined,
    readonly engine: SessionEngine,
    private readonly sessionKey: SessionKey,
  ) {
    super();
    this.id = toHex(sessionId);
    engine.on('message', (d, c) => this.emit('message', d, c));
    engine.on('event', (e) => this.emit('event', e));
    engine.on('drain', () => this.emit('drain'));
  }

  get state(): SessionEngine['state'] {
    return this.engine.state;
  }
  get remoteAddress(): string | undefined {
    return this.engine.remoteAddress;
  }
  /** See SessionEngine.send: false means wait for `drain`. */
  send(data: Uint8Array | string, channel = 0): boolean {
    return this.engine.send(typeof data === 'string' ? utf8.encode(data) : data, channel);
  }
  close(reason = ''): void {
    this.engine.close(reason);
  }
  /**
   * Tells the client, with a MOVE authenticated by the session key, to resume at `url`. Returns
   * false when no transport is attached (the client will learn on its next resume attempt).
   */
  async move(url: string, token: Uint8Array = new Uint8Array(0)): Promise<boolean> {
    // Repeating the prepared MOVE keeps its id: the client takes a repeat, not a second move.
    const p = this.prepared?.url === url ? this.prepared : this.prepare(url);
    let sent = p.sent && equalBytes(p.sent.token, token) ? p.sent : undefined;
    // The transport attached now already carries this MOVE: a repeat would cost both ends a MAC
    // and the client nothing it does not know.
    if (sent?.generation === this.engine.transportGeneration && this.engine.state === 'attached') return true;
    if (!sent) {
      const moveId = p.id;
      const frame = moveMac(this.sessionKey, this.sessionId, moveId, url, token).then((mac) =>
        encodeFrame({ type: FrameType.MOVE, moveId, url, token, mac }),
      );
      sent = { token, frame, generation: -1 };
      p.sent = sent;
    }
    if (!this.engine.writeControl(await sent.frame)) return false;
    sent.generation = this.engine.transportGeneration;
    return true;
  }
  /**
   * Announces a MOVE to `url` (a MOVE frame with the hint flag): the client may open its transport
   * there ahead of time while it keeps this one, so that the MOVE itself costs it no connection
   * setup. Changes nothing here; returns false when no transport is attached.
   */
  async hintMove(url: string): Promise<boolean> {
    const moveId = this.moveId + 1;
    const token = new Uint8Array(0);
    const mac = await moveMac(this.sessionKey, this.sessionId, moveId, url, token, true);
    return this.engine.writeControl(encodeFrame({ type: FrameType.MOVE, moveId, url, token, mac, hint: true }));
  }
  /**
   * Takes the next MOVE id for `url` without sending anything: a migration hands the id to the
   * destination (which continues after it) before it knows whether it will have to send it.
   */
  prepareMove(url: string): number {
    return this.prepare(url).id;
  }
  private prepare(url: string): PreparedMove {
    this.prepared = { id: ++this.moveId, url };
    return this.prepared;
  }
  /** @internal */
  get keyForResume(): SessionKey {
    return this.sessionKey;
  }
}

interface Tombstone {
  code: CodeName;
  message: string;
  at: number;
}

/**
 * Accepts transports, runs the HELLO/RESUME handshakes and keeps the table of live sessions.
 * Bad input on one transport closes that transport with an ERROR frame; other sessions, and the
 * session a forged RESUME names, are untouched.
 */
export class SessionServer {
  private readonly sessions = new Map<string, ServerSession>();
  private readonly expiry = new Map<string, TimerHandle>();
  private readonly tombstones = new Map<string, Tombstone>();
  private readonly listeners: Listener[] = [];
  private readonly pending = new Set<FramedConnection>();
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly sessionTtlMs: number;
  private readonly handshakeTimeoutMs: number;
  private readonly challengeTtlMs: number;
  private readonly maxSessions: number;
  private readonly tombstoneTtlMs: number;
  private readonly maxTombstones: number;
  private closing = false;
  /** Counters for tests, metrics and `roam` tooling. */
  readonly counters = { accepted: 0, hellos: 0, resumes: 0, refused: new Map<CodeName, number>() };

  constructor(private readonly opts: SessionServerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? createLogger('roam-server');
    this.sessionTtlMs = opts.sessionTtlMs ?? 5 * 60_000;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 10_000;
    this.challengeTtlMs = opts.challengeTtlMs ?? 10_000;
    this.maxSessions = opts.maxSessions ?? 100_000;
    this.tombstoneTtlMs = opts.tombstoneTtlMs ?? 60 * 60_000;
    this.maxTombstones = opts.maxTombstones ?? 100_000;
  }

  /** Listens on a ws://, wss://, tcp:// or tls:// URL; port 0 picks a free one. */
  async listen(url: string, opts?: ListenOptions): Promise<Listener> {
    const l = await listenTransport(url, (t) => this.accept(t), opts);
    this.listeners.push(l);
    return l;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }
  getSession(id: string): ServerSession | undefined {
    return this.sessions.get(id);
  }
  allSessions(): IterableIterator<ServerSession> {
    return this.sessions.values();
  }

  /**
   * Takes a new transport through the handshake. Never throws.
   *
   * With `opts.challenge` the transport's CHALLENGE was already sent by a gateway (an
   * authenticated cluster member that guarantees the nonce is fresh and used once): the server
   * sends no CHALLENGE of its own and checks a RESUME against that nonce. `issuedAt` defaults to
   * the server's clock at the call. Without it, the server issues its own CHALLENGE as always.
   */
  accept(transport: Transport, opts: AcceptOptions = {}): void {
    if (this.closing) {
      transport.close();
      return;
    }
    this.counters.accepted++;
    const conn = new FramedConnection(transport, {
      maxFrameBytes: this.opts.engine?.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
    });
    this.pending.add(conn);
    const issued = opts.challenge
      ? { nonce: opts.challenge.nonce, issuedAt: opts.challenge.issuedAt ?? this.clock.now() }
      : undefined;
    this.handshake(conn, issued)
      .catch((err: unknown) => {
        const e =
          err instanceof RoamError ? err : new RoamError('INTERNAL', 'handshake failed', { cause: err as Error });
        this.counters.refused.set(e.code, (this.counters.refused.get(e.code) ?? 0) + 1);
        this.log.info({ code: e.code, remote: transport.remoteAddress, err: e.message }, 'handshake refused');
        conn.close(e.code, e.message, true);
      })
      .finally(() => this.pending.delete(conn));
  }

  private async handshake(conn: FramedConnection, issued: IssuedChallenge | undefined): Promise<void> {
    const opening = issued
      ? await serverOpenIssued(conn, this.clock, this.handshakeTimeoutMs, issued)
      : await serverOpen(conn, this.clock, this.handshakeTimeoutMs);
    if (opening.kind === 'hello') await this.onHello(conn, opening.hello);
    else await this.onResume(conn, opening);
  }

  private async onHello(conn: FramedConnection, hello: Extract<Opening, { kind: 'hello' }>['hello']): Promise<void> {
    // Own properties only: a client naming `constructor` or `__proto__` must not reach Object.prototype.
    const handler = Object.hasOwn(this.opts.services, hello.service) ? this.opts.services[hello.service] : undefined;
    if (!handler) {
      throw new RoamError('UNKNOWN_SERVICE', `no service named ${JSON.stringify(hello.service)} here`);
    }
    if (this.sessions.size >= this.maxSessions) {
      throw new RoamError('OVERLOADED', `session limit of ${this.maxSessions} reached`);
    }
    if (handler.admit) await handler.admit({ service: hello.service, key: hello.key });
    const engineOpts = this.opts.engine ?? {};
    const { sessionId, key } = await serverWelcome(
      conn,
      hello,
      { heartbeatMs: engineOpts.heartbeatMs ?? 1000, sessionTtlMs: this.sessionTtlMs },
      this.opts.crypto ?? nodeSessionCrypto,
    );
    this.counters.hellos++;
    const engine = new SessionEngine(this.engineOptions());
    const session = new ServerSession(sessionId, hello.service, hello.key, engine, key);
    this.sessions.set(session.id, session);
    engine.on('event', (ev) => this.onSessionEvent(session, ev));
    // open() first: it registers the service's listeners before queued frames are delivered.
    try {
      handler.open(session);
    } catch (err) {
      this.log.error({ session: session.id, err: (err as Error).message }, 'service open() threw');
      engine.lose('INTERNAL', 'service failed to open the session');
      conn.close('INTERNAL', 'service failed to open the session', true);
      return;
    }
    engine.attach(conn, 0);
    this.log.debug({ session: session.id, service: hello.service, remote: session.remoteAddress }, 'session open');
  }

  private async onResume(conn: FramedConnection, opening: Extract<Opening, { kind: 'resume' }>): Promise<void> {
    const id = toHex(opening.resume.sessionId);
    let session = this.opts.arriving?.(id) ? undefined : this.sessions.get(id);
    if (session) {
      await verifyResume(opening, session.keyForResume, this.clock.now(), this.challengeTtlMs);
    } else {
      const t = this.tombstones.get(id);
      if (t) throw new RoamError(t.code, t.message);
      session = await this.opts.restore?.(id, (key) =>
        verifyResume(opening, key, this.clock.now(), this.challengeTtlMs),
      );
      if (!session) throw new RoamError('UNKNOWN_SESSION', 'no such session on this server');
    }
    // The proof verified: this is the key holder. Everything below may touch the session.
    if (session.state === 'lost' || session.state === 'closed') {
      throw new RoamError('UNKNOWN_SESSION', 'session ended during the handshake');
    }
    // A prepared RESUME was made ahead of a move (docs/protocol.md): the client has received and
    // acknowledged more since. It holds everything up to what it acknowledged, so replay starts
    // there. Any other claim below that is refused: it would hide frames the client lost.
    const claim = opening.resume.prepared
      ? Math.max(opening.resume.lastSeq, session.engine.peerAckedSeq)
      : opening.resume.lastSeq;
    try {
      session.engine.checkResumeClaim(claim);
    } catch (err) {
      const moved = (err as RoamError).code === 'RESUME_SEQ_INVALID' ? this.opts.movedTo?.(id) : undefined;
      if (moved !== undefined) throw new RoamError('INSTANCE_ELSEWHERE', moved);
      throw err;
    }
    const ourLast = session.engine.lastReceivedSeq;
    await serverResumed(conn, session.keyForResume, opening.resume, ourLast);
    this.counters.resumes++;
    session.engine.attach(conn, claim);
    this.clearExpiry(id);
  }

  /**
   * The engine of a session that continues here from a snapshot (a migration or a suspension),
   * with the same options as a session opened here.
   */
  restoreEngine(snapshot: TransportSnapshot): SessionEngine {
    return SessionEngine.restore(snapshot, this.engineOptions());
  }

  /** Server-side engines follow the client's heartbeat unless the options say otherwise. */
  private engineOptions(): EngineOptions {
    return { heartbeat: 'follow', ...this.opts.engine, clock: this.clock };
  }

  /** Registers a session built outside a handshake (restored from a continuation). It starts detached. */
  adopt(session: ServerSession): void {
    this.sessions.set(session.id, session);
    this.tombstones.delete(session.id);
    session.engine.on('event', (ev) => this.onSessionEvent(session, ev));
    if (session.state === 'detached') this.startDetachedTimer(session);
  }

  /** Drops a session from memory without ending it (it was suspended to a continuation). */
  forget(id: string): void {
    const s = this.sessions.get(id);
    if (!s) return;
    this.clearExpiry(id);
    this.sessions.delete(id);
    s.engine.retire();
  }

  private startDetachedTimer(session: ServerSession): void {
    this.clearExpiry(session.id);
    const onGrace = this.opts.onGrace;
    const ms = onGrace ? (this.opts.detachedGraceMs ?? 30_000) : this.sessionTtlMs;
    const timer = this.clock.setTimeout(() => {
      this.expiry.delete(session.id);
      if (session.state !== 'detached') return;
      if (onGrace) onGrace(session);
      else session.engine.lose('SESSION_EXPIRED', `not resumed within ${this.sessionTtlMs} ms`);
    }, ms);
    this.expiry.set(session.id, timer);
  }

  private onSessionEvent(session: ServerSession, ev: SessionEvent): void {
    switch (ev.type) {
      case 'suspended':
        this.startDetachedTimer(session);
        return;
      case 'lost':
      case 'closed':
        this.clearExpiry(session.id);
        if (this.sessions.get(session.id) !== session) return;
        this.sessions.delete(session.id);
        this.remember(
          session.id,
          ev.type === 'lost' ? ev.code : 'UNKNOWN_SESSION',
          ev.type === 'lost' ? ev.message : 'session was closed',
        );
        return;
      default:
    }
  }

  private clearExpiry(id: string): void {
    const t = this.expiry.get(id);
    if (t !== undefined) this.clock.clearTimeout(t);
    this.expiry.delete(id);
  }

  private remember(id: string, code: CodeName, message: string): void {
    const now = this.clock.now();
    this.tombstones.set(id, { code, message, at: now });
    // Map iteration order is insertion order: the oldest tombstones come first.
    for (const [k, t] of this.tombstones) {
      if (this.tombstones.size <= this.maxTombstones && now - t.at <= this.tombstoneTtlMs) break;
      this.tombstones.delete(k);
    }
  }

  /** Closes every listener and session (clients get CLOSE GOING_AWAY). */
  async close(): Promise<void> {
    this.closing = true;
    for (const s of [...this.sessions.values()]) s.engine.close('server shutting down', 'GOING_AWAY');
    for (const c of this.pending) c.abort();
    for (const t of this.expiry.values()) this.clock.clearTimeout(t);
    this.expiry.clear();
    await Promise.all(this.listeners.map((l) => l.close()));
    this.listeners.length = 0;
  }
}
