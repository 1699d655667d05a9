import type { Clock, TimerHandle } from '../session/index.js';
import { clusterFetch, type HostRecord, keyedInstanceId } from '../transport/cluster.js';
import { RoamError } from '../wire/index.js';

/** A host as the gateway routes to it: where clients reach it, and where members open links to it. */
export interface GatewayHost {
  id: string;
  /** The host's client endpoint; a MOVE names its destination by this URL. */
  clientUrl: string;
  /** The host's peer endpoint (http://), where the gateway opens splice links. */
  peerUrl: string;
  /** Services HELLOs may be routed here for. Absent: any (the host refuses what it lacks). */
  services?: string[];
}

/** The structured logger the gateway writes to (pino's interface fits). */
export interface GatewayLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

interface Entry extends GatewayHost {
  /** Listed by the directory (load from its metrics) or static (load = this gateway's splices). */
  fromDirectory: boolean;
  status: 'up' | 'suspect' | 'leaving';
  capacity: number;
  /** Sessions the host reported at the last refresh (0 for a static table). */
  reported: number;
  /** HELLOs this gateway routed here since that report. */
  routed: number;
}

export type RoutedHost = Entry;

/** Where a RESUME goes, and whether the answer came from the gateway's own memory. */
export interface SessionRoute {
  host: RoutedHost;
  fromCache: boolean;
}

export interface HostTableOptions {
  hosts?: GatewayHost[] | undefined;
  directory?: string | undefined;
  secret: Uint8Array;
  clock: Clock;
  log: GatewayLogger;
  /** Directory host table refresh period. Default 3 s. */
  refreshMs?: number | undefined;
  /** On-demand refreshes (unknown MOVE destination, unknown host id) at most this often. Default 500 ms. */
  minRefreshGapMs?: number | undefined;
  /** Session → host and instance → host entries kept at most (oldest dropped first). Default 100,000. */
  maxCacheEntries?: number | undefined;
  fetchTimeoutMs?: number | undefined;
}

/** Compares client URLs the way a MOVE and a host record may spell them differently (trailing '/', case). */
export function normalizeUrl(u: string): string {
  try {
    const x = new URL(u);
    return `${x.protocol}//${x.host}${x.pathname === '/' ? '' : x.pathname}`.toLowerCase();
  } catch {
    return u;
  }
}

/**
 * The gateway's routing knowledge: the host table (static, or the directory's, refreshed every
 * few seconds and on demand), which host holds which session (learned from WELCOME and MOVE
 * frames the gateway relays, else asked of the directory), and which host runs which keyed
 * instance. Every cache is bounded.
 */
export class HostTable {
  private hosts = new Map<string, Entry>();
  private readonly sessions = new Map<string, string>();
  private readonly instances = new Map<string, string>();
  /** Splices open (or being opened) per host id through this gateway. */
  private readonly live = new Map<string, number>();
  private dirInstances: { at: number; map: Map<string, string> } | undefined;
  private refreshing: Promise<void> | undefined;
  private lastRefreshAt = Number.NEGATIVE_INFINITY;
  /** Loads begun and finished; one runs at a time, so load n is done once `loadsDone >= n`. */
  private loadsStarted = 0;
  private loadsDone = 0;
  /** Lookups waiting for the next on-demand load: their timers, to end at close. */
  private readonly waits = new Map<TimerHandle, () => void>();
  private timer: TimerHandle | undefined;
  private closed = false;
  private readonly refreshMs: number;
  private readonly minRefreshGapMs: number;
  private readonly maxCache: number;
  private readonly fetchTimeoutMs: number;

  constructor(private readonly opts: HostTableOptions) {
    this.refreshMs = opts.refreshMs ?? 3000;
    this.minRefreshGapMs = opts.minRefreshGapMs ?? 500;
    this.maxCache = opts.maxCacheEntries ?? 100_000;
    this.fetchTimeoutMs = opts.fetchTimeoutMs ?? 5000;
    if (!opts.hosts && !opts.directory) {
      throw new RoamError('INVALID_ARGUMENT', 'a gateway needs a directory URL or a static host table');
    }
    for (const h of opts.hosts ?? []) this.hosts.set(h.id, staticEntry(h));
  }

  /** Loads the directory's table once (a failure is logged: routing waits for the next refresh). */
  async start(): Promise<void> {
    if (!this.opts.directory) return;
    await this.refresh();
    this.schedule();
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) this.opts.clock.clearTimeout(this.timer);
    this.timer = undefined;
    // Lookups waiting out the refresh gap end now (and find nothing new) instead of holding timers.
    for (const [timer, resolve] of this.waits) {
      this.opts.clock.clearTimeout(timer);
      resolve();
    }
    this.waits.clear();
  }

  get size(): number {
    return this.hosts.size;
  }

  all(): RoutedHost[] {
    return [...this.hosts.values()];
  }

  byId(id: string): RoutedHost | undefined {
    return this.hosts.get(id);
  }

  /** The host whose client URL is `url`; refreshes the directory table once on a miss. */
  async byClientUrl(url: string): Promise<RoutedHost | undefined> {
    const find = (): Entry | undefined => {
      const want = normalizeUrl(url);
      for (const h of this.hosts.values()) if (normalizeUrl(h.clientUrl) === want) return h;
      return undefined;
    };
    const h = find();
    if (h || !this.opts.directory) return h;
    await this.refreshAfterNow();
    return find();
  }

  /**
   * Where a HELLO goes: for a keyed instance, the host already running it (gateway memory, then
   * the directory); otherwise the least-loaded up host offering the service. Load is the
   * directory's `metrics.sessions` plus the HELLOs this gateway routed there since, over
   * `capacity`; for a static host, this gateway's open splices. Ties go to the first in the table.
   */
  async pickForHello(service: string, key: string | undefined): Promise<RoutedHost | undefined> {
    const offers = (h: Entry): boolean => h.status === 'up' && (!h.services || h.services.includes(service));
    if (key !== undefined) {
      const inst = keyedInstanceId(key);
      const known = this.instances.get(inst) ?? (await this.directoryInstanceHost(inst));
      const h = known === undefined ? undefined : this.hosts.get(known);
      if (h && offers(h)) return h;
    }
    let best: Entry | undefined;
    let bestLoad = Number.POSITIVE_INFINITY;
    for (const h of this.hosts.values()) {
      if (!offers(h)) continue;
      const load = h.fromDirectory ? (h.reported + h.routed) / Math.max(1, h.capacity) : (this.live.get(h.id) ?? 0);
      if (load < bestLoad) {
        best = h;
        bestLoad = load;
      }
    }
    if (best) best.routed++;
    return best;
  }

  /** True when some host offers `service` (to tell UNKNOWN_SERVICE from "nothing up right now"). */
  anyOffers(service: string): boolean {
    for (const h of this.hosts.values()) if (!h.services || h.services.includes(service)) return true;
    return false;
  }

  /** Where a RESUME goes: the gateway's cache, else the directory. Undefined: nobody knows the session. */
  async sessionHost(sid: string): Promise<SessionRoute | undefined> {
    const cached = this.sessions.get(sid);
    const h = cached === undefined ? undefined : this.hosts.get(cached);
    if (h) return { host: h, fromCache: true };
    if (!this.opts.directory) return undefined;
    const res = await this.fetch<{ sessions?: Array<{ host?: unknown }>; unreachable?: unknown }>(
      `/api/sessions?id=${sid}`,
    );
    const hostId = res.sessions?.find((s) => typeof s.host === 'string')?.host as string | undefined;
    if (hostId === undefined) {
      // A host the directory could not ask may hold it (one that just died, its sessions on their
      // way to a destination): that is no proof the session is gone, so the client retries.
      if (Array.isArray(res.unreachable) && res.unreachable.length > 0) {
        throw new RoamError('UNAVAILABLE', `session not found, ${res.unreachable.length} host(s) did not answer`);
      }
      return undefined;
    }
    let found = this.hosts.get(hostId);
    if (!found) {
      // A host that registered after our last load (a migration's destination, typically).
      await this.refreshAfterNow();
      found = this.hosts.get(hostId);
    }
    if (!found) throw new RoamError('UNAVAILABLE', `session is on host ${hostId}, not in the gateway's table yet`);
    this.rememberSession(sid, found.id);
    return { host: found, fromCache: false };
  }

  /** Counts a splice to `hostId` (from routing until it ends or moves). */
  acquire(hostId: string): void {
    this.live.set(hostId, (this.live.get(hostId) ?? 0) + 1);
  }

  release(hostId: string): void {
    const n = (this.live.get(hostId) ?? 0) - 1;
    if (n > 0) this.live.set(hostId, n);
    else this.live.delete(hostId);
  }

  /** Open splices per host id. */
  liveSplices(): Record<string, number> {
    return Object.fromEntries(this.live);
  }

  rememberSession(sid: string, hostId: string): void {
    remember(this.sessions, sid, hostId, this.maxCache);
  }

  forgetSession(sid: string): void {
    this.sessions.delete(sid);
  }

  rememberInstance(instance: string, hostId: string): void {
    remember(this.instances, instance, hostId, this.maxCache);
  }

  /**
   * Resolves once a load of the directory's table that began after this call has finished: a load
   * already running may predate what the caller is looking for. On-demand loads still start at
   * most once per `minRefreshGapMs`: a caller waits out the gap rather than being skipped.
   */
  async refreshAfterNow(): Promise<void> {
    if (!this.opts.directory) return;
    const want = this.loadsStarted + 1;
    while (!this.closed && this.loadsDone < want) {
      if (this.refreshing) {
        await this.refreshing;
        continue;
      }
      const wait = this.lastRefreshAt + this.minRefreshGapMs - this.opts.clock.now();
      if (wait > 0) {
        await new Promise<void>((resolve) => {
          const timer = this.opts.clock.setTimeout(() => {
            this.waits.delete(timer);
            resolve();
          }, wait);
          this.waits.set(timer, resolve);
        });
        continue;
      }
      await this.refresh();
    }
  }

  /** Reloads the directory's host table; concurrent calls share one request. */
  private refresh(): Promise<void> {
    if (!this.opts.directory) return Promise.resolve();
    if (this.refreshing) return this.refreshing;
    this.refreshing = this.load().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  private async load(): Promise<void> {
    this.lastRefreshAt = this.opts.clock.now();
    this.loadsStarted++;
    try {
      const res = await this.fetch<{ hosts?: HostRecord[] } | HostRecord[]>('/api/hosts');
      const list = Array.isArray(res) ? res : (res.hosts ?? []);
      const next = new Map<string, Entry>();
      for (const r of list) {
        if (!r || typeof r.id !== 'string' || typeof r.clientUrl !== 'string' || typeof r.peerUrl !== 'string')
          continue;
        next.set(r.id, {
          fromDirectory: true,
          id: r.id,
          clientUrl: r.clientUrl,
          peerUrl: r.peerUrl,
          services: Array.isArray(r.services) ? r.services.map((s) => s.name) : [],
          status: r.status ?? 'up',
          capacity: typeof r.capacity === 'number' && r.capacity > 0 ? r.capacity : 1,
          reported: r.metrics?.sessions ?? 0,
          routed: 0,
        });
      }
      // Static entries stay, for hosts the directory does not list (small setups, tests).
      for (const h of this.opts.hosts ?? [])
        if (!next.has(h.id)) next.set(h.id, this.hosts.get(h.id) ?? staticEntry(h));
      this.hosts = next;
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'gateway: directory host table refresh failed');
    } finally {
      this.loadsDone++;
    }
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = this.opts.clock.setTimeout(() => {
      this.timer = undefined;
      void this.refresh().finally(() => this.schedule());
    }, this.refreshMs);
  }

  /** The directory's instance → host table, fetched at most once per refresh period. */
  private async directoryInstanceHost(instance: string): Promise<string | undefined> {
    if (!this.opts.directory) return undefined;
    const now = this.opts.clock.now();
    if (!this.dirInstances || now - this.dirInstances.at > this.refreshMs) {
      try {
        const res = await this.fetch<{ instances?: Array<{ instance?: unknown; host?: unknown }> }>('/api/instances');
        const map = new Map<string, string>();
        for (const r of res.instances ?? []) {
          if (typeof r.instance === 'string' && typeof r.host === 'string' && map.size < this.maxCache) {
            map.set(r.instance, r.host);
          }
        }
        this.dirInstances = { at: now, map };
      } catch (err) {
        this.opts.log.warn({ err: (err as Error).message }, 'gateway: directory instance lookup failed');
        return undefined;
      }
    }
    return this.dirInstances.map.get(instance);
  }

  private fetch<T>(path: string): Promise<T> {
    return clusterFetch<T>(this.opts.directory as string, path, {
      secret: this.opts.secret,
      timeoutMs: this.fetchTimeoutMs,
    });
  }
}

function staticEntry(h: GatewayHost): Entry {
  return {
    fromDirectory: false,
    id: h.id,
    clientUrl: h.clientUrl,
    peerUrl: h.peerUrl,
    ...(h.services ? { services: [...h.services] } : {}),
    status: 'up',
    capacity: 1,
    reported: 0,
    routed: 0,
  };
}

function remember(map: Map<string, string>, k: string, v: string, max: number): void {
  map.delete(k);
  map.set(k, v);
  // Insertion order is age order: drop the oldest beyond the bound.
  while (map.size > max) {
    const oldest = map.keys().next().value as string;
    map.delete(oldest);
  }
}
