import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import {
  type Continuation,
  decodeContinuation,
  encodeContinuation,
  type SessionContinuation,
} from '../service/continuation.js';
import type { MoveTarget, Requirements, ResumeHow } from '../service/define.js';
import { compatMatches } from '../service/define.js';
import type { InstanceInfo, InstanceSnapshot, ServiceMeta, SessionSnapshot } from '../service/protocol.js';
import { type Clock, Emitter, type SessionKey, systemClock, toHex } from '../session/index.js';
import type { Store } from '../store/index.js';
import {
  ClusterKeys,
  type DrainStatus,
  decodeJson,
  encodeJson,
  type HostedInstance,
  type HostedService,
  keyedInstanceId,
  type LocationRecord,
  type MigrationReason,
  type MigrationRecord,
} from '../transport/cluster.js';
import { nodeSessionCrypto } from '../transport/crypto-node.js';
import type { Listener, ListenOptions } from '../transport/index.js';
import { type PeerLink, PeerServer } from '../transport/peer.js';
import { type CodeName, RoamError } from '../wire/index.js';
import { ClusterMember, type ClusterOptions, drainStatus } from './cluster.js';
import { createLogger, type Logger } from './logger.js';
import { HostMetrics, type HostMetricsOptions } from './metrics.js';
import { type IncomingMigration, Migrations } from './migration.js';
import { ServerSession, SessionServer, type SessionServerOptions } from './server.js';
import { ServiceWorker } from './service-worker.js';
import { SPLICE_PATH, spliceLink } from './splice.js';

/** A service module to load: its default export is a `defineService(...)` definition. */
export interface ServiceModule {
  /** Service name (must match the definition's). */
  name: string;
  /** Path or URL of the module. */
  module: string | URL;
  /** Worker heap limit in MiB (from the service's `requires.memoryMb`). */
  memoryMb?: number;
}

export interface HostOptions {
  /** Where continuations live. */
  store: Store;
  services: ServiceModule[];
  /** A detached session is suspended to the Store after this long. Default 30 s. */
  graceMs?: number;
  /** Continuations expire after this long. Default 24 h. */
  continuationTtlMs?: number;
  /** How often expired continuations are collected. Default 60 s. */
  gcIntervalMs?: number;
  /** How long the reason of an expired session is remembered. Default 7 days. */
  endedTtlMs?: number;
  /** This host's labels, matched against services' `requires.labels`. */
  labels?: Record<string, string>;
  /** Passed through to the session server (limits, engine tunables, handshake timeouts). */
  server?: Omit<
    SessionServerOptions,
    'services' | 'restore' | 'arriving' | 'onGrace' | 'detachedGraceMs' | 'clock' | 'logger'
  >;
  clock?: Clock;
  logger?: Logger;
  /** Join a cluster: peer endpoint, directory registration, live migration. */
  cluster?: ClusterOptions;
  /** Prometheus metrics (`host.metrics`, `GET /metrics`); see docs/observability.md. */
  metrics?: HostMetricsOptions;
}

/** What a drain may do. */
export interface DrainOptions {
  /** Stop moving after this long; what is left is suspended to the Store by `close`. Default 30 s. */
  deadlineMs?: number;
  /** Migrations in flight at once. Default 4. */
  concurrency?: number;
  /** Instances per migration (one link, one commit). Default 64. */
  batchSize?: number;
  reason?: MigrationReason;
}

interface SessionEntry {
  session: ServerSession;
  service: string;
  inst: string;
  key: string | undefined;
  dependsOn: Set<string>;
  /** Set while a restore is wiring the session up: its `resumed` is not a reconnect. */
  restoring: boolean;
  /** The session migrated away; what is left is a stub that redirects its client. */
  moved?: boolean;
  /** Messages that arrived before the worker was told about the session, in order. */
  early?: Array<{ ch: number; buf: ArrayBuffer }>;
  /** Settles once the worker has opened the session (or refused it); unset after. */
  opening?: Promise<void>;
}

interface InstanceEntry {
  service: string;
  key: string | undefined;
  members: Set<string>;
  attached: Set<string>;
  idleTimer: ReturnType<Clock['setTimeout']> | undefined;
}

interface SessionMeta {
  service: string;
  inst: string;
  key: string | null;
  expiresAt: number;
  dependents: string[];
}

const K = {
  session: (sid: string) => `roam.session.${sid}`,
  instance: (service: string, inst: string) => `roam.instance.${service}.${inst}`,
  ended: (sid: string) => `roam.ended.${sid}`,
};
const utf8 = new TextEncoder();
const utf8dec = new TextDecoder();
const json = (v: unknown): Uint8Array => utf8.encode(JSON.stringify(v));
const unjson = <T>(b: Uint8Array): T => JSON.parse(utf8dec.decode(b)) as T;

/**
 * A host: accepts client sessions, runs service instances in worker threads, and suspends
 * sessions and instances into continuations in a Store — so a session survives its client being
 * away for hours, and the host itself restarting.
 *
 * @example
 * const host = await Host.start({ store: await openSqliteStore({ path: 'roam.db' }),
 *   services: [{ name: 'counter', module: new URL('./counter.js', import.meta.url) }] });
 * await host.listen('ws://0.0.0.0:7071');
 */
/** What a host reports as sessions and instances leave and re-enter memory. */
export type HostEvents = {
  /** A session's continuation (and, for a per-session instance, the instance's) is in the Store. */
  suspended: [{ session: string; instance: string }];
  instanceSuspended: [{ instance: string; service: string }];
  /** A suspended session is back in memory. */
  restored: [{ session: string; instance: string }];
  /** A migration finished (committed, aborted or refused), on the source. */
  migration: [MigrationRecord];
  /** An incoming migration finished (committed, aborted or refused), on the destination. */
  migrationIn: [IncomingMigration];
  drain: [DrainStatus];
  /** This host stopped serving an instance because another host owns it now (stale epoch). */
  fenced: [{ instance: string; owner: string }];
};

export class Host extends Emitter<HostEvents> {
  readonly server: SessionServer;
  private readonly workers = new Map<string, { worker: ServiceWorker; meta: ServiceMeta }>();
  private readonly sessions = new Map<string, SessionEntry>();
  private readonly instances = new Map<string, InstanceEntry>();
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly store: Store;
  private readonly graceMs: number;
  private readonly ttlMs: number;
  private readonly endedTtlMs: number;
  private gcTimer: ReturnType<typeof setInterval> | undefined;
  private closing = false;
  /** Session id → ids of the live sessions that depend on it. */
  private readonly dependents = new Map<string, Set<string>>();
  /** Deletions of consumed continuations, by Store key; writers of the same key wait for them. */
  private readonly cleanups = new Map<string, Promise<void>>();
  /** Suspensions under way, by session id or `instance:<id>`. */
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Counters for tests, metrics and benchmarks. */
  readonly counters = {
    suspended: 0,
    restored: 0,
    instancesSuspended: 0,
    instancesRestored: 0,
    collected: 0,
    migratedOut: 0,
    migratedIn: 0,
    migrationsAborted: 0,
    fenced: 0,
    /** Keyed HELLOs sent to the host that runs their instance (INSTANCE_ELSEWHERE). */
    redirected: 0,
    /** Application payload bytes from clients / from services to clients. */
    bytesIn: 0,
    bytesOut: 0,
  };
  /** This host's Prometheus registry and metrics (its own registry, never the global one). */
  readonly metrics: HostMetrics;
  /** This host's id in a cluster (the fingerprint of its identity), or a random one outside. */
  readonly id: string;
  private readonly migrations: Migrations | undefined;
  private readonly member: ClusterMember | undefined;
  private peer: PeerServer | undefined;
  private readonly peerLinks = new Map<string, PeerLink>();
  /** Client bytes (in + out) already reported by a heartbeat. */
  private bytesReported = 0;
  private drainState: DrainStatus | undefined;
  private drainDone: Promise<void> | undefined;
  private readonly fenceWatch = new AbortController();
  private readonly epochs = new Map<string, number>();

  private constructor(private readonly opts: HostOptions) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? createLogger('roam-host');
    this.metrics = new HostMetrics(opts.metrics);
    this.store = this.metrics.instrumentStore(opts.store);
    this.graceMs = opts.graceMs ?? 30_000;
    this.ttlMs = opts.continuationTtlMs ?? 24 * 3600_000;
    this.endedTtlMs = opts.endedTtlMs ?? 7 * 24 * 3600_000;
    this.id = opts.cluster?.identity.id ?? randomBytes(16).toString('hex');
    this.log = this.log.child({ host: this.id });
    if (opts.cluster) {
      const cluster = opts.cluster;
      const self = this;
      this.member = new ClusterMember(
        {
          id: this.id,
          store: this.store,
          log: this.log,
          labels: () => ({ ...opts.labels }),
          services: () => this.hostedServices(),
          counts: () => ({ instances: this.instances.size, sessions: this.sessions.size }),
          takeBytes: () => {
            const total = this.counters.bytesIn + this.counters.bytesOut;
            const b = total - this.bytesReported;
            this.bytesReported = total;
            return b;
          },
        },
        cluster,
      );
      this.migrations = new Migrations(
        {
          id: this.id,
          clientUrl: () => this.member?.clientUrl,
          store: this.store,
          log: this.log,
          secret: cluster.secret,
          clock: this.clock,
          restoreEngine: (snapshot) => this.server.restoreEngine(snapshot),
          worker: (name) => this.worker(name),
          hasService: (name) => this.workers.has(name),
          checkRequirements: (r, name) => this.checkRequires(r, name),
          instance: (inst) => this.instances.get(inst),
          session: (sid) => this.sessions.get(sid)?.session,
          refusal: () =>
            this.closing
              ? 'host is shutting down'
              : this.drainState?.state === 'running'
                ? 'host is draining'
                : undefined,
          detachMigrated: (inst) => this.detachMigrated(inst),
          attachMigrated: (inst, service, key, sessions, epoch) =>
            this.attachMigrated(inst, service, key, sessions, epoch),
          membersOf: (inst) => [...(this.instances.get(inst)?.members ?? [])],
          adoptEpoch: (inst, epoch) => {
            if (this.instances.has(inst) && epoch > (this.epochs.get(inst) ?? 0)) this.epochs.set(inst, epoch);
          },
          forgetStub: (sid, stub) => {
            if (this.server.getSession(sid) === stub) this.server.forget(sid);
            else stub.engine.retire();
          },
          incoming: (ev) => this.emit('migrationIn', ev),
          emit(event) {
            // A record is reported again as it completes (the clients' gap comes later): each report
            // must keep what was true when it was made, not alias the record the migration mutates.
            const ev = event.type === 'migration' ? { ...event, migration: structuredClone(event.migration) } : event;
            if (ev.type === 'migration') {
              const m = ev.migration;
              const { id, phases, outcome } = m;
              if (phases.clientGapMs !== undefined)
                self.log.info({ migration: id, clientGapMs: phases.clientGapMs }, 'migration client gap');
              else
                self.log[outcome === 'committed' ? 'info' : 'warn'](
                  {
                    migration: id,
                    instances: m.instances,
                    to: m.to,
                    reason: m.reason,
                    outcome,
                    code: m.code,
                    err: m.message,
                    sessions: m.sessions,
                    freezeMs: phases.freezeMs,
                    rounds: m.rounds.length,
                    bytes: m.bytesSent,
                  },
                  `migration ${outcome}`,
                );
              if (m.outcome === 'committed' && m.from === self.id && m.phases.clientGapMs === undefined) {
                self.counters.migratedOut += m.instances.length;
              } else if (m.outcome !== 'committed') {
                self.counters.migrationsAborted++;
              }
              self.emit('migration', m);
            }
            self.member?.emit(ev);
          },
        },
        cluster.migration,
      );
    }
    const services: SessionServerOptions['services'] = {};
    for (const s of opts.services) {
      services[s.name] = {
        open: (session) => this.onOpen(s.name, session),
        admit: (hello) => this.admit(s.name, hello.key),
      };
    }
    this.server = new SessionServer({
      sessionTtlMs: this.ttlMs,
      ...opts.server,
      services,
      clock: this.clock,
      logger: this.log,
      detachedGraceMs: this.graceMs,
      onGrace: (session) => {
        this.suspendSession(session.id).catch((err: unknown) =>
          this.log.error({ session: session.id, err: (err as Error).message }, 'suspend failed'),
        );
      },
      restore: (sid, verify) => this.restore(sid, verify),
      arriving: (sid) => this.migrations?.incoming.has(sid) ?? false,
      movedTo: (sid) => {
        // Only while the stub is what the server holds: a session that came back is served here.
        const stub = this.migrations?.stub(sid);
        return stub && this.server.getSession(sid) === stub.session ? stub.url : undefined;
      },
    });
    this.metrics.attach(this, {
      services: () => this.workers.keys(),
      instances: () => this.instances.values(),
      stubs: () => this.migrations?.stubCount ?? 0,
    });
  }

  /** Starts the service workers; rejects if a service module fails to load. */
  static async start(opts: HostOptions): Promise<Host> {
    const host = new Host(opts);
    // Every worker started, so a failed start leaves no thread behind.
    const spawned = new Set<ServiceWorker>();
    try {
      for (const s of opts.services) {
        const url = s.module instanceof URL ? s.module.href : pathToFileURL(s.module).href;
        const spawnWorker = (memoryMb: number | undefined): ServiceWorker =>
          new ServiceWorker(
            { module: url, service: s.name },
            {
              send: (sid, ch, data) => host.onWorkerSend(sid, ch, data),
              close: (sid, reason) => host.sessions.get(sid)?.session.close(reason),
              depends: (sid, on) => host.addDependency(sid, on),
              moveTo: (inst, target) => host.onMoveTo(inst, target),
            },
            host.log.child({ service: s.name }),
            memoryMb ? { maxOldGenerationSizeMb: memoryMb } : undefined,
          );
        let worker = spawnWorker(s.memoryMb);
        spawned.add(worker);
        let meta = await worker.ready;
        if (meta.name !== s.name)
          throw new RoamError('SERVICE_ERROR', `${s.module} defines ${meta.name}, not ${s.name}`);
        host.checkRequirements(meta);
        // The heap limit is only known once the definition is loaded; a worker's limits are fixed
        // at spawn, so respawn with them.
        if (!s.memoryMb && meta.requires.memoryMb) {
          await worker.terminate();
          spawned.delete(worker);
          worker = spawnWorker(meta.requires.memoryMb);
          spawned.add(worker);
          meta = await worker.ready;
        }
        host.workers.set(s.name, { worker, meta });
      }
    } catch (err) {
      await Promise.all([...spawned].map((w) => w.terminate()));
      await host.stopWorkers();
      throw err;
    }
    const gcMs = opts.gcIntervalMs ?? 60_000;
    host.gcTimer = setInterval(() => {
      host.collectGarbage().catch((err: unknown) => host.log.warn({ err: (err as Error).message }, 'gc failed'));
    }, gcMs);
    host.gcTimer.unref();
    return host;
  }

  /** What a loaded service declared, and the heap limit its worker runs with. */
  serviceInfo(name: string): { meta: ServiceMeta; maxOldGenerationSizeMb: number | undefined } {
    const { worker, meta } = this.worker(name);
    return { meta, maxOldGenerationSizeMb: worker.resourceLimits.maxOldGenerationSizeMb };
  }

  /** Refuses to host a service whose `requires` this host does not meet. */
  private checkRequirements(meta: ServiceMeta): void {
    this.checkRequires(meta.requires, meta.name);
  }

  private checkRequires(r: Requirements, name: string): void {
    const major = Number(process.versions.node.split('.')[0]);
    if (r.nodeMajor !== undefined && major < r.nodeMajor) {
      throw new RoamError('INCOMPATIBLE', `${name} requires Node ${r.nodeMajor}+, this host runs ${major}`);
    }
    for (const [k, v] of Object.entries(r.labels ?? {})) {
      if (this.opts.labels?.[k] !== v) {
        throw new RoamError(
          'INCOMPATIBLE',
          `${name} requires label ${k}=${v}, this host has ${this.opts.labels?.[k] ?? 'none'}`,
        );
      }
    }
  }

  private hostedServices(): HostedService[] {
    return [...this.workers.values()].map(({ meta }) => ({
      name: meta.name,
      version: meta.version,
      compat: meta.compat,
      requires: meta.requires,
    }));
  }

  async listen(url: string, opts?: ListenOptions): Promise<Listener> {
    const l = await this.server.listen(url, opts);
    if (this.member && !this.member.clientUrl) this.member.clientUrl = this.member.opts.advertiseClientUrl ?? l.url;
    return l;
  }

  /** Adds a link endpoint to the peer API (before {@link join}); the gateway's splice uses this. */
  addPeerLink(path: string, handler: PeerLink): void {
    this.peerLinks.set(path, handler);
  }

  /**
   * Joins the cluster given in `cluster`: starts the peer endpoint (migrations in and out, the
   * directory's queries and commands), registers with the directory and starts heartbeats, and
   * watches the location table so a stale owner stops serving (fencing). Call after `listen`.
   */
  async join(): Promise<{ peerUrl: string }> {
    const cluster = this.opts.cluster;
    const member = this.member;
    const migrations = this.migrations;
    if (!cluster || !member || !migrations)
      throw new RoamError('INVALID_STATE', 'host was started without cluster options');
    if (!member.clientUrl) throw new RoamError('INVALID_STATE', 'listen() for clients before join()');
    const peer = new PeerServer(cluster.secret, this.log);
    this.peer = peer;
    this.routes(peer, migrations);
    const [h, p] = (cluster.peerListen ?? '127.0.0.1:0').split(/:(?=\d+$)/);
    const url = await peer.listen(h ?? '127.0.0.1', Number(p ?? 0));
    member.peerUrl = cluster.advertisePeerUrl ?? url;
    void this.watchLocations();
    await member.start();
    return { peerUrl: url };
  }

  private routes(peer: PeerServer, migrations: Migrations): void {
    peer.link('/peer/migrate', (ws) => migrations.accept(ws));
    // Gateways splice clients here (pre-issued challenge, see src/host/splice.ts).
    peer.link(SPLICE_PATH, spliceLink(this.server, { clock: this.clock }));
    for (const [path, handler] of this.peerLinks) peer.link(path, handler);
    // Prometheus cannot sign requests: the only route open without a cluster signature.
    peer.openRoute('/metrics', (_req, res) => this.metrics.serve(res));
    peer.route('GET', '/peer/info', async () => ({
      host: this.id,
      sessions: this.sessions.size,
      instances: this.instances.size,
      stubs: migrations.stubCount,
    }));
    peer.route('GET', '/peer/instances', async () => ({ instances: await this.describeInstances() }));
    peer.route('GET', '/peer/sessions', async (_b, req) => {
      const id = new URL(req.url ?? '/', 'http://peer').searchParams.get('id');
      const all = this.describeSessions();
      return { sessions: id ? all.filter((s) => s.session === id) : all };
    });
    peer.route('POST', '/peer/migrate', async (body) => {
      const b = (body ?? {}) as {
        instance?: unknown;
        to?: unknown;
        labels?: unknown;
        precopy?: unknown;
        hint?: unknown;
      };
      if (typeof b.instance !== 'string') {
        throw new RoamError('INVALID_ARGUMENT', 'POST /peer/migrate needs {"instance": id}');
      }
      if (b.to !== undefined && typeof b.to !== 'string')
        throw new RoamError('INVALID_ARGUMENT', '"to" must be a host id');
      if (b.precopy !== undefined && typeof b.precopy !== 'boolean') {
        throw new RoamError('INVALID_ARGUMENT', '"precopy" must be a boolean');
      }
      if (b.hint !== undefined && typeof b.hint !== 'boolean') {
        throw new RoamError('INVALID_ARGUMENT', '"hint" must be a boolean');
      }
      const labels =
        b.labels && typeof b.labels === 'object' && !Array.isArray(b.labels)
          ? (b.labels as Record<string, string>)
          : undefined;
      return this.migrate(b.instance, {
        ...(typeof b.to === 'string' ? { to: b.to } : {}),
        ...(labels ? { labels } : {}),
        ...(b.precopy === false ? { precopy: false } : {}),
        ...(b.hint === false ? { hint: false } : {}),
        reason: 'operator',
      });
    });
    peer.route('POST', '/peer/drain', async (body) => {
      const b = (body ?? {}) as { deadlineMs?: unknown; concurrency?: unknown; batchSize?: unknown };
      const num = (v: unknown, name: string) => {
        if (v === undefined) return undefined;
        if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
          throw new RoamError('INVALID_ARGUMENT', `${name} must be a positive number`);
        }
        return v;
      };
      return this.startDrain({
        deadlineMs: num(b.deadlineMs, 'deadlineMs'),
        concurrency: num(b.concurrency, 'concurrency'),
        batchSize: num(b.batchSize, 'batchSize'),
      });
    });
    peer.route('GET', '/peer/drain', async () => ({ drain: this.drainState ? drainStatus(this.drainState) : null }));
    peer.route('POST', '/peer/suspend', async (body) => {
      const b = (body ?? {}) as { instance?: unknown; session?: unknown };
      if (typeof b.instance === 'string') {
        if (!(await this.suspendInstance(b.instance)))
          throw new RoamError('NOT_FOUND', `no instance ${b.instance} here`);
        return { suspended: { instance: b.instance } };
      }
      if (typeof b.session === 'string') {
        if (!(await this.suspendSession(b.session))) throw new RoamError('NOT_FOUND', `no session ${b.session} here`);
        return { suspended: { session: b.session } };
      }
      throw new RoamError('INVALID_ARGUMENT', 'POST /peer/suspend needs {"instance": id} or {"session": id}');
    });
  }

  /** Running instances with their size and sessions, for the directory and tools. */
  async describeInstances(): Promise<HostedInstance[]> {
    const out: HostedInstance[] = [];
    for (const [name, { worker }] of this.workers) {
      for (const i of await worker.request<InstanceInfo[]>({ op: 'instances' })) {
        if (!this.instances.has(i.inst)) continue;
        out.push({
          instance: i.inst,
          service: name,
          key: i.key ?? null,
          sessions: i.sessions,
          stateBytes: i.stateBytes,
          epoch: this.epochs.get(i.inst) ?? 0,
        });
      }
    }
    return out;
  }

  /**
   * Moves one instance, with all its sessions, to another host: the named one, or the least loaded
   * host that can run it. Resolves with the migration's record once it committed; rejects with
   * MIGRATION_REFUSED / MIGRATION_ABORTED (the instance keeps running here), NO_DESTINATION,
   * NOT_FOUND or FENCED.
   */
  async migrate(
    inst: string,
    opts: {
      to?: string;
      labels?: Record<string, string>;
      reason?: MigrationReason;
      precopy?: boolean;
      hint?: boolean;
    } = {},
  ): Promise<MigrationRecord> {
    const { member, migrations } = this.clustered();
    const ie = this.instances.get(inst);
    if (!ie) throw new RoamError('NOT_FOUND', `no instance ${inst} on host ${this.id}`);
    const { meta } = this.worker(ie.service);
    const dest = await member.pickDestination(meta, { host: opts.to, labels: opts.labels });
    return migrations.migrateOut([inst], dest, opts.reason ?? 'operator', {
      precopy: opts.precopy ?? true,
      hint: opts.hint ?? true,
    });
  }

  private clustered(): { member: ClusterMember; migrations: Migrations } {
    if (!this.member || !this.migrations) throw new RoamError('INVALID_STATE', 'this host is not in a cluster');
    return { member: this.member, migrations: this.migrations };
  }

  private onMoveTo(inst: string, target: MoveTarget): void {
    if (!this.member) {
      this.log.warn({ instance: inst }, 'ctx.moveTo ignored: this host is not in a cluster');
      return;
    }
    const opts = 'host' in target ? { to: target.host } : { labels: target.labels };
    this.migrate(inst, { ...opts, reason: 'self' }).catch((err: unknown) =>
      this.log.warn({ instance: inst, err: (err as Error).message }, 'self migration failed'),
    );
  }

  /** The current (or last) drain of this host. */
  get drainStatus(): DrainStatus | undefined {
    return this.drainState ? drainStatus(this.drainState) : undefined;
  }

  /**
   * Starts moving every instance to other hosts (least loaded first, `concurrency` migrations of
   * up to `batchSize` instances at once) and announces the host as leaving so nothing new is
   * placed here. Returns the status at once; `drain` events report progress, and
   * {@link drained} resolves when it is over.
   */
  startDrain(opts: DrainOptions = {}): DrainStatus {
    const { member } = this.clustered();
    if (this.drainState?.state === 'running') return drainStatus(this.drainState);
    const d: DrainStatus = {
      id: randomBytes(6).toString('hex'),
      host: this.id,
      state: 'running',
      total: this.instances.size,
      moved: 0,
      failed: 0,
      suspended: 0,
      startedAt: Date.now(),
    };
    this.drainState = d;
    void member.setStatus('leaving');
    this.log.info({ drain: d.id, instances: d.total, reason: opts.reason ?? 'drain' }, 'drain started');
    this.drainDone = this.runDrain(d, opts).catch((err: unknown) => {
      d.state = 'failed';
      d.message = (err as Error).message;
      d.endedAt = Date.now();
      this.log.error({ drain: d.id, err: d.message }, 'drain failed');
      this.reportDrain(d, true);
    });
    this.reportDrain(d, true);
    return drainStatus(d);
  }

  /** Resolves when the running drain (if any) is over. */
  async drained(): Promise<DrainStatus | undefined> {
    await this.drainDone;
    return this.drainStatus;
  }

  private lastDrainReport = 0;
  private reportDrain(d: DrainStatus, force = false): void {
    const now = Date.now();
    if (!force && now - this.lastDrainReport < 200) return;
    this.lastDrainReport = now;
    const s = drainStatus(d, now);
    this.emit('drain', s);
    this.member?.emit({ type: 'drain', drain: s });
  }

  private async runDrain(d: DrainStatus, opts: DrainOptions): Promise<void> {
    const { member, migrations } = this.clustered();
    const deadline = Date.now() + (opts.deadlineMs ?? 30_000);
    const concurrency = Math.max(1, Math.floor(opts.concurrency ?? 4));
    const batchSize = Math.max(1, Math.floor(opts.batchSize ?? 64));
    const planned = new Map<string, number>();
    const tries = new Map<string, number>();
    const gaveUp = new Set<string>();
    for (;;) {
      // Everything still here (new sessions may have arrived while draining), grouped by service.
      const byService = new Map<string, string[]>();
      for (const [inst, ie] of this.instances) {
        if (migrations.outgoing.has(inst) || gaveUp.has(inst)) continue;
        const list = byService.get(ie.service) ?? [];
        list.push(inst);
        byService.set(ie.service, list);
      }
      const batches: Array<{ service: string; insts: string[] }> = [];
      for (const [service, insts] of byService) {
        for (let i = 0; i < insts.length; i += batchSize)
          batches.push({ service, insts: insts.slice(i, i + batchSize) });
      }
      if (batches.length === 0) break;
      d.total = Math.max(d.total, d.moved + d.failed + batches.reduce((a, b) => a + b.insts.length, 0));
      let next = 0;
      // One read of the host table per wave: picks are then synchronous, and each batch's choice
      // (added to `planned` at once) steers the next one elsewhere.
      const table = await member.hosts();
      const runOne = async (): Promise<void> => {
        for (let b = batches[next++]; b; b = batches[next++]) {
          if (Date.now() > deadline) return;
          const live = b.insts.filter((i) => this.instances.has(i) && !migrations.outgoing.has(i));
          if (live.length === 0) continue;
          const sessions = live.reduce((a, i) => a + (this.instances.get(i)?.members.size ?? 0), 0);
          let dest: Awaited<ReturnType<ClusterMember['pickDestination']>>;
          try {
            dest = member.pickFrom(table, this.worker(b.service).meta, {}, planned);
          } catch (err) {
            d.message = (err as Error).message;
            for (const i of live) gaveUp.add(i);
            d.failed += live.length;
            this.reportDrain(d);
            continue;
          }
          planned.set(dest.id, (planned.get(dest.id) ?? 0) + sessions);
          try {
            await migrations.migrateOut(live, dest, opts.reason ?? 'drain');
            d.moved += live.length;
          } catch (err) {
            planned.set(dest.id, (planned.get(dest.id) ?? 0) - sessions);
            d.message = (err as Error).message;
            for (const i of live) {
              const n = (tries.get(i) ?? 0) + 1;
              tries.set(i, n);
              if (n >= 3) {
                gaveUp.add(i);
                d.failed++;
              }
            }
            this.log.warn({ drain: d.id, err: d.message, instances: live.length, to: dest.id }, 'drain batch failed');
          }
          this.reportDrain(d);
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, batches.length) }, runOne));
      if (Date.now() > deadline) {
        d.message = `deadline reached with ${this.instances.size} instances left`;
        break;
      }
    }
    d.state = d.failed > 0 || this.instances.size > 0 ? 'failed' : 'done';
    d.endedAt = Date.now();
    this.reportDrain(d, true);
    const { id, state, moved, failed, message } = d;
    this.log[state === 'done' ? 'info' : 'warn'](
      { drain: id, state, moved, failed, left: this.instances.size, err: message },
      `drain ${state}`,
    );
  }

  /**
   * Graceful shutdown (SIGTERM): drains every instance to other hosts within `deadlineMs`, then
   * closes — whatever could not move in time is suspended to the Store, never dropped.
   */
  async shutdown(opts: DrainOptions = {}): Promise<DrainStatus | undefined> {
    let status: DrainStatus | undefined;
    if (this.member && this.migrations) {
      const started = Date.now();
      const deadlineMs = opts.deadlineMs ?? 30_000;
      this.startDrain({ reason: 'shutdown', ...opts, deadlineMs });
      status = await this.drained();
      // Moved clients follow their MOVE; wait until each resumed at its destination, so none is
      // left reconnecting to this process once it is gone.
      await this.migrations.whenStubsGone(Math.max(1000, deadlineMs - (Date.now() - started)));
    }
    const left = this.instances.size;
    await this.close();
    if (status) status = { ...status, suspended: left };
    return status;
  }

  /** Stops serving an instance another host now owns (the location's epoch moved past ours). */
  private fence(inst: string, owner: string): void {
    const ie = this.instances.get(inst);
    if (!ie) return;
    this.counters.fenced++;
    this.log.error({ instance: inst, owner }, 'fenced: another host owns this instance; dropping it');
    const sessions = [...ie.members].map((sid) => this.sessions.get(sid)?.session);
    this.detachMigrated(inst);
    void this.worker(ie.service)
      .worker.request({ op: 'release', insts: [inst] })
      .catch(() => {});
    for (const s of sessions) s?.engine.lose('FENCED', `instance ${inst} is owned by ${owner} now`);
    this.emit('fenced', { instance: inst, owner });
  }

  private async watchLocations(): Promise<void> {
    try {
      for await (const ev of this.store.watch(ClusterKeys.locationPrefix, { signal: this.fenceWatch.signal })) {
        if (ev.type !== 'put') continue;
        const loc = decodeJson<LocationRecord>(ev.value);
        // Events arrive late (watchers poll): one about an older epoch than the one this host
        // holds the instance at says nothing about the present.
        const mine = this.epochs.get(loc.instance) ?? 0;
        if (loc.epoch <= mine) continue;
        if (loc.host === this.id) {
          this.epochs.set(loc.instance, loc.epoch);
        } else if (this.instances.has(loc.instance) && !this.migrations?.outgoing.has(loc.instance)) {
          this.fence(loc.instance, loc.host);
        }
      }
    } catch (err) {
      if (!this.fenceWatch.signal.aborted) this.log.error({ err: (err as Error).message }, 'location watch ended');
    }
  }

  /** A migrated-away instance: out of every table here; its sessions stay in the server as stubs. */
  private detachMigrated(inst: string): void {
    const ie = this.instances.get(inst);
    if (!ie) return;
    if (ie.idleTimer !== undefined) this.clock.clearTimeout(ie.idleTimer);
    for (const sid of ie.members) {
      const entry = this.sessions.get(sid);
      if (!entry) continue;
      entry.moved = true;
      this.dropEntry(entry);
    }
    this.instances.delete(inst);
    this.epochs.delete(inst);
  }

  /** A migrated-in instance committed here: its sessions are adopted (detached until their clients resume). */
  private attachMigrated(
    inst: string,
    service: string,
    key: string | undefined,
    sessions: ServerSession[],
    epoch: number,
  ): void {
    this.epochs.set(inst, epoch);
    const ie = this.instanceEntry(inst, service, key);
    for (const session of sessions) {
      const entry: SessionEntry = { session, service, inst, key, dependsOn: new Set(), restoring: true };
      this.sessions.set(session.id, entry);
      this.wire(entry);
      ie.members.add(session.id);
      this.server.adopt(session);
    }
    this.counters.migratedIn += 1;
    // A keyed instance whose clients all stay away is suspended after idleMs, as usual.
    if (key !== undefined && sessions.length === 0) this.markDetached(inst, ie, '');
  }

  /** Sessions in memory (attached or detached within their grace period). */
  get liveSessions(): number {
    return this.sessions.size;
  }
  get liveInstances(): number {
    return this.instances.size;
  }

  private worker(service: string): { worker: ServiceWorker; meta: ServiceMeta } {
    const w = this.workers.get(service);
    if (!w) throw new RoamError('UNKNOWN_SERVICE', `no service ${service} on this host`);
    return w;
  }

  private onOpen(service: string, session: ServerSession): void {
    const entry: SessionEntry = {
      session,
      service,
      inst: '',
      key: session.key,
      dependsOn: new Set(),
      restoring: false,
    };
    this.sessions.set(session.id, entry);
    const { worker } = this.worker(service);
    // Until the worker has the session, its messages wait here (the worker would drop them).
    entry.early = [];
    this.wire(entry);
    const refuse = (err: RoamError) => {
      entry.early = undefined;
      this.log.warn({ session: session.id, code: err.code, err: err.message }, 'open refused');
      session.engine.lose(err.code, err.message);
    };
    entry.opening = worker
      .request<{ inst: string; key: string | undefined; running: boolean }>({
        op: 'resolve',
        sid: session.id,
        key: session.key,
      })
      .then(async (r) => {
        // A keyed instance that was suspended whole comes back from its continuation before the
        // newcomer joins: joining a fresh, empty copy would later overwrite the stored one.
        if (!r.running && r.key !== undefined) await this.restoreIfStored(service, r.inst, r.key);
        const opened = worker.request<string>({ op: 'open', sid: session.id, key: session.key });
        for (const m of entry.early ?? [])
          worker.notify({ op: 'msg', sid: session.id, ch: m.ch, data: m.buf }, [m.buf]);
        entry.early = undefined;
        const inst = await opened;
        entry.inst = inst;
        const ie = this.instanceEntry(inst, service, session.key);
        ie.members.add(session.id);
        if (session.state === 'attached') this.markAttached(ie, session.id);
        // The client may have gone while the worker did not know the session yet.
        else if (session.state === 'detached') worker.notify({ op: 'away', sid: session.id });
      })
      .catch(refuse)
      .finally(() => {
        entry.opening = undefined;
      });
  }

  /**
   * A keyed HELLO in a cluster, before WELCOME: a keyed instance has one owner cluster-wide. When
   * no host runs it yet, this host claims its location in the Store, a compare-and-set from "no
   * owner"; two hosts taking HELLOs for the same new key at once both try, and one wins. When
   * another host in the host table owns it (whatever its status: a suspect host may be alive, a
   * leaving one may still be moving it), the client is sent there. Only an owner gone from the
   * table (left or purged) is taken over, at the next epoch, so its old sessions are fenced.
   */
  private async admit(service: string, rawKey: string | undefined): Promise<void> {
    const member = this.member;
    if (rawKey === undefined || !member) return;
    // Joining a room that runs here under the key as sent: no need to ask the worker's key rule.
    if (this.instances.has(keyedInstanceId(rawKey))) return;
    const { worker } = this.worker(service);
    let r: { inst: string; key: string | undefined };
    try {
      r = await worker.request<{ inst: string; key: string | undefined }>({ op: 'resolve', sid: '', key: rawKey });
    } catch {
      // A key the service refuses: open() refuses the session as on a lone host.
      return;
    }
    if (r.key === undefined || this.instances.has(r.inst)) return;
    const name = ClusterKeys.location(r.inst);
    for (let attempt = 0; attempt < 3; attempt++) {
      const e = await this.store.get(name);
      const loc = e ? decodeJson<LocationRecord>(e.value) : undefined;
      if (loc?.host === this.id) return;
      if (loc) {
        const owner = (await member.hosts()).find((h) => h.id === loc.host);
        if (owner?.clientUrl) {
          this.counters.redirected++;
          this.log.debug({ instance: r.inst, owner: owner.id }, 'keyed HELLO sent to the owner');
          throw new RoamError('INSTANCE_ELSEWHERE', owner.clientUrl);
        }
      }
      const epoch = loc ? loc.epoch + 1 : 0;
      const record: LocationRecord = { instance: r.inst, service, host: this.id, epoch };
      try {
        await this.store.compareAndSet(name, e?.revision ?? 0, encodeJson(record));
        this.epochs.set(r.inst, epoch);
        return;
      } catch (err) {
        if (!(err instanceof RoamError) || err.code !== 'STORE_CONFLICT') throw err;
      }
    }
    throw new RoamError('UNAVAILABLE', `could not settle which host runs instance ${r.inst}; retry`);
  }

  /** Brings a keyed instance back from its complete continuation, if the Store has one. */
  private async restoreIfStored(service: string, inst: string, key: string): Promise<void> {
    await this.inFlight.get(`instance:${inst}`);
    if (this.instances.has(inst)) return;
    if (await this.store.get(K.instance(service, inst))) await this.ensureInstance(service, inst, key);
  }

  private instanceEntry(inst: string, service: string, key: string | undefined): InstanceEntry {
    let ie = this.instances.get(inst);
    if (!ie) {
      ie = { service, key, members: new Set(), attached: new Set(), idleTimer: undefined };
      this.instances.set(inst, ie);
    }
    return ie;
  }

  /** Routes a session's messages to its worker and tracks attachment for idle suspension. */
  private wire(entry: SessionEntry): void {
    const { session } = entry;
    const { worker } = this.worker(entry.service);
    session.on('message', (data, ch) => {
      if (entry.moved) return;
      this.counters.bytesIn += data.length;
      // One copy into a buffer we own, then a transfer: the payload may be a view into a larger chunk.
      const buf = data.slice().buffer;
      if (entry.early) entry.early.push({ ch, buf });
      else worker.notify({ op: 'msg', sid: session.id, ch, data: buf }, [buf]);
    });
    session.on('event', (ev) => {
      if (entry.moved) return;
      const ie = this.instances.get(entry.inst);
      switch (ev.type) {
        case 'suspended':
          if (ie) this.markDetached(entry.inst, ie, session.id);
          worker.notify({ op: 'away', sid: session.id });
          return;
        case 'resumed':
          if (ie) this.markAttached(ie, session.id);
          if (!entry.restoring) worker.notify({ op: 'reconnected', sid: session.id });
          entry.restoring = false;
          return;
        case 'lost':
        case 'closed':
          void this.onEnded(entry, ev.type === 'lost' ? ev.message : ev.reason);
          return;
        default:
      }
    });
  }

  private markAttached(ie: InstanceEntry, sid: string): void {
    ie.attached.add(sid);
    if (ie.idleTimer !== undefined) this.clock.clearTimeout(ie.idleTimer);
    ie.idleTimer = undefined;
  }

  private markDetached(inst: string, ie: InstanceEntry, sid: string): void {
    ie.attached.delete(sid);
    if (ie.attached.size > 0 || ie.key === undefined || this.closing) return;
    const { meta } = this.worker(ie.service);
    if (ie.idleTimer !== undefined) this.clock.clearTimeout(ie.idleTimer);
    ie.idleTimer = this.clock.setTimeout(() => {
      ie.idleTimer = undefined;
      this.suspendInstance(inst).catch((err: unknown) =>
        this.log.error({ instance: inst, err: (err as Error).message }, 'idle suspend failed'),
      );
    }, meta.idleMs);
  }

  /** Records that `sid` depends on `on`, in both directions so suspension finds dependents directly. */
  private addDependency(sid: string, on: string): void {
    const entry = this.sessions.get(sid);
    if (!entry) return;
    entry.dependsOn.add(on);
    let set = this.dependents.get(on);
    if (!set) {
      set = new Set();
      this.dependents.set(on, set);
    }
    set.add(sid);
  }

  /** Removes a session from memory and from the dependency index. */
  private dropEntry(entry: SessionEntry): void {
    const sid = entry.session.id;
    this.sessions.delete(sid);
    for (const on of entry.dependsOn) {
      const set = this.dependents.get(on);
      set?.delete(sid);
      if (set?.size === 0) this.dependents.delete(on);
    }
  }

  private async onEnded(entry: SessionEntry, reason: string): Promise<void> {
    const sid = entry.session.id;
    if (this.sessions.get(sid) !== entry) return;
    this.dropEntry(entry);
    const { worker } = this.worker(entry.service);
    await worker.request({ op: 'closeSession', sid, reason }).catch(() => {});
    const ie = this.instances.get(entry.inst);
    if (!ie) return;
    ie.members.delete(sid);
    ie.attached.delete(sid);
    if (ie.members.size === 0 && ie.key === undefined) {
      this.instances.delete(entry.inst);
      await worker.request({ op: 'endInstance', inst: entry.inst }).catch(() => {});
    } else if (ie.attached.size === 0) {
      this.markDetached(entry.inst, ie, sid);
    }
  }

  private onWorkerSend(sid: string, ch: number, data: Uint8Array): void {
    const e = this.sessions.get(sid);
    if (!e) {
      this.log.warn({ session: sid }, 'service sent to a session that is no longer here');
      return;
    }
    this.counters.bytesOut += data.length;
    try {
      e.session.send(data, ch);
    } catch (err) {
      // The session was lost (e.g. replay window exceeded); its `lost` event tells the service.
      if (!(err instanceof RoamError)) throw err;
    }
  }

  /**
   * Suspends one session into an internal continuation in the Store and frees its memory; its
   * dependents go with it. The client resumes later with a normal RESUME.
   */
  async suspendSession(sid: string, seen = new Set<string>()): Promise<boolean> {
    const entry = this.sessions.get(sid);
    if (!entry || seen.has(sid)) return false;
    seen.add(sid);
    // A grace period can end before the worker has opened the session (a slow open, a keyed
    // instance coming back from the Store): its instance is known, and the worker can snapshot
    // it, only once the open is done.
    if (entry.opening) {
      await entry.opening;
      if (this.sessions.get(sid) !== entry) return false;
    }
    // A migrating instance's sessions travel with it.
    if (this.migrations?.outgoing.has(entry.inst)) return false;
    const done = this.doSuspendSession(sid, entry, seen);
    // A RESUME that arrives mid-suspension waits for the continuation instead of finding nothing.
    this.inFlight.set(
      sid,
      done.catch(() => {}),
    );
    try {
      await done;
    } finally {
      this.inFlight.delete(sid);
    }
    return true;
  }

  private async doSuspendSession(sid: string, entry: SessionEntry, seen: Set<string>): Promise<void> {
    await this.cleanups.get(K.session(sid));
    const { worker, meta } = this.worker(entry.service);
    const engine = entry.session.engine;
    // Freeze inbound first: every message received before this point was already posted to the
    // worker, so the snapshot below accounts for all of them.
    engine.dropTransport();
    engine.detach('GOING_AWAY', 'suspending');
    const dependents = [...(this.dependents.get(sid) ?? [])];
    const snapshot = await worker.request<SessionSnapshot>({ op: 'suspendSession', sid });
    const now = Date.now();
    const sc: SessionContinuation = {
      sessionId: entry.session.sessionId,
      sessionKey: entry.session.keyForResume.raw,
      state: snapshot.state,
      exported: snapshot.exported,
      transport: { ...engine.exportTransport(), inbound: [] },
      dependsOn: snapshot.dependsOn,
      suspendedAt: now,
    };
    const c: Continuation = {
      kind: 'internal',
      service: { name: meta.name, version: meta.version, compat: meta.compat },
      instanceKey: entry.key ?? null,
      instanceState: [],
      timers: [],
      sessions: [sc],
      createdAt: now,
      expiresAt: now + this.ttlMs,
    };
    await this.store.putBlob(K.session(sid), encodeContinuation(c));
    this.dropEntry(entry);
    this.server.forget(sid);
    const ie = this.instances.get(entry.inst);
    if (ie) {
      ie.members.delete(sid);
      ie.attached.delete(sid);
    }
    for (const d of dependents) await this.suspendSession(d, seen);
    // The instance goes to the Store before the session's meta record, which is the commit
    // point: a crash in between leaves no session that points at a missing instance.
    const instanceGoing = this.inFlight.has(`instance:${entry.inst}`);
    if (ie && !instanceGoing && ie.members.size === 0 && (ie.key === undefined || this.closing)) {
      await this.suspendInstance(entry.inst);
    }
    const m: SessionMeta = {
      service: entry.service,
      inst: entry.inst,
      key: entry.key ?? null,
      expiresAt: c.expiresAt,
      dependents,
    };
    await this.store.put(K.session(sid), json(m));
    this.counters.suspended++;
    this.emit('suspended', { session: sid, instance: entry.inst });
  }

  /**
   * Suspends an instance into a complete continuation: its sessions first (each into its own
   * continuation), then its state and timers. Frees the worker's memory for it.
   */
  async suspendInstance(inst: string): Promise<boolean> {
    const ie = this.instances.get(inst);
    if (!ie || this.migrations?.outgoing.has(inst)) return false;
    const pending = this.inFlight.get(`instance:${inst}`);
    if (pending) {
      await pending;
      return true;
    }
    const done = this.doSuspendInstance(inst, ie);
    this.inFlight.set(
      `instance:${inst}`,
      done.catch(() => {}),
    );
    try {
      await done;
    } finally {
      this.inFlight.delete(`instance:${inst}`);
    }
    return true;
  }

  private async doSuspendInstance(inst: string, ie: InstanceEntry): Promise<void> {
    await this.cleanups.get(K.instance(ie.service, inst));
    if (ie.idleTimer !== undefined) this.clock.clearTimeout(ie.idleTimer);
    ie.idleTimer = undefined;
    for (const sid of [...ie.members]) await this.suspendSession(sid);
    if (!this.instances.has(inst)) return;
    const { worker, meta } = this.worker(ie.service);
    const snap = await worker.request<InstanceSnapshot>({ op: 'suspendInstance', inst });
    const now = Date.now();
    const c: Continuation = {
      kind: 'complete',
      service: { name: meta.name, version: meta.version, compat: meta.compat },
      instanceKey: ie.key ?? null,
      instanceState: snap.state,
      timers: snap.timers,
      sessions: [],
      createdAt: now,
      expiresAt: now + this.ttlMs,
    };
    const name = K.instance(ie.service, inst);
    await this.store.putBlob(name, encodeContinuation(c));
    await this.store.put(name, json({ service: ie.service, inst, expiresAt: c.expiresAt }));
    this.instances.delete(inst);
    this.counters.instancesSuspended++;
    this.emit('instanceSuspended', { instance: inst, service: ie.service });
  }

  /** Finds a suspended session in the Store, checks the client's proof, and brings it back. */
  private async restore(sid: string, verify: (key: SessionKey) => Promise<void>): Promise<ServerSession | undefined> {
    await this.inFlight.get(sid);
    const arriving = this.migrations?.incoming.get(sid);
    if (arriving) {
      const s = await arriving;
      if (s) {
        await verify(s.keyForResume);
        return s;
      }
    }
    const live = this.sessions.get(sid);
    if (live) {
      await verify(live.session.keyForResume);
      return live.session;
    }
    const metaEntry = await this.store.get(K.session(sid));
    if (!metaEntry) {
      const ended = await this.store.get(K.ended(sid));
      if (ended) {
        const e = unjson<{ code: CodeName; message: string }>(ended.value);
        throw new RoamError(e.code, e.message);
      }
      return undefined;
    }
    const meta = unjson<SessionMeta>(metaEntry.value);
    const c = await this.loadContinuation(K.session(sid));
    const sc = c.sessions[0];
    if (!sc) throw new RoamError('CONTINUATION_CORRUPT', 'session continuation holds no session');
    const key = await nodeSessionCrypto.importSessionKey(sc.sessionKey);
    await verify(key);
    // The client proved it holds the key. Everything below may change state.
    if (c.expiresAt < Date.now()) {
      await this.expire(sid, 'continuation expired');
      throw new RoamError('SESSION_EXPIRED', 'the session expired while suspended');
    }
    const session = await this.bringBack(meta, c, sc, key);
    for (const d of meta.dependents) {
      await this.restoreDependent(d).catch((err: unknown) =>
        this.log.warn({ session: d, err: (err as Error).message }, 'dependent not restored'),
      );
    }
    return session;
  }

  private async restoreDependent(sid: string): Promise<void> {
    if (this.sessions.has(sid)) return;
    const m = await this.store.get(K.session(sid));
    if (!m) return;
    const meta = unjson<SessionMeta>(m.value);
    const c = await this.loadContinuation(K.session(sid));
    const sc = c.sessions[0];
    if (!sc) return;
    await this.bringBack(meta, c, sc, await nodeSessionCrypto.importSessionKey(sc.sessionKey));
  }

  private async loadContinuation(name: string): Promise<Continuation> {
    const blob = await this.store.getBlob(name);
    if (!blob) throw new RoamError('CONTINUATION_CORRUPT', `continuation ${name} is missing its blob`);
    return decodeContinuation(blob);
  }

  private async bringBack(
    meta: SessionMeta,
    c: Continuation,
    sc: SessionContinuation,
    key: SessionKey,
  ): Promise<ServerSession> {
    const { worker, meta: svc } = this.worker(meta.service);
    if (!compatMatches(c.service.compat, svc.compat)) {
      // Kept in the Store: a host running a compatible version can still resume it.
      throw new RoamError(
        'INCOMPATIBLE',
        `continuation needs compat [${c.service.compat.join(', ')}], ${svc.name} ${svc.version} offers [${svc.compat.join(', ')}]`,
      );
    }
    const sid = toHex(sc.sessionId);
    await this.ensureInstance(meta.service, meta.inst, meta.key ?? undefined);
    const engine = this.server.restoreEngine(sc.transport);
    const session = new ServerSession(sc.sessionId, meta.service, meta.key ?? undefined, engine, key);
    const entry: SessionEntry = {
      session,
      service: meta.service,
      inst: meta.inst,
      key: meta.key ?? undefined,
      dependsOn: new Set(),
      restoring: true,
    };
    this.sessions.set(sid, entry);
    for (const on of sc.dependsOn) this.addDependency(sid, on);
    this.wire(entry);
    const snapshot: SessionSnapshot = { state: sc.state, exported: sc.exported, dependsOn: sc.dependsOn };
    const how: ResumeHow = 'restored';
    await worker.request({ op: 'restoreSession', inst: meta.inst, sid, snapshot, how });
    this.instanceEntry(meta.inst, meta.service, meta.key ?? undefined).members.add(sid);
    this.server.adopt(session);
    // The consumed continuation is deleted off the resume's critical path (two fsyncs). A later
    // suspension of this session waits for the deletion first, so it can never erase newer data.
    this.cleanupLater(K.session(sid));
    this.counters.restored++;
    this.emit('restored', { session: sid, instance: meta.inst });
    return session;
  }

  /** Makes sure the instance runs: from its complete continuation if it has one, else fresh. */
  private async ensureInstance(service: string, inst: string, key: string | undefined): Promise<void> {
    await this.inFlight.get(`instance:${inst}`);
    if (this.instances.has(inst)) return;
    const { worker, meta } = this.worker(service);
    const name = K.instance(service, inst);
    const stored = await this.store.get(name);
    let snapshot: InstanceSnapshot = { state: [], timers: [] };
    if (stored) {
      const c = await this.loadContinuation(name);
      if (!compatMatches(c.service.compat, meta.compat)) {
        throw new RoamError('INCOMPATIBLE', `instance continuation needs compat [${c.service.compat.join(', ')}]`);
      }
      snapshot = { state: c.instanceState, timers: c.timers };
    }
    await worker.request({ op: 'restoreInstance', inst, key, snapshot });
    this.instanceEntry(inst, service, key);
    if (stored) {
      this.cleanupLater(name);
      this.counters.instancesRestored++;
    }
  }

  private cleanupLater(name: string): void {
    const prev = this.cleanups.get(name) ?? Promise.resolve();
    const next = prev
      // The Store may be synchronous (SQLite): yield first so the RESUMED frame goes out before the fsyncs.
      .then(() => new Promise<void>((r) => setImmediate(r)))
      .then(async () => {
        await this.store.delete(name);
        await this.store.deleteBlob(name);
      })
      .catch((err: unknown) => this.log.warn({ name, err: (err as Error).message }, 'continuation cleanup failed'))
      .finally(() => {
        if (this.cleanups.get(name) === next) this.cleanups.delete(name);
      });
    this.cleanups.set(name, next);
  }

  private async expire(sid: string, message: string): Promise<void> {
    await this.store.put(K.ended(sid), json({ code: 'SESSION_EXPIRED', message, at: Date.now() }));
    await this.store.delete(K.session(sid));
    await this.store.deleteBlob(K.session(sid));
  }

  /** Deletes expired continuations (leaving a short record so a late client learns `expired`). */
  async collectGarbage(now = Date.now()): Promise<number> {
    let n = 0;
    for (const e of await this.store.list('roam.session.')) {
      const m = unjson<SessionMeta>(e.value);
      if (m.expiresAt < now) {
        await this.expire(e.key.slice('roam.session.'.length), 'continuation expired and was collected');
        n++;
      }
    }
    for (const e of await this.store.list('roam.instance.')) {
      const m = unjson<{ expiresAt: number }>(e.value);
      if (m.expiresAt < now) {
        await this.store.delete(e.key);
        await this.store.deleteBlob(e.key);
        n++;
      }
    }
    for (const e of await this.store.list('roam.ended.')) {
      if (unjson<{ at: number }>(e.value).at + this.endedTtlMs < now) await this.store.delete(e.key);
    }
    this.counters.collected += n;
    return n;
  }

  /** Live sessions with their instance and state, for the admin API and tools. */
  describeSessions(): Array<{
    session: string;
    service: string;
    instance: string;
    state: string;
    remote: string | undefined;
  }> {
    return [...this.sessions.values()].map((e) => ({
      session: e.session.id,
      service: e.service,
      instance: e.inst,
      state: e.session.state,
      remote: e.session.remoteAddress,
    }));
  }

  /** Where a session is: `live` in memory, `suspended` in the Store, or unknown. */
  async whereIs(sid: string): Promise<'live' | 'suspended' | 'unknown'> {
    if (this.sessions.has(sid)) return 'live';
    return (await this.store.get(K.session(sid))) ? 'suspended' : 'unknown';
  }

  /**
   * Stops the host without losing anything: every session and instance is suspended to the Store
   * (clients see their transport drop and resume when a host is back), then listeners close.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.gcTimer) clearInterval(this.gcTimer);
    this.fenceWatch.abort();
    // Stubs of moved sessions must not send CLOSE to clients that now live elsewhere.
    this.migrations?.close();
    for (const sid of [...this.sessions.keys()]) {
      await this.suspendSession(sid).catch((err: unknown) =>
        this.log.error({ session: sid, err: (err as Error).message }, 'suspend on close failed'),
      );
    }
    for (const inst of [...this.instances.keys()]) {
      await this.suspendInstance(inst).catch((err: unknown) =>
        this.log.error({ instance: inst, err: (err as Error).message }, 'instance suspend on close failed'),
      );
    }
    await Promise.all(this.cleanups.values());
    await this.member?.leave();
    await this.peer?.close();
    await this.server.close();
    await this.stopWorkers();
  }

  private async stopWorkers(): Promise<void> {
    await Promise.all([...this.workers.values()].map((w) => w.worker.terminate()));
    this.workers.clear();
  }
}
