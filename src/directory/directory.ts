import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { isDashboardPath, serveDashboard } from '../dashboard/index.js';
import { type Clock, Emitter, type TimerHandle } from '../session/index.js';
import type { Store } from '../store/index.js';
import { isValidKey } from '../store/store.js';
import {
  AUTH_HEADER,
  type ClusterEvent,
  ClusterKeys,
  clusterFetch,
  type DrainStatus,
  decodeJson,
  encodeJson,
  fingerprint,
  type HostedInstance,
  type HostRecord,
  type LocationRecord,
  type MigrationRecord,
  parseJsonBody,
  RequestVerifier,
  verifyIdentitySignature,
} from '../transport/cluster.js';
import { sendError, sendJson } from '../transport/peer.js';
import { RoamError } from '../wire/index.js';
import { DirectoryMetrics, type DirectoryMetricsOptions } from './metrics.js';
import * as check from './validate.js';

/**
 * The directory: the cluster's control plane. It keeps the host table (registrations, heartbeats,
 * suspicion and purge on silence, graceful leave) and the migration history in a {@link Store},
 * answers the operator's public API by fanning out to the hosts' peer endpoints, and streams every
 * cluster event over Server-Sent Events. See docs/directory.md for the API and the auth model.
 *
 * Two kinds of callers:
 * - members (hosts, gateways) on `/cluster/*`: every request carries a fresh cluster signature
 *   ({@link AUTH_HEADER}, HMAC with the cluster secret, 30 s window, nonces remembered);
 * - operators (CLI, dashboard) on `/api/*`: `Authorization: Bearer <token>` when the directory
 *   has a token, or a cluster signature. Without a token `/api/*` is open: only run it so on
 *   loopback.
 *
 * @module
 */

/** The structured logger the directory writes to (pino's interface, or anything shaped like it). */
export interface DirectoryLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): DirectoryLogger;
}

export interface DirectoryOptions {
  /** Where the host table and migration history live. The caller opens and closes it. */
  store: Store;
  /** The cluster secret (at least 16 bytes); see `parseClusterSecret`. */
  secret: Uint8Array;
  /** `host:port` (`[::1]:7070` for IPv6). Default `127.0.0.1:0` (a free port). */
  listen?: string;
  /**
   * Operator bearer token for `/api/*`. Unset: `/api/*` is open to anyone who can reach it,
   * which is only safe on loopback. Members may always use a cluster signature instead.
   */
  token?: string;
  /** How often hosts should heartbeat (told to them at registration). Default 1000 ms. */
  heartbeatMs?: number;
  /** A host silent this long becomes `suspect`. Default 3 × heartbeatMs. */
  suspectAfterMs?: number;
  /** A host silent this long is removed from the table. Default 10 × heartbeatMs. */
  purgeAfterMs?: number;
  /**
   * Heartbeats update the host table in memory; the Store copy is rewritten at most this often
   * per host (and at once on every status change). Default 5000 ms.
   */
  persistEveryMs?: number;
  /** How long a fan-out waits for each host before listing it as unreachable. Default 2000 ms. */
  fanOutTimeoutMs?: number;
  /** How long `/api/migrate` waits for the owner. Default 120 s. */
  migrateTimeoutMs?: number;
  /** SSE keepalive comment period. Default 15 s. */
  keepaliveMs?: number;
  /** An SSE reader whose unsent backlog exceeds this is dropped. Default 1 MiB. */
  maxStreamBufferBytes?: number;
  /** Most SSE readers at once; more get `OVERLOADED`. Default 256. */
  maxStreams?: number;
  /** Migration records kept (memory and Store); older ones are deleted. Default 1000. */
  maxMigrations?: number;
  logger?: DirectoryLogger;
  /** Prometheus metrics (`directory.metrics`, `GET /metrics`); see docs/observability.md. */
  metrics?: DirectoryMetricsOptions;
  /** Wall-clock time source for host liveness (`now()` in ms since the epoch). Default `Date`. */
  clock?: Clock;
}

/** Event map of {@link Directory.events}: each event under its type, and every event under `event`. */
export type DirectoryEventMap = { event: [ClusterEvent] } & {
  [K in ClusterEvent['type']]: [Extract<ClusterEvent, { type: K }>];
};

/** The directory's event emitter: the same events as the SSE stream, in process. */
export class DirectoryEvents extends Emitter<DirectoryEventMap> {
  /** @internal */
  publish(e: ClusterEvent): void {
    (this.emit as (event: string, e: ClusterEvent) => void)(e.type, e);
    this.emit('event', e);
  }

  protected override onListenerError(err: unknown): void {
    this.listenerError?.(err);
  }

  /** @internal */
  listenerError: ((err: unknown) => void) | undefined;
}

/** One row of `GET /api/instances`. */
export interface InstanceInfo extends HostedInstance {
  host: string;
}

/** One row of `GET /api/sessions`. */
export interface SessionInfo {
  host: string;
  session: string;
  service: string;
  instance: string;
  state: string;
  remote: string;
}

const noop = (): void => {};
const MAX_BODY = 1 << 20;
/** After refusing an oversized body, how long the rest may take to arrive (it is discarded). */
const DISCARD_MS = 10_000;

/**
 * Reads a request body up to `limit` bytes. Past the limit it rejects with `PAYLOAD_TOO_LARGE`
 * but keeps the request flowing (discarding), so the 413 reply reaches a client that is still
 * sending instead of being lost to a connection reset.
 */
function readLimited(req: IncomingMessage, limit: number): Promise<Uint8Array> {
  return new Promise<Uint8Array>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    let over = false;
    req.on('data', (c: Buffer) => {
      if (over) return;
      n += c.length;
      if (n > limit) {
        over = true;
        chunks.length = 0;
        reject(new RoamError('PAYLOAD_TOO_LARGE', `request body over ${limit} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.once('end', () => {
      if (!over) resolve(new Uint8Array(Buffer.concat(chunks)));
    });
    req.once('error', (err) => {
      if (!over) reject(new RoamError('INVALID_ARGUMENT', `request body: ${err.message}`, { cause: err }));
    });
  });
}

/** Lets the rest of a refused request arrive (discarded), for a while, then hangs up. */
function discardRest(req: IncomingMessage): void {
  if (req.complete || req.destroyed) return;
  req.on('data', noop);
  req.resume();
  const timer = setTimeout(() => req.socket?.destroy(), DISCARD_MS);
  timer.unref();
  req.once('close', () => clearTimeout(timer));
}
const STREAMING = Symbol('streaming');

const silentLogger: DirectoryLogger = { debug: noop, info: noop, warn: noop, error: noop, child: () => silentLogger };

const wallClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t as unknown as TimerHandle;
  },
  clearTimeout: (h) => clearTimeout(h as unknown as NodeJS.Timeout),
};

function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new RoamError('INVALID_ARGUMENT', `listen wants host:port, got ${JSON.stringify(s)}`);
  return { host: (m[1] ?? m[2]) as string, port };
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

interface HostEntry {
  record: HostRecord;
  /** Clock time the Store copy was last written. */
  persistedAt: number;
}

interface Stream {
  res: ServerResponse;
  types: Set<string> | undefined;
}

type Route = (body: unknown, url: URL, req: IncomingMessage, res: ServerResponse) => Promise<unknown>;

interface Timings {
  heartbeatMs: number;
  suspectAfterMs: number;
  purgeAfterMs: number;
  persistEveryMs: number;
  fanOutTimeoutMs: number;
  migrateTimeoutMs: number;
  keepaliveMs: number;
  maxStreamBufferBytes: number;
  maxStreams: number;
  maxMigrations: number;
}

function positive(name: string, v: number | undefined, dflt: number): number {
  const n = v ?? dflt;
  if (!Number.isFinite(n) || n <= 0) throw new RoamError('INVALID_ARGUMENT', `${name} must be a positive number`);
  return n;
}

export class Directory {
  /** Base URL of the HTTP API, e.g. `http://127.0.0.1:7070`. */
  readonly url: string;
  /** Every cluster event, as it is streamed on `GET /api/events`. */
  readonly events = new DirectoryEvents();
  /** This directory's Prometheus registry and metrics (its own registry, never the global one). */
  readonly metrics: DirectoryMetrics;

  private readonly table = new Map<string, HostEntry>();
  /** Oldest first (Map insertion order). */
  private readonly migrations = new Map<string, MigrationRecord>();
  private readonly streams = new Set<Stream>();
  private readonly sockets = new Set<Socket>();
  private readonly routes = new Map<string, Route>();
  private readonly verifier: RequestVerifier;
  private readonly tokenDigest: Buffer | undefined;
  private writes: Promise<void> = Promise.resolve();
  private healthTimer: TimerHandle | undefined;
  private keepaliveTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly opts: DirectoryOptions,
    private readonly t: Timings,
    private readonly clock: Clock,
    private readonly log: DirectoryLogger,
    private readonly server: Server,
    url: string,
  ) {
    this.url = url;
    this.verifier = new RequestVerifier(opts.secret);
    this.tokenDigest = opts.token ? digest(opts.token) : undefined;
    this.events.listenerError = (err) => this.log.error({ err }, 'directory event listener threw');
    this.metrics = new DirectoryMetrics(opts.metrics);
    this.metrics.attach(this.events, {
      hosts: () => Array.from(this.table.values(), (e) => e.record),
      streams: () => this.streams.size,
    });
    this.defineRoutes();
  }

  /** Loads the host table and migration history from the Store and starts listening. */
  static async start(opts: DirectoryOptions): Promise<Directory> {
    if (!(opts.secret instanceof Uint8Array) || opts.secret.length < 16) {
      throw new RoamError('INVALID_ARGUMENT', 'the cluster secret must be at least 16 bytes');
    }
    if (opts.token !== undefined && opts.token.length === 0) {
      throw new RoamError('INVALID_ARGUMENT', 'the operator token must not be empty');
    }
    const heartbeatMs = positive('heartbeatMs', opts.heartbeatMs, 1000);
    const suspectAfterMs = positive('suspectAfterMs', opts.suspectAfterMs, 3 * heartbeatMs);
    const purgeAfterMs = positive('purgeAfterMs', opts.purgeAfterMs, 10 * heartbeatMs);
    if (purgeAfterMs < suspectAfterMs) {
      throw new RoamError('INVALID_ARGUMENT', 'purgeAfterMs must not be shorter than suspectAfterMs');
    }
    const t: Timings = {
      heartbeatMs,
      suspectAfterMs,
      purgeAfterMs,
      persistEveryMs: positive('persistEveryMs', opts.persistEveryMs, 5000),
      fanOutTimeoutMs: positive('fanOutTimeoutMs', opts.fanOutTimeoutMs, 2000),
      migrateTimeoutMs: positive('migrateTimeoutMs', opts.migrateTimeoutMs, 120_000),
      keepaliveMs: positive('keepaliveMs', opts.keepaliveMs, 15_000),
      maxStreamBufferBytes: positive('maxStreamBufferBytes', opts.maxStreamBufferBytes, 1 << 20),
      maxStreams: positive('maxStreams', opts.maxStreams, 256),
      maxMigrations: positive('maxMigrations', opts.maxMigrations, 1000),
    };
    const { host, port } = parseListen(opts.listen ?? '127.0.0.1:0');
    const log = (opts.logger ?? silentLogger).child({ component: 'directory' });
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) =>
        reject(new RoamError('INVALID_ARGUMENT', `cannot listen on ${host}:${port}: ${e.message}`, { cause: e })),
      );
      server.listen(port, host, () => resolve());
    });
    const real = (server.address() as AddressInfo).port;
    const url = `http://${host.includes(':') ? `[${host}]` : host}:${real}`;
    const d = new Directory(opts, t, opts.clock ?? wallClock, log, server, url);
    try {
      await d.load();
    } catch (err) {
      await new Promise<void>((r) => server.close(() => r()));
      throw err;
    }
    d.serve();
    log.info({ url, hosts: d.table.size, migrations: d.migrations.size }, 'directory listening');
    return d;
  }

  /** The host table, sorted by id (copies). */
  hosts(): HostRecord[] {
    return [...this.table.values()].map((e) => structuredClone(e.record)).sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** Stops serving, ends every event stream and writes the latest host table to the Store. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    if (this.healthTimer !== undefined) this.clock.clearTimeout(this.healthTimer);
    clearInterval(this.keepaliveTimer);
    for (const s of this.streams) s.res.end();
    this.streams.clear();
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.sockets) s.destroy();
    await closed;
    // The last heartbeats are not all in the Store yet: write them, then accept no more writes.
    for (const id of this.table.keys()) this.persistHost(id).catch(noop);
    this.closed = true;
    await this.writes;
  }

  // -------------------------------------------------------------------------------------------
  // Store

  private async load(): Promise<void> {
    const now = this.clock.now();
    for (const e of await this.opts.store.list(ClusterKeys.hostPrefix)) {
      let r: HostRecord;
      try {
        r = decodeJson<HostRecord>(e.value);
        if (typeof r !== 'object' || r === null || typeof r.id !== 'string' || typeof r.peerUrl !== 'string') {
          throw new Error('not a host record');
        }
      } catch (err) {
        this.log.warn({ key: e.key, err: (err as Error).message }, 'skipping unreadable host record');
        continue;
      }
      // A restarted directory has heard nothing yet: give every host a full suspect period.
      r.lastSeenAt = now;
      if (r.status !== 'up' && r.status !== 'suspect' && r.status !== 'leaving') r.status = 'up';
      this.table.set(r.id, { record: r, persistedAt: now });
    }
    const loaded: MigrationRecord[] = [];
    for (const e of await this.opts.store.list(ClusterKeys.migrationPrefix)) {
      try {
        loaded.push(check.migration(decodeJson(e.value), e.key));
      } catch (err) {
        this.log.warn({ key: e.key, err: (err as Error).message }, 'skipping unreadable migration record');
      }
    }
    loaded.sort((a, b) => a.endedAt - b.endedAt || (a.id < b.id ? -1 : 1));
    for (const m of loaded) this.migrations.set(m.id, m);
    await this.pruneMigrations();
  }

  /** Runs Store writes one after another; the returned promise carries this write's outcome. */
  private enqueue<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new RoamError('UNAVAILABLE', 'the directory is closed'));
    const p = this.writes.then(fn);
    this.writes = p.then(noop, (err: unknown) => this.log.error({ err, what }, 'directory store write failed'));
    return p;
  }

  /** Writes the host's current row, or deletes it when the host is gone from the table. */
  private persistHost(id: string): Promise<void> {
    return this.enqueue(`host ${id}`, async () => {
      const e = this.table.get(id);
      if (e) {
        e.persistedAt = this.clock.now();
        await this.opts.store.put(ClusterKeys.host(id), encodeJson(e.record));
      } else {
        await this.opts.store.delete(ClusterKeys.host(id));
      }
    });
  }

  private pruneMigrations(): Promise<void> {
    const drop: string[] = [];
    for (const id of this.migrations.keys()) {
      if (this.migrations.size - drop.length <= this.t.maxMigrations) break;
      drop.push(id);
    }
    for (const id of drop) this.migrations.delete(id);
    if (drop.length === 0) return Promise.resolve();
    return this.enqueue('migration prune', async () => {
      for (const id of drop) await this.opts.store.delete(ClusterKeys.migration(id));
    });
  }

  // -------------------------------------------------------------------------------------------
  // Health

  private serve(): void {
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    this.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      this.metrics.track(req, res, (route) => this.routes.has(route));
      this.onRequest(req, res).catch((err: unknown) => this.fail(req, res, err));
    });
    this.keepaliveTimer = setInterval(() => {
      for (const s of this.streams) this.write(s, ': keepalive\n\n');
    }, this.t.keepaliveMs);
    this.keepaliveTimer.unref();
    this.scheduleHealth();
  }

  private scheduleHealth(): void {
    const every = Math.max(5, Math.min(this.t.heartbeatMs, this.t.suspectAfterMs, this.t.purgeAfterMs) / 2);
    this.healthTimer = this.clock.setTimeout(() => {
      this.checkHealth();
      if (!this.closing) this.scheduleHealth();
    }, every);
  }

  private checkHealth(): void {
    const now = this.clock.now();
    for (const [id, e] of [...this.table]) {
      const silent = now - e.record.lastSeenAt;
      if (silent >= this.t.suspectAfterMs && e.record.status !== 'suspect') {
        e.record.status = 'suspect';
        this.log.warn({ host: id, silentMs: silent }, 'host suspect');
        this.persistHost(id).catch(noop);
        this.broadcast({ type: 'host.suspect', host: id });
      }
      if (silent >= this.t.purgeAfterMs) {
        this.table.delete(id);
        this.log.warn({ host: id, silentMs: silent }, 'host purged');
        this.persistHost(id).catch(noop);
        this.broadcast({ type: 'host.left', host: id, reason: 'purged' });
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Events

  private broadcast(e: ClusterEvent): void {
    this.events.publish(e);
    if (this.streams.size === 0) return;
    const frame = `event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`;
    for (const s of this.streams) if (!s.types || s.types.has(e.type)) this.write(s, frame);
  }

  private write(s: Stream, frame: string): void {
    if (s.res.destroyed) {
      this.streams.delete(s);
      return;
    }
    s.res.write(frame);
    if (s.res.writableLength > this.t.maxStreamBufferBytes) {
      this.streams.delete(s);
      this.log.warn(
        { remote: s.res.socket?.remoteAddress, backlog: s.res.writableLength },
        'event stream reader too slow: dropped',
      );
      s.res.destroy();
    }
  }

  private openStream(url: URL, res: ServerResponse): typeof STREAMING {
    let types: Set<string> | undefined;
    const param = url.searchParams.get('types');
    if (param !== null) {
      types = new Set(param.split(',').filter((x) => x !== ''));
      for (const x of types) {
        if (!check.EVENT_TYPES.includes(x as ClusterEvent['type'])) {
          throw new RoamError(
            'INVALID_ARGUMENT',
            `types: unknown event type ${JSON.stringify(x.slice(0, 64))} (known: ${check.EVENT_TYPES.join(', ')})`,
          );
        }
      }
    }
    if (this.streams.size >= this.t.maxStreams) {
      throw new RoamError('OVERLOADED', `too many event stream readers (${this.t.maxStreams})`);
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.socket?.setNoDelay(true);
    const s: Stream = { res, types };
    this.streams.add(s);
    res.on('close', () => this.streams.delete(s));
    this.write(s, `event: hello\ndata: ${JSON.stringify({ hosts: this.hosts() })}\n\n`);
    return STREAMING;
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  private fail(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    const e = err instanceof RoamError ? err : new RoamError('INTERNAL', (err as Error)?.message ?? String(err));
    // `?token=` (event stream) never reaches a log.
    const url = req.url?.replace(/([?&]token=)[^&#]*/g, '$1…');
    if (e.code === 'INTERNAL') this.log.error({ err, method: req.method, url }, 'directory request failed');
    else this.log.debug({ code: e.code, msg: e.message, method: req.method, url }, 'request refused');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (e.code === 'PAYLOAD_TOO_LARGE') discardRest(req);
    sendError(res, e);
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const rawUrl = req.url ?? '/';
    let url: URL;
    try {
      url = new URL(rawUrl, 'http://directory');
    } catch {
      throw new RoamError('INVALID_ARGUMENT', 'bad request target');
    }
    // The dashboard: static files at `/` and `/dashboard/*`, no auth (they hold no data).
    if ((method === 'GET' || method === 'HEAD') && isDashboardPath(url.pathname)) {
      await serveDashboard(req, res, url.pathname);
      return;
    }
    const cluster = url.pathname.startsWith('/cluster/');
    if (!cluster && !url.pathname.startsWith('/api/') && url.pathname !== '/metrics') {
      throw new RoamError('NOT_FOUND', `no route ${method} ${url.pathname}`);
    }
    const declared = Number(req.headers['content-length']);
    if (declared > MAX_BODY) throw new RoamError('PAYLOAD_TOO_LARGE', `request body over ${MAX_BODY} bytes`);
    const body = await readLimited(req, MAX_BODY);
    const sig = req.headers[AUTH_HEADER];
    const signature = typeof sig === 'string' ? sig : undefined;
    if (cluster) this.verifier.verify(signature, method, rawUrl, body);
    else this.authorizeOperator(req, signature, method, rawUrl, body, url);
    const route = this.routes.get(`${method} ${url.pathname}`);
    if (!route) throw new RoamError('NOT_FOUND', `no route ${method} ${url.pathname}`);
    const parsed = parseJsonBody(body);
    const result = await route(parsed, url, req, res);
    if (result !== STREAMING) sendJson(res, 200, result);
  }

  private authorizeOperator(
    req: IncomingMessage,
    signature: string | undefined,
    method: string,
    rawUrl: string,
    body: Uint8Array,
    url: URL,
  ): void {
    if (!this.tokenDigest) return;
    const auth = req.headers.authorization;
    if (typeof auth === 'string' && auth.startsWith('Bearer ')) {
      if (timingSafeEqual(digest(auth.slice(7)), this.tokenDigest)) return;
      throw new RoamError('UNAUTHORIZED', 'wrong bearer token');
    }
    if (signature !== undefined) {
      this.verifier.verify(signature, method, rawUrl, body);
      return;
    }
    // EventSource (the dashboard) cannot send headers: `GET /api/events?token=…`, on that route only.
    const queryToken = url.searchParams.get('token');
    if (queryToken !== null && method === 'GET' && url.pathname === '/api/events') {
      if (timingSafeEqual(digest(queryToken), this.tokenDigest)) return;
      throw new RoamError('UNAUTHORIZED', 'wrong token');
    }
    throw new RoamError('UNAUTHORIZED', 'missing bearer token (Authorization: Bearer <token>) or cluster signature');
  }

  private defineRoutes(): void {
    const r = (method: 'GET' | 'POST', path: string, fn: Route) => this.routes.set(`${method} ${path}`, fn);
    r('POST', '/cluster/register', (b) => this.register(b));
    r('POST', '/cluster/heartbeat', (b) => this.heartbeat(b));
    r('POST', '/cluster/leave', (b) => this.leave(b));
    r('POST', '/cluster/events', (b) => this.pushEvents(b));

    r('GET', '/api/hosts', async () => ({ hosts: this.hosts() }));
    r('GET', '/api/instances', async () => {
      const { rows, unreachable } = await this.fanOut<InstanceInfo>('/peer/instances', 'instances');
      return { instances: rows, unreachable };
    });
    r('GET', '/api/sessions', async (_b, url) => {
      const id = url.searchParams.get('id');
      const { rows, unreachable } = await this.fanOut<SessionInfo>('/peer/sessions', 'sessions');
      return { sessions: id === null ? rows : rows.filter((s) => s.session === id), unreachable };
    });
    r('GET', '/api/migrations', async (_b, url) => {
      const p = url.searchParams.get('limit');
      const limit = p === null ? 100 : check.number(Number(p), 'limit', { int: true, min: 1, max: 1000 });
      const all = [...this.migrations.values()];
      const out: MigrationRecord[] = [];
      for (let i = all.length - 1; i >= 0 && out.length < limit; i--) out.push(all[i] as MigrationRecord);
      return { migrations: out };
    });
    r('POST', '/api/migrate', (b) => this.migrate(b));
    r('POST', '/api/drain', (b) => this.drain(b));
    r('GET', '/api/drains', async () => {
      const { replies, unreachable } = await this.fanOutRaw('GET', '/peer/drain');
      const drains: DrainStatus[] = [];
      for (const [, reply] of replies) {
        const d = (reply as { drain?: unknown } | null)?.drain;
        if (d !== null && typeof d === 'object') drains.push(d as DrainStatus);
      }
      return { drains, unreachable };
    });
    r('POST', '/api/suspend', async (b) => {
      const o = check.object(b, 'body');
      const instance = check.string(o.instance, 'instance', 1024);
      const owner = await this.findOwner(instance);
      return clusterFetch(owner.peerUrl, '/peer/suspend', {
        secret: this.opts.secret,
        body: { instance },
        timeoutMs: this.t.migrateTimeoutMs,
      });
    });
    r('GET', '/api/events', async (_b, url, _req, res) => this.openStream(url, res));
    // Prometheus text format; authorized like /api/* (open without a token, else bearer token).
    r('GET', '/metrics', async (_b, _url, _req, res) => {
      await this.metrics.serve(res);
      return STREAMING;
    });
  }

  // -------------------------------------------------------------------------------------------
  // Cluster endpoints

  private async register(body: unknown): Promise<unknown> {
    const reg = check.registration(body);
    if (reg.id !== fingerprint(reg.publicKey)) {
      throw new RoamError('UNAUTHORIZED', 'record.id is not the fingerprint of record.publicKey');
    }
    const signed = new TextEncoder().encode(JSON.stringify(reg.record));
    if (!verifyIdentitySignature(reg.publicKey, signed, reg.signature)) {
      throw new RoamError('UNAUTHORIZED', 'registration signature does not verify with record.publicKey');
    }
    const record = check.hostRecord(reg.record, this.clock.now());
    const entry: HostEntry = { record, persistedAt: record.registeredAt };
    const previous = this.table.get(record.id);
    this.table.set(record.id, entry);
    try {
      await this.persistHost(record.id);
    } catch (err) {
      if (previous) this.table.set(record.id, previous);
      else this.table.delete(record.id);
      throw err;
    }
    this.log.info({ host: record.id, peerUrl: record.peerUrl, clientUrl: record.clientUrl }, 'host registered');
    this.metrics.registered();
    this.broadcast({ type: 'host.registered', host: structuredClone(record) });
    return { ok: true, heartbeatMs: this.t.heartbeatMs };
  }

  private async heartbeat(body: unknown): Promise<unknown> {
    const hb = check.heartbeat(body);
    const e = this.table.get(hb.host);
    if (!e) throw new RoamError('NOT_FOUND', `host ${hb.host} is not registered: register again`);
    const now = this.clock.now();
    e.record.lastSeenAt = now;
    e.record.metrics = hb.metrics;
    const status = hb.status ?? 'up';
    if (status !== e.record.status) {
      this.log.info({ host: hb.host, from: e.record.status, to: status }, 'host status');
      e.record.status = status;
      await this.persistHost(hb.host);
      // A host heard again, or announcing that it leaves: the full record tells the new status.
      this.broadcast({ type: 'host.registered', host: structuredClone(e.record) });
    } else if (now - e.persistedAt >= this.t.persistEveryMs) {
      e.persistedAt = now;
      this.persistHost(hb.host).catch(noop);
    }
    return { ok: true, heartbeatMs: this.t.heartbeatMs };
  }

  private async leave(body: unknown): Promise<unknown> {
    const { host } = check.leave(body);
    if (!this.table.delete(host)) throw new RoamError('NOT_FOUND', `host ${host} is not registered`);
    await this.persistHost(host);
    this.log.info({ host }, 'host left');
    this.broadcast({ type: 'host.left', host, reason: 'leave' });
    return { ok: true };
  }

  private async pushEvents(body: unknown): Promise<unknown> {
    const list = check.events(body);
    const migrations = list.flatMap((e) => (e.type === 'migration' ? [e.migration] : []));
    if (migrations.length > 0) {
      for (const m of migrations) {
        this.migrations.delete(m.id);
        this.migrations.set(m.id, m);
      }
      const latest = new Map(migrations.map((m) => [m.id, m]));
      await this.enqueue('migrations', async () => {
        for (const m of latest.values()) await this.opts.store.put(ClusterKeys.migration(m.id), encodeJson(m));
      });
      await this.pruneMigrations();
    }
    for (const e of list) this.broadcast(e);
    return { ok: true, accepted: list.length };
  }

  // -------------------------------------------------------------------------------------------
  // Public API helpers

  private async fanOutRaw(
    method: 'GET' | 'POST',
    path: string,
  ): Promise<{ replies: Array<[HostRecord, unknown]>; unreachable: string[] }> {
    const hosts = this.hosts();
    const settled = await Promise.allSettled(
      hosts.map((h) =>
        clusterFetch<unknown>(h.peerUrl, path, { method, secret: this.opts.secret, timeoutMs: this.t.fanOutTimeoutMs }),
      ),
    );
    const replies: Array<[HostRecord, unknown]> = [];
    const unreachable: string[] = [];
    settled.forEach((s, i) => {
      const h = hosts[i] as HostRecord;
      if (s.status === 'fulfilled') replies.push([h, s.value]);
      else {
        unreachable.push(h.id);
        this.log.warn({ host: h.id, path, err: (s.reason as Error).message }, 'host did not answer');
      }
    });
    return { replies, unreachable };
  }

  /** Asks every host for `path`, merges the array under `field` with `host` added to each row. */
  private async fanOut<T extends { host: string }>(
    path: string,
    field: string,
  ): Promise<{ rows: T[]; unreachable: string[] }> {
    const { replies, unreachable } = await this.fanOutRaw('GET', path);
    const rows: T[] = [];
    for (const [h, reply] of replies) {
      const list = (reply as Record<string, unknown> | null)?.[field];
      if (!Array.isArray(list)) {
        this.log.warn({ host: h.id, path }, `host reply has no ${field} array`);
        unreachable.push(h.id);
        continue;
      }
      for (const item of list) {
        if (typeof item === 'object' && item !== null && !Array.isArray(item)) rows.push({ ...item, host: h.id } as T);
      }
    }
    return { rows, unreachable };
  }

  /** The host that owns `instance`: the location table first, else whoever lists it. */
  private async findOwner(instance: string): Promise<HostRecord> {
    const key = ClusterKeys.location(instance);
    if (isValidKey(key)) {
      try {
        const e = await this.opts.store.get(key);
        const loc = e ? decodeJson<LocationRecord>(e.value) : undefined;
        const owner = typeof loc?.host === 'string' ? this.table.get(loc.host) : undefined;
        if (owner) return structuredClone(owner.record);
      } catch (err) {
        this.log.warn({ instance, err: (err as Error).message }, 'location record unreadable; asking the hosts');
      }
    }
    const { replies, unreachable } = await this.fanOutRaw('GET', '/peer/instances');
    for (const [h, reply] of replies) {
      const list = (reply as { instances?: unknown } | null)?.instances;
      if (Array.isArray(list) && list.some((i) => (i as { instance?: unknown } | null)?.instance === instance)) {
        return h;
      }
    }
    if (unreachable.length > 0) {
      throw new RoamError(
        'UNAVAILABLE',
        `instance ${instance} not found on the hosts that answered; unreachable: ${unreachable.join(', ')}`,
      );
    }
    throw new RoamError('NOT_FOUND', `no host holds instance ${instance}`);
  }

  private async migrate(body: unknown): Promise<unknown> {
    const o = check.object(body, 'body');
    const instance = check.string(o.instance, 'instance', 1024);
    const to = o.to === undefined || o.to === null ? undefined : check.hostId(o.to, 'to');
    if (to !== undefined && !this.table.has(to)) throw new RoamError('NOT_FOUND', `no host ${to}`);
    const labels = o.labels === undefined ? undefined : check.labels(o.labels, 'labels');
    if (o.precopy !== undefined && typeof o.precopy !== 'boolean') {
      throw new RoamError('INVALID_ARGUMENT', 'precopy must be a boolean');
    }
    const precopy = o.precopy as boolean | undefined;
    if (o.hint !== undefined && typeof o.hint !== 'boolean') {
      throw new RoamError('INVALID_ARGUMENT', 'hint must be a boolean');
    }
    const hint = o.hint as boolean | undefined;
    const owner = await this.findOwner(instance);
    return clusterFetch<MigrationRecord>(owner.peerUrl, '/peer/migrate', {
      secret: this.opts.secret,
      body: {
        instance,
        ...(to === undefined ? {} : { to }),
        ...(labels === undefined ? {} : { labels }),
        ...(precopy === undefined ? {} : { precopy }),
        ...(hint === undefined ? {} : { hint }),
      },
      timeoutMs: this.t.migrateTimeoutMs,
    });
  }

  private async drain(body: unknown): Promise<unknown> {
    const o = check.object(body, 'body');
    const host = check.hostId(o.host, 'host');
    const req: { deadlineMs?: number; concurrency?: number; batchSize?: number } = {};
    if (o.batchSize !== undefined)
      req.batchSize = check.number(o.batchSize, 'batchSize', { int: true, min: 1, max: 10_000 });
    if (o.deadlineMs !== undefined) req.deadlineMs = check.number(o.deadlineMs, 'deadlineMs', { int: true, min: 1 });
    if (o.concurrency !== undefined) {
      req.concurrency = check.number(o.concurrency, 'concurrency', { int: true, min: 1, max: 1000 });
    }
    const e = this.table.get(host);
    if (!e) throw new RoamError('NOT_FOUND', `no host ${host}`);
    return clusterFetch<DrainStatus>(e.record.peerUrl, '/peer/drain', {
      secret: this.opts.secret,
      body: req,
      timeoutMs: 30_000,
    });
  }
}
