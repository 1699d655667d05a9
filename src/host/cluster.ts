import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { ServiceMeta } from '../service/protocol.js';
import type { Store } from '../store/index.js';
import {
  type ClusterEvent,
  ClusterKeys,
  clusterFetch,
  type DrainStatus,
  decodeJson,
  encodeJson,
  type HostedService,
  type HostIdentity,
  type HostMetrics,
  type HostRecord,
  type HostStatus,
  signWithIdentity,
} from '../transport/cluster.js';
import { RoamError } from '../wire/index.js';
import type { Logger } from './logger.js';
import type { MigrationOptions } from './migration.js';

/** How a host joins a cluster. */
export interface ClusterOptions {
  /** The cluster secret every member holds (see src/transport/cluster.ts for the threat model). */
  secret: Uint8Array;
  /** Directory base URL (http://…). Without it the host still migrates, using the Store's host table. */
  directory?: string;
  /** This host's Ed25519 identity; a fresh one when omitted. */
  identity: HostIdentity;
  /** Sessions this host accepts at most; placement prefers hosts far from theirs. Default 100,000. */
  capacity?: number;
  /** Where the peer endpoint listens (`host:port`). Default 127.0.0.1:0. */
  peerListen?: string;
  /** Peer URL others should use, when it differs from the listening one (NAT, a link emulator). */
  advertisePeerUrl?: string;
  /** Client URL to advertise; default the first `listen()`ed URL. */
  advertiseClientUrl?: string;
  /** Heartbeat period. Default 1 s. */
  heartbeatMs?: number;
  migration?: MigrationOptions;
}

/** What the membership code reads from its host. */
export interface MemberHost {
  readonly id: string;
  readonly store: Store;
  readonly log: Logger;
  labels(): Record<string, string>;
  services(): HostedService[];
  counts(): { instances: number; sessions: number };
  /** Client bytes moved since the last call. */
  takeBytes(): number;
}

const MAX_QUEUED_EVENTS = 10_000;
/** How long an event waits for others to share its request to the directory. */
const EVENT_BATCH_MS = 25;

/**
 * A host's membership: registration with the directory (signed with its identity), heartbeats with
 * load, graceful leave, and events pushed to the directory (queued while it is unreachable, so a
 * directory restart in the middle of a drain loses no migration record).
 */
export class ClusterMember {
  status: HostStatus = 'up';
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private readonly queue: ClusterEvent[] = [];
  private readonly loop = monitorEventLoopDelay({ resolution: 10 });
  private lastCpu = process.cpuUsage();
  private lastAt = performance.now();
  private registered = false;
  private stopped = false;
  clientUrl = '';
  peerUrl = '';

  constructor(
    private readonly host: MemberHost,
    readonly opts: ClusterOptions,
  ) {
    this.loop.enable();
  }

  /** The period we were given, else the one the directory asked for at registration, else 1 s. */
  get heartbeatMs(): number {
    return this.opts.heartbeatMs ?? this.directoryHeartbeatMs ?? 1000;
  }
  private directoryHeartbeatMs: number | undefined;

  /** The record this host registers. */
  record(): Omit<HostRecord, 'status' | 'registeredAt' | 'lastSeenAt'> {
    return {
      id: this.host.id,
      publicKey: this.opts.identity.publicKey,
      clientUrl: this.clientUrl,
      peerUrl: this.peerUrl,
      labels: this.host.labels(),
      capacity: this.opts.capacity ?? 100_000,
      services: this.host.services(),
      nodeMajor: Number(process.versions.node.split('.')[0]),
      metrics: this.metrics(),
    };
  }

  metrics(): HostMetrics {
    const now = performance.now();
    const cpu = process.cpuUsage(this.lastCpu);
    const dt = Math.max(1, now - this.lastAt);
    this.lastCpu = process.cpuUsage();
    this.lastAt = now;
    const { instances, sessions } = this.host.counts();
    const m: HostMetrics = {
      cpu: (cpu.user + cpu.system) / 1000 / dt,
      loopDelayP99Ms: this.loop.percentile(99) / 1e6,
      rssBytes: process.memoryUsage.rss(),
      instances,
      sessions,
      bytesPerS: (this.host.takeBytes() * 1000) / dt,
    };
    this.loop.reset();
    return m;
  }

  /** Registers (when a directory is configured) and starts heartbeats. */
  async start(): Promise<void> {
    if (!this.opts.directory) {
      // No directory: keep our own row in the Store's host table so peers can place instances here.
      await this.writeOwnRecord();
      this.timer = setInterval(() => {
        this.writeOwnRecord().catch((err: unknown) =>
          this.host.log.warn({ err: (err as Error).message }, 'host table update failed'),
        );
      }, this.heartbeatMs * 5);
      this.timer.unref();
      return;
    }
    await this.register();
    this.timer = setInterval(() => {
      this.beat().catch((err: unknown) =>
        this.host.log.warn({ err: (err as Error).message }, 'heartbeat to the directory failed'),
      );
    }, this.heartbeatMs);
    this.timer.unref();
  }

  private async writeOwnRecord(): Promise<void> {
    if (this.stopped) return;
    const now = Date.now();
    const rec: HostRecord = { ...this.record(), status: this.status, registeredAt: now, lastSeenAt: now };
    await this.host.store.put(ClusterKeys.host(this.host.id), encodeJson(rec));
  }

  private async register(): Promise<void> {
    const directory = this.opts.directory;
    if (!directory) return;
    const record = this.record();
    const signature = signWithIdentity(this.opts.identity, new TextEncoder().encode(JSON.stringify(record)));
    const reply = await clusterFetch<{ heartbeatMs?: unknown }>(directory, '/cluster/register', {
      body: { record, signature },
      secret: this.opts.secret,
    });
    this.registered = true;
    const ms = reply?.heartbeatMs;
    // The directory judges silence by its own period: beat at that pace unless told otherwise.
    if (typeof ms === 'number' && Number.isFinite(ms) && ms >= 50 && ms <= 60_000) this.directoryHeartbeatMs = ms;
  }

  private async beat(): Promise<void> {
    const directory = this.opts.directory;
    if (!directory || this.stopped) return;
    try {
      if (!this.registered) await this.register();
      await clusterFetch(directory, '/cluster/heartbeat', {
        body: { host: this.host.id, metrics: this.metrics(), status: this.status },
        secret: this.opts.secret,
        timeoutMs: 5000,
      });
    } catch (err) {
      // A directory that restarted from a Store that lost us, or purged us: register again.
      if ((err as RoamError).code === 'NOT_FOUND') this.registered = false;
      else throw err;
    }
    void this.flush();
  }

  /** Announces a status change (leaving) at once instead of at the next heartbeat. */
  async setStatus(status: HostStatus): Promise<void> {
    this.status = status;
    if (!this.opts.directory) {
      await this.writeOwnRecord().catch(() => {});
      return;
    }
    await this.beat().catch(() => {});
  }

  /** Queues an event for the directory (dropping the oldest past 10,000). */
  emit(ev: ClusterEvent): void {
    if (!this.opts.directory) return;
    this.queue.push(ev);
    if (this.queue.length > MAX_QUEUED_EVENTS) this.queue.shift();
    // Events come in bursts (a migration's phases, a drain's batches). One request per burst, sent
    // a little later, keeps an HTTP request off the host's thread in the middle of a freeze.
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      void this.flush();
    }, EVENT_BATCH_MS);
    this.flushTimer.unref();
  }

  /** Sends queued events; on failure they stay queued for the next heartbeat. */
  flush(): Promise<void> {
    const directory = this.opts.directory;
    if (!directory || this.queue.length === 0) return Promise.resolve();
    this.flushing ??= (async () => {
      try {
        while (this.queue.length > 0) {
          const events = this.queue.slice(0, 500);
          try {
            await clusterFetch(directory, '/cluster/events', { body: { events }, secret: this.opts.secret });
          } catch (err) {
            // Refused as malformed: resending the same batch can never succeed, so drop it.
            if ((err as RoamError).code !== 'INVALID_ARGUMENT') throw err;
            this.host.log.error({ err: (err as Error).message, dropped: events.length }, 'directory refused events');
          }
          this.queue.splice(0, events.length);
        }
      } catch (err) {
        this.host.log.debug(
          { err: (err as Error).message, queued: this.queue.length },
          'events wait for the directory',
        );
      } finally {
        this.flushing = undefined;
      }
    })();
    return this.flushing;
  }

  /** The host table, from the Store the directory keeps it in (works while the directory is down). */
  async hosts(): Promise<HostRecord[]> {
    return (await this.host.store.list(ClusterKeys.hostPrefix)).map((e) => decodeJson<HostRecord>(e.value));
  }

  /**
   * Picks where an instance of `meta` can go: a named host, or the least loaded up host (other
   * than this one) that offers the service with the same compat tags and meets its requirements
   * and the wanted labels. `planned` counts sessions already sent to each host during a drain,
   * since heartbeats lag.
   */
  async pickDestination(
    meta: ServiceMeta,
    want: { host?: string; labels?: Record<string, string> } = {},
    planned: Map<string, number> = new Map(),
  ): Promise<HostRecord> {
    return this.pickFrom(await this.hosts(), meta, want, planned);
  }

  /**
   * {@link pickDestination} over a host table already read. Synchronous, so concurrent drain
   * batches that update `planned` right after picking see each other's choices.
   */
  pickFrom(
    all: HostRecord[],
    meta: ServiceMeta,
    want: { host?: string; labels?: Record<string, string> } = {},
    planned: Map<string, number> = new Map(),
  ): HostRecord {
    if (want.host) {
      const h = all.find((x) => x.id === want.host);
      if (!h) throw new RoamError('NOT_FOUND', `no host ${want.host} in the cluster`);
      return h;
    }
    const fits = all.filter((h) => {
      if (h.id === this.host.id || h.status !== 'up') return false;
      const svc = h.services.find((s) => s.name === meta.name);
      if (!svc || svc.compat.length !== meta.compat.length || !meta.compat.every((c) => svc.compat.includes(c))) {
        return false;
      }
      if (meta.requires.nodeMajor !== undefined && h.nodeMajor < meta.requires.nodeMajor) return false;
      for (const [k, v] of Object.entries({ ...meta.requires.labels, ...want.labels })) {
        if (h.labels[k] !== v) return false;
      }
      return true;
    });
    if (fits.length === 0) {
      throw new RoamError(
        'NO_DESTINATION',
        `no other up host offers ${meta.name} [${meta.compat.join(', ')}]${want.labels ? ` with labels ${JSON.stringify(want.labels)}` : ''}`,
      );
    }
    const load = (h: HostRecord) => (h.metrics.sessions + (planned.get(h.id) ?? 0)) / Math.max(1, h.capacity);
    return fits.reduce((a, b) => (load(b) < load(a) ? b : a));
  }

  async leave(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.loop.disable();
    const directory = this.opts.directory;
    if (!directory) {
      await this.host.store.delete(ClusterKeys.host(this.host.id)).catch(() => {});
      return;
    }
    await this.flush();
    await clusterFetch(directory, '/cluster/leave', {
      body: { host: this.host.id },
      secret: this.opts.secret,
      timeoutMs: 3000,
    }).catch((err: unknown) => this.host.log.warn({ err: (err as Error).message }, 'leave not acknowledged'));
  }
}

/** A drain's running status, with the remaining-time estimate the CLI shows. */
export function drainStatus(d: DrainStatus, now = Date.now()): DrainStatus {
  const done = d.moved + d.failed;
  const elapsedS = (now - d.startedAt) / 1000;
  const etaS = done > 0 && d.state === 'running' ? ((d.total - done) * elapsedS) / done : undefined;
  return { ...d, etaS };
}
