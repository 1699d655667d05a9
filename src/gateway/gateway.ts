import { WebSocket } from 'ws';
import {
  type Clock,
  equalBytes,
  FramedConnection,
  newNonce,
  SESSION_FATAL_CODES,
  systemClock,
  type TimerHandle,
  type Transport,
  toHex,
} from '../session/index.js';
import { keyedInstanceId, signRequest } from '../transport/cluster.js';
import { type Listener, type ListenOptions, listenTransport, WsTransport } from '../transport/index.js';
import { openPeerLink } from '../transport/peer.js';
import {
  type CodeName,
  DEFAULT_MAX_FRAME_BYTES,
  encodeFrame,
  type Frame,
  FrameType,
  ProtocolError,
  RoamError,
} from '../wire/index.js';
import { type GatewayHost, type GatewayLogger, HostTable, type RoutedHost, type SessionRoute } from './hosts.js';

/** Path of the splice link on a host's peer endpoint (the host mounts `spliceLink` there). */
export const SPLICE_PATH = '/peer/splice';

export interface GatewayOptions {
  /** Client endpoints: ws://, wss://, tcp://, tls:// (port 0 picks a free one). */
  listen: string[];
  /** The cluster secret: signs splice links and directory requests. */
  secret: Uint8Array;
  /** The directory's base URL: host table, instance and session lookups. */
  directory?: string;
  /** A static host table (tests, small setups); with a directory, added to its hosts. */
  hosts?: GatewayHost[];
  logger?: GatewayLogger;
  clock?: Clock;
  /** TLS key and certificate for wss:// and tls:// endpoints. */
  listenOptions?: ListenOptions;
  /** Client transports served at once; more are refused with OVERLOADED. Default 10,000. */
  maxClients?: number;
  /** A client's first frame, and its RESUME during a re-splice, must come within this. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Largest frame accepted from clients and hosts. Default 1 MiB. */
  maxFrameBytes?: number;
  /**
   * Bytes waiting to be written to one side (client or host) beyond which the splice is dropped:
   * a slow reader must not make the gateway buffer without bound. Its session survives (the host
   * keeps it; the client resumes). Default 16 MiB, above the default 4 MiB replay window.
   */
  maxBufferedBytes?: number;
  /** Opening a splice link to a host gives up after this long. Default 5 s. */
  linkTimeoutMs?: number;
  /**
   * Splice links kept open and idle per host, so that a new client or a moved session is spliced
   * without waiting for a connection, an upgrade and a membership proof (7–23 ms measured under
   * load). 0 opens every link on demand. Default 2.
   */
  splicePool?: number;
  /** Directory host table refresh period. Default 3 s. */
  refreshMs?: number;
  /**
   * On-demand loads of the directory's host table (a MOVE or a session lookup naming a host the
   * gateway does not know) start at most this often; a lookup waits for the next one. Default 500 ms.
   */
  minRefreshGapMs?: number;
}

/** Running totals, for tests and metrics. */
export interface GatewayCounters {
  /** Client transports accepted. */
  clients: number;
  /** Client transports spliced to a host (first frame forwarded). */
  splices: number;
  /** Spliced transports moved to another host after a MOVE, without the client reconnecting. */
  resplices: number;
  /** Client transports the gateway refused or cut with an ERROR of its own. */
  refused: number;
  /** Splice links taken from the pool of open ones instead of opened on demand. */
  pooled: number;
  /** Keyed HELLOs and stale RESUMEs a host sent on elsewhere (INSTANCE_ELSEWHERE), followed here. */
  redirected: number;
  /**
   * Re-splices that sent the destination a RESUME the client prepared at the MOVE hint, so the
   * client's round trip was not part of its gap (docs/gateway.md).
   */
  prepared: number;
}

interface Ctx {
  readonly table: HostTable;
  readonly clock: Clock;
  readonly log: GatewayLogger;
  readonly handshakeTimeoutMs: number;
  readonly maxBufferedBytes: number;
  readonly hasDirectory: boolean;
  readonly counters: GatewayCounters;
  openLink(host: RoutedHost, nonce: Uint8Array, remote: string | undefined): Promise<FramedConnection>;
  done(s: ClientSplice): void;
}

const noop = (): void => {};
const silent: GatewayLogger = { debug: noop, info: noop, warn: noop, error: noop };

/**
 * The gateway: a stable client endpoint that splices each client transport to the host holding
 * its session, and re-splices on a migration without the client reconnecting.
 *
 * Per client: send CHALLENGE(N) at once; read the first frame; HELLO → least-loaded host
 * offering the service (or the host of its keyed instance), RESUME → the session's host; open an
 * authenticated peer link to `SPLICE_PATH?nonce=N&remote=…` on that host and relay frames both
 * ways. A MOVE from the host is kept (never shown to the client): the gateway links to the
 * destination with a fresh nonce N2, sends CHALLENGE(N2) in-band, forwards the client's RESUME
 * there and relays from then on. See docs/gateway.md.
 */
export class Gateway {
  readonly counters: GatewayCounters = {
    clients: 0,
    splices: 0,
    resplices: 0,
    refused: 0,
    pooled: 0,
    redirected: 0,
    prepared: 0,
  };
  private readonly listeners: Listener[] = [];
  private readonly splices = new Set<ClientSplice>();
  private readonly ctx: Ctx;
  private readonly maxClients: number;
  private readonly maxFrameBytes: number;
  private readonly linkTimeoutMs: number;
  private readonly pool: LinkPool;
  private closing = false;

  private constructor(
    private readonly opts: GatewayOptions,
    private readonly table: HostTable,
  ) {
    this.maxClients = opts.maxClients ?? 10_000;
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.linkTimeoutMs = opts.linkTimeoutMs ?? 5000;
    this.pool = new LinkPool(
      opts.splicePool ?? 2,
      (host) =>
        openPeerLink(
          host.peerUrl,
          `${SPLICE_PATH}?pooled=1`,
          opts.secret,
          (m, p) => signRequest(opts.secret, m, p),
          this.linkTimeoutMs,
        ),
      opts.logger ?? silent,
    );
    this.ctx = {
      table,
      clock: opts.clock ?? systemClock,
      log: opts.logger ?? silent,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 10_000,
      maxBufferedBytes: opts.maxBufferedBytes ?? 16 * 1024 * 1024,
      hasDirectory: opts.directory !== undefined,
      counters: this.counters,
      openLink: (host, nonce, remote) => this.openLink(host, nonce, remote),
      done: (s) => this.splices.delete(s),
    };
  }

  /** Loads the host table and listens on every `listen` URL. */
  static async start(opts: GatewayOptions): Promise<Gateway> {
    if (opts.listen.length === 0) throw new RoamError('INVALID_ARGUMENT', 'a gateway needs at least one --listen URL');
    if (opts.secret.length < 16)
      throw new RoamError('INVALID_ARGUMENT', 'the cluster secret must be at least 16 bytes');
    const table = new HostTable({
      hosts: opts.hosts,
      directory: opts.directory,
      secret: opts.secret,
      clock: opts.clock ?? systemClock,
      log: opts.logger ?? silent,
      refreshMs: opts.refreshMs,
      minRefreshGapMs: opts.minRefreshGapMs,
    });
    const gw = new Gateway(opts, table);
    try {
      await table.start();
      for (const url of opts.listen) {
        gw.listeners.push(await listenTransport(url, (t) => gw.onClient(t), opts.listenOptions));
      }
      void gw.warm();
    } catch (err) {
      await gw.close();
      throw err;
    }
    return gw;
  }

  /** The client URLs, with the real ports. */
  get urls(): string[] {
    return this.listeners.map((l) => l.url);
  }

  /**
   * Opens the idle splice links of every known host now (the pool otherwise fills as clients
   * arrive); resolves when every pool is full or could not be filled. `start` begins this.
   */
  async warm(): Promise<void> {
    await Promise.all(this.table.all().map((h) => this.pool.fill(h)));
  }

  /** Client transports currently served. */
  get activeClients(): number {
    return this.splices.size;
  }

  /** Hosts the gateway currently routes to. */
  hosts(): GatewayHost[] {
    return this.table.all().map((h) => ({
      id: h.id,
      clientUrl: h.clientUrl,
      peerUrl: h.peerUrl,
      ...(h.services ? { services: h.services } : {}),
    }));
  }

  /**
   * Stops listening and hangs up every client and host link without a CLOSE: sessions live on
   * at their hosts, and clients resume (through this gateway once it is back, or another).
   */
  async close(): Promise<void> {
    this.closing = true;
    this.pool.close();
    this.table.close();
    for (const s of [...this.splices]) s.end('gateway shutting down');
    await Promise.all(this.listeners.map((l) => l.close()));
    this.listeners.length = 0;
  }

  private onClient(t: Transport): void {
    if (this.closing) {
      t.close();
      return;
    }
    this.counters.clients++;
    const conn = new FramedConnection(t, { maxFrameBytes: this.maxFrameBytes });
    if (this.splices.size >= this.maxClients) {
      this.counters.refused++;
      this.ctx.log.warn({ remote: t.remoteAddress, max: this.maxClients }, 'gateway: client refused, at capacity');
      conn.close('OVERLOADED', `gateway serves at most ${this.maxClients} clients`, true);
      return;
    }
    const s = new ClientSplice(this.ctx, conn);
    this.splices.add(s);
    void s.start();
  }

  private async openLink(host: RoutedHost, nonce: Uint8Array, remote: string | undefined): Promise<FramedConnection> {
    const pooled = this.closing ? undefined : this.pool.take(host);
    if (pooled) {
      this.counters.pooled++;
      // Names the client this link now carries (host side: spliceLink's pooled links).
      pooled.send(Buffer.concat([nonce, Buffer.from(remote ?? '', 'utf8')]));
      return new FramedConnection(new WsTransport(pooled, `host ${host.id}`), { maxFrameBytes: this.maxFrameBytes });
    }
    const secret = this.opts.secret;
    const q = new URLSearchParams({ nonce: Buffer.from(nonce).toString('base64url'), remote: remote ?? '' });
    const ws = await openPeerLink(
      host.peerUrl,
      `${SPLICE_PATH}?${q}`,
      secret,
      (m, p) => signRequest(secret, m, p),
      this.linkTimeoutMs,
    );
    const conn = new FramedConnection(new WsTransport(ws, `host ${host.id}`), { maxFrameBytes: this.maxFrameBytes });
    if (this.closing) {
      conn.abort();
      throw new RoamError('GOING_AWAY', 'gateway shutting down');
    }
    return conn;
  }
}

/** A re-splice in progress: the old host sent MOVE; waiting for the new link and the client's RESUME. */
interface Switch {
  nonce: Uint8Array;
  startedAt: number;
  timer: TimerHandle | undefined;
  dest: RoutedHost | undefined;
  link: FramedConnection | undefined;
  /** The client's RESUME, encoded, until the link is up. */
  resume: Uint8Array | undefined;
  dropped: number;
  droppedBytes: number;
  /** The host that sent the MOVE. */
  from: RoutedHost | undefined;
}

/** One client transport and the host link(s) it is spliced to. */
class ClientSplice {
  private phase: 'opening' | 'spliced' | 'switching' | 'ended' = 'opening';
  private up: FramedConnection | undefined;
  /** The host `up` belongs to (counted in the table's live splices). */
  private host: RoutedHost | undefined;
  private sid: string | undefined;
  private instance: string | undefined;
  /** The host answered the client's handshake (WELCOME or RESUMED passed through). */
  private established = false;
  private routedFromCache = false;
  private sw: Switch | undefined;
  /**
   * After a re-splice, until the new host has resumed the session: the host that sent the MOVE,
   * with the client's RESUME (which answers our nonce, so either host accepts it).
   */
  private back: { host: RoutedHost; nonce: Uint8Array; resume: Uint8Array } | undefined;
  /** The client's first frame and the CHALLENGE it answered, kept to replay a redirected HELLO. */
  private opening: { first: Frame; nonce: Uint8Array } | undefined;
  /** The client answers prepared CHALLENGEs (its HELLO or RESUME said so). */
  private prepares = false;
  /**
   * After a MOVE hint: the prepared CHALLENGE sent to the client, and its RESUME once it came,
   * held for the MOVE to that URL.
   */
  private prep: { url: string; nonce: Uint8Array; resume: Uint8Array | undefined } | undefined;
  /**
   * After a re-splice, which of the client's frames the new host may get: `null` until its
   * RESUMED passed (none of DATA, ACK, PING, PONG), then the seq the client's DATA must resume
   * from. A client that prepared its RESUME was never parked: it goes on sending while the switch
   * happens, and those frames may reach the gateway after the RESUMED. The new host expects
   * exactly the seq after the one its RESUMED named; the client resends everything from there, so
   * a DATA above it is dropped until that seq comes (the ones below are duplicates the host drops).
   */
  private clientNext: number | null | undefined;
  private redirects = 0;

  constructor(
    private readonly ctx: Ctx,
    private readonly client: FramedConnection,
  ) {}

  /** A getter, so checks after an `await` are not narrowed away by the compiler. */
  private get ended(): boolean {
    return this.phase === 'ended';
  }

  private get remote(): string | undefined {
    return this.client.transport.remoteAddress;
  }

  async start(): Promise<void> {
    const { ctx, client } = this;
    const nonce = newNonce();
    client.writeFrame({ type: FrameType.CHALLENGE, nonce });
    let first: Frame;
    let host: RoutedHost;
    try {
      first = await client.nextFrame(ctx.handshakeTimeoutMs, ctx.clock);
      this.opening = { first, nonce };
      this.prepares = (first.type === FrameType.HELLO || first.type === FrameType.RESUME) && first.prepares === true;
      if (this.ended) return;
      host = await this.route(first, nonce);
    } catch (err) {
      // A client that left before saying anything was not refused; it just left.
      if (!client.isOpen && !(err instanceof ProtocolError)) this.end('client left before its first frame');
      else this.refuse(err);
      return;
    }
    if (this.ended || !client.isOpen) {
      this.end('client left during routing');
      return;
    }
    if (!(await this.upstreamTo(host, nonce, first))) return;
    this.phase = 'spliced';
    ctx.counters.splices++;
    client.setHandler({
      frame: (f) => this.fromClient(f),
      closed: (err) => {
        if (err instanceof ProtocolError) ctx.counters.refused++;
        this.end(err ? `client: ${err.message}` : 'client closed');
      },
    });
    ctx.log.debug({ session: this.sid, host: host.id, remote: this.remote }, 'gateway: spliced');
  }

  /**
   * Opens the link to `host` and sends it the client's first frame. Undefined when the link could
   * not be opened (the client is refused with UNAVAILABLE and retries) or the client left.
   */
  private async upstreamTo(host: RoutedHost, nonce: Uint8Array, first: Frame): Promise<FramedConnection | undefined> {
    const { ctx } = this;
    this.setHost(host);
    let up: FramedConnection;
    try {
      up = await ctx.openLink(host, nonce, this.remote);
    } catch (err) {
      if (this.ended) return undefined;
      const e = asRoamError(err);
      ctx.log.warn({ host: host.id, code: e.code, err: e.message }, 'gateway: splice link failed');
      // The cached host may be dead and the session committed elsewhere: ask the directory next time.
      if (this.sid) ctx.table.forgetSession(this.sid);
      this.refuse(new RoamError('UNAVAILABLE', `host ${host.id} could not be reached; retry`));
      return undefined;
    }
    if (this.ended || !this.client.isOpen) {
      up.abort();
      this.end('client left while the link opened');
      return undefined;
    }
    this.up = up;
    up.setHandler(this.upstreamHandler(up));
    up.writeFrame(first);
    return up;
  }

  /** Picks the host for the first frame; throws the RoamError the client is refused with. */
  private async route(first: Frame, nonce: Uint8Array): Promise<RoutedHost> {
    const { table } = this.ctx;
    if (first.type === FrameType.HELLO) {
      if (first.key !== undefined) this.instance = keyedInstanceId(first.key);
      const h = await table.pickForHello(first.service, first.key);
      if (h) return h;
      if (!table.anyOffers(first.service)) {
        throw new RoamError('UNKNOWN_SERVICE', `no host offers ${JSON.stringify(first.service)}`);
      }
      throw new RoamError('UNAVAILABLE', `no host offering ${JSON.stringify(first.service)} is up; retry`);
    }
    if (first.type === FrameType.RESUME) {
      if (!equalBytes(first.nonce, nonce)) {
        throw new RoamError('RESUME_REPLAYED', 'resume proof answers a challenge not issued on this transport');
      }
      this.sid = toHex(first.sessionId);
      let r: SessionRoute | undefined;
      try {
        r = await table.sessionHost(this.sid);
      } catch (err) {
        throw new RoamError('UNAVAILABLE', `session lookup failed: ${asRoamError(err).message}; retry`);
      }
      if (!r) throw new RoamError('UNKNOWN_SESSION', 'no such session in the cluster');
      this.routedFromCache = r.fromCache;
      return r.host;
    }
    throw new ProtocolError('UNEXPECTED_FRAME', `expected HELLO or RESUME, got frame type ${first.type}`);
  }

  private upstreamHandler(up: FramedConnection): Parameters<FramedConnection['setHandler']>[0] {
    return {
      frame: (f) => {
        if (this.up === up) this.fromUpstream(f);
      },
      closed: (err) => {
        if (this.up !== up) return;
        this.end(err ? `host link: ${err.message}` : 'host closed the link');
      },
    };
  }

  private fromUpstream(f: Frame): void {
    const { table } = this.ctx;
    switch (f.type) {
      case FrameType.WELCOME:
        this.sid = toHex(f.sessionId);
        this.established = true;
        if (this.host) {
          table.rememberSession(this.sid, this.host.id);
          if (this.instance) table.rememberInstance(this.instance, this.host.id);
        }
        break;
      case FrameType.RESUMED:
        this.established = true;
        this.back = undefined;
        if (this.clientNext === null) this.clientNext = f.lastSeq + 1;
        break;
      case FrameType.MOVE:
        // Never forwarded: the gateway follows the move itself. Its links to hosts are already
        // open (the splice pool); at a hint it gets the client's RESUME ready.
        if (f.hint) this.onHint(f.url);
        else this.onMove(f.url);
        return;
      case FrameType.CLOSE:
        if (this.sid) table.forgetSession(this.sid);
        break;
      case FrameType.ERROR:
        if (
          !this.established &&
          f.code === 'UNKNOWN_SESSION' &&
          this.routedFromCache &&
          this.ctx.hasDirectory &&
          this.sid
        ) {
          // Our cache was stale (the session moved while its client was away and we saw no
          // MOVE). Forget it and let the client retry: the next RESUME asks the directory.
          table.forgetSession(this.sid);
          this.fail('TRANSPORT_CLOSED', 'session not on the cached host; reconnect');
          return;
        }
        if (!this.established && f.code === 'INSTANCE_ELSEWHERE' && this.opening) {
          // A keyed instance's owner is another host, or a RESUME reached a moved session's stub
          // (our cache or the directory lagged): take the same HELLO or RESUME there; the client
          // only sees the WELCOME or RESUMED.
          void this.redirectOpening(f.message);
          return;
        }
        if (!this.established && f.code === 'MIGRATION_ABORTED' && this.back) {
          // The MOVE was tentative and the migration aborted: the session stayed on the host that
          // sent the MOVE. The client's RESUME goes there instead; the client sees none of it.
          this.returnTo(this.back);
          return;
        }
        if (this.sid && SESSION_FATAL_CODES.has(f.code)) table.forgetSession(this.sid);
        break;
      default:
    }
    this.client.writeFrame(f);
    this.checkBuffered(this.client, 'client');
  }

  private fromClient(f: Frame): void {
    if (this.phase === 'switching') {
      this.whileSwitching(f);
      return;
    }
    const up = this.up;
    if (this.phase !== 'spliced' || !up) return;
    if (this.clientNext !== undefined && !this.admit(f, this.clientNext)) return;
    if (f.type === FrameType.RESUME && f.prepared) {
      // Never for the host: kept for the MOVE if it answers the CHALLENGE of the hint, else stale.
      const prep = this.prep;
      if (prep && prep.resume === undefined && equalBytes(f.nonce, prep.nonce) && toHex(f.sessionId) === this.sid) {
        prep.resume = encodeFrame(f);
      }
      return;
    }
    if (f.type === FrameType.CLOSE && this.sid) this.ctx.table.forgetSession(this.sid);
    up.writeFrame(f);
    this.checkBuffered(up, 'host');
  }

  /** Whether a client frame may go on to the new host after a re-splice (see `clientNext`). */
  private admit(f: Frame, next: number | null): boolean {
    if (f.type === FrameType.DATA) {
      if (next === null || f.seq > next) return false;
      if (f.seq === next) this.clientNext = undefined;
      return true;
    }
    // Before the RESUMED the new host takes no ACK or heartbeat either; handshake frames pass.
    return next !== null || (f.type !== FrameType.ACK && f.type !== FrameType.PING && f.type !== FrameType.PONG);
  }

  /**
   * The host announced a MOVE to `url`: a client that can asks for its RESUME now (a prepared
   * CHALLENGE, answered while the session carries on), so that at the MOVE the destination gets it
   * at once instead of after a round trip to the client.
   */
  private onHint(url: string): void {
    if (!this.prepares || !this.established || !this.sid || this.phase !== 'spliced') return;
    const nonce = newNonce();
    this.prep = { url, nonce, resume: undefined };
    this.client.writeFrame({ type: FrameType.CHALLENGE, nonce, prepare: true });
  }

  /** The host sent MOVE: it handed the session to the host at `url`. */
  private onMove(url: string): void {
    const old = this.up;
    const from = this.host;
    const prep = this.prep;
    this.prep = undefined;
    this.up = undefined;
    // The old host has handed the session over; nothing more it says is for this client.
    if (old) hangUp(old);
    if (!this.established || !this.sid) {
      // The client is still inside its handshake and cannot take an in-band CHALLENGE: point the
      // cache at the destination and let the client resume through us on a new transport.
      void this.ctx.table.byClientUrl(url).then(
        (dest) => {
          if (dest && this.sid) this.ctx.table.rememberSession(this.sid, dest.id);
          this.fail('TRANSPORT_CLOSED', 'session moved during the handshake; reconnect');
        },
        () => this.fail('TRANSPORT_CLOSED', 'session moved during the handshake; reconnect'),
      );
      return;
    }
    if (prep?.resume && prep.url === url) {
      this.ctx.counters.prepared++;
      void this.resplice(this.beginSwitch(prep.nonce, from, prep.resume), url);
      return;
    }
    void this.resplice(this.beginSwitch(newNonce(), from), url);
  }

  /** Enters the switching phase (the old upstream is already hung up), with its timeout armed. */
  private beginSwitch(nonce: Uint8Array, from: RoutedHost | undefined, resume?: Uint8Array): Switch {
    const { ctx } = this;
    const sw: Switch = {
      nonce,
      startedAt: ctx.clock.now(),
      timer: undefined,
      dest: undefined,
      link: undefined,
      resume,
      dropped: 0,
      droppedBytes: 0,
      from,
    };
    this.sw = sw;
    this.phase = 'switching';
    sw.timer = ctx.clock.setTimeout(() => {
      sw.timer = undefined;
      if (this.sw === sw) this.fail('HANDSHAKE_TIMEOUT', `re-splice not done within ${ctx.handshakeTimeoutMs} ms`);
    }, ctx.handshakeTimeoutMs);
    return sw;
  }

  private async resplice(sw: Switch, url: string): Promise<void> {
    const { ctx } = this;
    const sid = this.sid as string;
    let dest: RoutedHost | undefined;
    try {
      dest = await ctx.table.byClientUrl(url);
    } catch {
      dest = undefined;
    }
    if (this.sw !== sw) return;
    if (!dest) {
      ctx.table.forgetSession(sid);
      ctx.log.warn({ session: sid, url }, 'gateway: MOVE names a host not in the table');
      this.fail('TRANSPORT_CLOSED', 'session moved to a host the gateway does not know; reconnect');
      return;
    }
    this.routeTo(sw, dest);
    // The client answers in-band, on the transport it already has, unless its RESUME is in
    // already (prepared at the hint). The link opens meanwhile.
    if (!sw.resume) this.client.writeFrame({ type: FrameType.CHALLENGE, nonce: sw.nonce });
    await this.linkSwitch(sw);
  }

  /** Points the session (and its instance) at `dest` for this splice and the caches. */
  private routeTo(sw: Switch, dest: RoutedHost): void {
    sw.dest = dest;
    this.ctx.table.rememberSession(this.sid as string, dest.id);
    if (this.instance) this.ctx.table.rememberInstance(this.instance, dest.id);
    this.setHost(dest);
  }

  /** Opens the switch's link to its destination and completes the switch if the RESUME is in. */
  private async linkSwitch(sw: Switch): Promise<void> {
    const dest = sw.dest as RoutedHost;
    let link: FramedConnection;
    try {
      link = await this.ctx.openLink(dest, sw.nonce, this.remote);
    } catch (err) {
      if (this.sw !== sw) return;
      this.ctx.log.warn(
        { session: this.sid, host: dest.id, err: asRoamError(err).message },
        'gateway: re-splice link failed',
      );
      this.fail('TRANSPORT_CLOSED', `could not reach the session's host ${dest.id}; reconnect`);
      return;
    }
    if (this.sw !== sw) {
      link.abort();
      return;
    }
    sw.link = link;
    this.finishSwitch(sw);
  }

  /** Replays the client's HELLO or RESUME to the host an INSTANCE_ELSEWHERE named (its client URL). */
  private async redirectOpening(url: string): Promise<void> {
    const { ctx } = this;
    const opening = this.opening as { first: Frame; nonce: Uint8Array };
    const old = this.up;
    this.up = undefined;
    if (old) hangUp(old);
    let dest: RoutedHost | undefined;
    try {
      dest = await ctx.table.byClientUrl(url);
    } catch {
      dest = undefined;
    }
    if (this.ended) return;
    if (!dest || ++this.redirects > MAX_REDIRECTS) {
      this.fail('UNAVAILABLE', `the instance's host (${url}) is not one this gateway can reach; retry`);
      return;
    }
    if (this.instance) ctx.table.rememberInstance(this.instance, dest.id);
    if (this.sid && opening.first.type === FrameType.RESUME) ctx.table.rememberSession(this.sid, dest.id);
    if (!(await this.upstreamTo(dest, opening.nonce, opening.first))) return;
    ctx.counters.redirected++;
    ctx.log.debug(
      { host: dest.id, instance: this.instance, session: this.sid },
      'gateway: opening redirected to the host that has it',
    );
  }

  /** Takes the client's RESUME back to the host a tentative MOVE came from. */
  private returnTo(back: { host: RoutedHost; nonce: Uint8Array; resume: Uint8Array }): void {
    this.back = undefined;
    const old = this.up;
    this.up = undefined;
    if (old) hangUp(old);
    const sw = this.beginSwitch(back.nonce, undefined, back.resume);
    this.routeTo(sw, back.host);
    this.ctx.log.info({ session: this.sid, host: back.host.id }, 'gateway: migration aborted; back to the source');
    void this.linkSwitch(sw);
  }

  /**
   * Client frames between the MOVE and its RESUME. DATA, ACK, PING and PONG are dropped, only
   * counted: the old host has frozen and handed the session over, and the new one restored the
   * transport state of that moment, so nothing the client sent since was acknowledged by anyone
   * who still holds the session. The client keeps every unacknowledged DATA in its replay buffer
   * and, after RESUMED, retransmits exactly what lies above the new host's last received seq;
   * its ACKs and heartbeats are re-derived from RESUME/RESUMED. Dropping keeps the gateway's
   * memory per switch constant however fast the client sends.
   */
  private whileSwitching(f: Frame): void {
    const sw = this.sw as Switch;
    switch (f.type) {
      case FrameType.DATA:
        sw.dropped++;
        sw.droppedBytes += f.payload.length;
        return;
      case FrameType.ACK:
      case FrameType.PING:
      case FrameType.PONG:
        sw.dropped++;
        return;
      case FrameType.RESUME:
        if (f.prepared) {
          // Answers a prepared CHALLENGE the MOVE overtook; the CHALLENGE of this switch follows.
          sw.dropped++;
          return;
        }
        if (sw.resume) {
          this.fail('UNEXPECTED_FRAME', 'second RESUME during a re-splice');
        } else if (!equalBytes(f.nonce, sw.nonce)) {
          this.fail('RESUME_REPLAYED', 'resume proof answers a challenge not issued on this transport');
        } else if (toHex(f.sessionId) !== this.sid) {
          this.fail('UNEXPECTED_FRAME', 'RESUME names another session');
        } else {
          sw.resume = encodeFrame(f);
          this.finishSwitch(sw);
        }
        return;
      case FrameType.CLOSE:
      case FrameType.ERROR:
        // The client ended the session (or the transport) mid-switch. The new host never hears of
        // it and lets the session expire after its TTL.
        this.end('client left during a re-splice');
        return;
      default:
        this.fail('UNEXPECTED_FRAME', `frame type ${f.type} during a re-splice`);
    }
  }

  /** Completes the switch once both the new link and the client's RESUME are there. */
  private finishSwitch(sw: Switch): void {
    const link = sw.link;
    const resume = sw.resume;
    if (this.sw !== sw || !link || !resume) return;
    if (sw.timer !== undefined) this.ctx.clock.clearTimeout(sw.timer);
    this.sw = undefined;
    this.phase = 'spliced';
    this.back = sw.from ? { host: sw.from, nonce: sw.nonce, resume } : undefined;
    this.up = link;
    // The client is in a handshake again until RESUMED comes back.
    this.established = false;
    this.clientNext = null;
    link.setHandler(this.upstreamHandler(link));
    link.write(resume);
    this.ctx.counters.resplices++;
    this.ctx.log.info(
      {
        session: this.sid,
        from: sw.from?.id,
        to: sw.dest?.id,
        ms: Math.round(this.ctx.clock.now() - sw.startedAt),
        dropped: sw.dropped,
        droppedBytes: sw.droppedBytes,
      },
      'gateway: re-spliced',
    );
  }

  private setHost(h: RoutedHost): void {
    if (this.host) this.ctx.table.release(this.host.id);
    this.host = h;
    this.ctx.table.acquire(h.id);
  }

  /** A side is not reading; drop the splice rather than buffer without bound. Sessions survive. */
  private checkBuffered(conn: FramedConnection, side: 'client' | 'host'): void {
    const n = conn.transport.bufferedAmount;
    if (n <= this.ctx.maxBufferedBytes) return;
    this.ctx.log.warn({ session: this.sid, side, bytes: n }, 'gateway: peer not reading; splice dropped');
    this.client.abort();
    this.end(`${side} not reading`);
  }

  /** Refuses during the opening phase: ERROR with the code, then close. */
  private refuse(err: unknown): void {
    if (this.phase === 'ended') return;
    const e = asRoamError(err);
    this.ctx.counters.refused++;
    this.ctx.log.info({ code: e.code, remote: this.remote, err: e.message }, 'gateway: client refused');
    // After a decoding error the connection already sent the decoder's ERROR and closed.
    this.client.close(e.code, e.message, true);
    this.end(e.message);
  }

  /** Cuts a spliced client with an ERROR of the gateway's own. */
  private fail(code: CodeName, message: string): void {
    if (this.phase === 'ended') return;
    this.ctx.counters.refused++;
    this.ctx.log.info({ session: this.sid, code, err: message }, 'gateway: client cut');
    this.client.close(code, message, true);
    this.end(message);
  }

  /** Ends the splice: flushes and closes both sides (no CLOSE frame: the session lives on). */
  end(reason: string): void {
    if (this.phase === 'ended') return;
    this.phase = 'ended';
    const sw = this.sw;
    this.sw = undefined;
    if (sw?.timer !== undefined) this.ctx.clock.clearTimeout(sw.timer);
    sw?.link?.abort();
    if (this.up) hangUp(this.up);
    this.up = undefined;
    hangUp(this.client);
    if (this.host) this.ctx.table.release(this.host.id);
    this.host = undefined;
    this.ctx.done(this);
    this.ctx.log.debug({ session: this.sid, reason }, 'gateway: splice ended');
  }
}

/** INSTANCE_ELSEWHERE answers one HELLO may follow (owners may move meanwhile). */
const MAX_REDIRECTS = 3;

/** Sends what is queued, then closes the transport without a frame of our own. */
function hangUp(conn: FramedConnection): void {
  conn.flush();
  conn.transport.close();
}

function asRoamError(err: unknown): RoamError {
  if (err instanceof RoamError) return err;
  return new RoamError('INTERNAL', (err as Error)?.message ?? String(err), { cause: err as Error });
}

/**
 * Open, authenticated, idle splice links per host (`?pooled=1`), topped up in the background
 * after each one taken. A link that closes while idle (its host went away, or let it idle out)
 * just leaves the pool.
 */
class LinkPool {
  private readonly idle = new Map<string, WebSocket[]>();
  private readonly filling = new Map<string, Promise<void>>();
  private closed = false;

  constructor(
    private readonly size: number,
    private readonly open: (host: RoutedHost) => Promise<WebSocket>,
    private readonly log: GatewayLogger,
  ) {}

  /** An open idle link to `host`, if there is one; starts topping the pool up either way. */
  take(host: RoutedHost): WebSocket | undefined {
    const list = this.idle.get(host.id);
    let ws: WebSocket | undefined;
    while (list && list.length > 0) {
      const next = list.shift() as WebSocket;
      if (next.readyState === WebSocket.OPEN) {
        ws = next;
        break;
      }
    }
    void this.fill(host);
    return ws;
  }

  /** Tops the pool of `host` up; resolves when it is full or opening a link failed. */
  fill(host: RoutedHost): Promise<void> {
    if (this.size <= 0 || this.closed) return Promise.resolve();
    const running = this.filling.get(host.id);
    if (running) return running;
    const filling = (async () => {
      try {
        for (;;) {
          const list = this.idle.get(host.id) ?? [];
          this.idle.set(host.id, list);
          if (list.length >= this.size || this.closed) return;
          const ws = await this.open(host);
          if (this.closed) {
            ws.terminate();
            return;
          }
          // An idle link has no other listener: its errors must not go unhandled.
          ws.on('error', () => {});
          ws.once('close', () => {
            const i = list.indexOf(ws);
            if (i >= 0) list.splice(i, 1);
          });
          list.push(ws);
        }
      } catch (err) {
        // Links open on demand meanwhile; the next one taken tries to fill the pool again.
        this.log.debug({ host: host.id, err: (err as Error).message }, 'gateway: splice pool not filled');
      } finally {
        this.filling.delete(host.id);
      }
    })();
    this.filling.set(host.id, filling);
    return filling;
  }

  close(): void {
    this.closed = true;
    for (const list of this.idle.values()) for (const ws of list) ws.terminate();
    this.idle.clear();
  }
}
