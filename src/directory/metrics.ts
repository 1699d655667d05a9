import type { IncomingMessage, ServerResponse } from 'node:http';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { ClusterEvent, HostStatus, MigrationRecord } from '../transport/cluster.js';

/**
 * The directory's Prometheus metrics (`roam_directory_*`), on a `prom-client` {@link Registry}
 * the directory owns (never the global default registry). The host table and the SSE readers are
 * read when scraped; registrations are counted by the directory; leaves, purges and migrations
 * are counted from the cluster events it publishes (the migration records hosts push).
 * docs/observability.md lists every metric.
 *
 * @module
 */

export interface DirectoryMetricsOptions {
  /**
   * Also register prom-client's default process metrics (`process_*`, `nodejs_*`). Default true.
   * They start a GC observer and an event-loop-delay monitor that live as long as the process.
   */
  process?: boolean;
}

/** What the metrics read from the directory when scraped. */
export interface DirectoryMetricsSources {
  hosts(): Iterable<{ status: HostStatus }>;
  /** Open SSE readers of `/api/events`. */
  streams(): number;
}

/** The directory's event emitter, as far as the metrics listen to it. */
export interface DirectoryEventSource {
  on(event: 'event', fn: (e: ClusterEvent) => void): unknown;
}

/** Buckets (seconds) for client gaps: 1 ms to 1 s in 1-2.5-5 steps, plus slow tails. */
const GAP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Buckets (seconds) for API requests: local reads take well under 1 ms, migrations seconds. */
const REQUEST_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 120];
const HOST_STATUSES: HostStatus[] = ['up', 'suspect', 'leaving'];
/** Migration ids remembered to count each migration once (hosts report a committed one twice). */
const REMEMBERED = 4096;

/** A set that forgets its oldest members past `max`. */
class RecentSet {
  private readonly items = new Set<string>();
  constructor(private readonly max: number) {}
  /** Adds `k`; false when it was already there. */
  add(k: string): boolean {
    if (this.items.has(k)) return false;
    this.items.add(k);
    if (this.items.size > this.max) this.items.delete(this.items.values().next().value as string);
    return true;
  }
}

export class DirectoryMetrics {
  /** This directory's registry. */
  readonly registry = new Registry();
  private readonly registrations: Counter;
  private readonly requests: Counter<'route' | 'status'>;
  private readonly latency: Histogram<'route'>;

  constructor(opts: DirectoryMetricsOptions = {}) {
    const registers = [this.registry];
    this.registrations = new Counter({
      name: 'roam_directory_host_registrations_total',
      help: 'Signed host registrations accepted (a host registering again after a purge counts again).',
      registers,
    });
    this.requests = new Counter({
      name: 'roam_directory_requests_total',
      help: 'HTTP requests answered, by route ("METHOD /path"; "other" for unknown paths) and status code.',
      labelNames: ['route', 'status'],
      registers,
    });
    this.latency = new Histogram({
      name: 'roam_directory_request_duration_seconds',
      help: 'Time to answer an HTTP request, by route (event streams excluded: they last as long as the reader).',
      labelNames: ['route'],
      buckets: REQUEST_BUCKETS,
      registers,
    });
    if (opts.process ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Registers the scrape-time gauges and the event-driven counters. */
  attach(events: DirectoryEventSource, sources: DirectoryMetricsSources): void {
    const registers = [this.registry];
    new Gauge({
      name: 'roam_directory_hosts',
      help: 'Hosts in the host table, by status (up, suspect: silent past suspectAfterMs, leaving: draining).',
      labelNames: ['status'],
      registers,
      collect() {
        const n = new Map<string, number>(HOST_STATUSES.map((s) => [s, 0]));
        for (const h of sources.hosts()) n.set(h.status, (n.get(h.status) ?? 0) + 1);
        this.reset();
        for (const [status, v] of n) this.set({ status }, v);
      },
    });
    new Gauge({
      name: 'roam_directory_event_streams',
      help: 'Open Server-Sent Events readers of /api/events.',
      registers,
      collect() {
        this.set(sources.streams());
      },
    });
    const left = new Counter({
      name: 'roam_directory_hosts_left_total',
      help: 'Hosts removed from the table, by reason (leave: graceful; purged: silent past purgeAfterMs).',
      labelNames: ['reason'],
      registers,
    });
    const migrations = new Counter({
      name: 'roam_directory_migrations_total',
      help: 'Migrations reported by hosts, by outcome (committed, aborted, refused) and reason.',
      labelNames: ['outcome', 'reason'],
      registers,
    });
    const gap = new Histogram({
      name: 'roam_directory_migration_client_gap_seconds',
      help: 'Longest client gap of each committed migration with attached clients, as hosts report it.',
      buckets: GAP_BUCKETS,
      registers,
    });
    for (const reason of ['leave', 'purged']) left.inc({ reason }, 0);
    const counted = new RecentSet(REMEMBERED);
    const gapped = new RecentSet(REMEMBERED);
    events.on('event', (e) => {
      if (e.type === 'host.left') left.inc({ reason: e.reason });
      else if (e.type === 'migration') {
        const m: MigrationRecord = e.migration;
        if (counted.add(m.id)) migrations.inc({ outcome: m.outcome, reason: m.reason });
        const g = m.phases.clientGapMs;
        if (g !== undefined && gapped.add(m.id)) gap.observe(g / 1000);
      }
    });
  }

  /** A host registered. */
  registered(): void {
    this.registrations.inc();
  }

  /**
   * Counts and times one request once its response is done. `known` says whether "METHOD /path"
   * is a route of the API; unknown ones are labelled `other` so a scanner cannot grow the series.
   */
  track(req: IncomingMessage, res: ServerResponse, known: (route: string) => boolean): void {
    const start = process.hrtime.bigint();
    let done = false;
    const end = (): void => {
      if (done) return;
      done = true;
      const path = (req.url ?? '/').split('?')[0] ?? '/';
      const key = `${req.method ?? 'GET'} ${path}`;
      const route = known(key) ? key : 'other';
      this.requests.inc({ route, status: String(res.statusCode) });
      if (!String(res.getHeader('content-type') ?? '').startsWith('text/event-stream')) {
        this.latency.observe({ route }, Number(process.hrtime.bigint() - start) / 1e9);
      }
    };
    res.once('finish', end);
    res.once('close', end);
  }

  /** Answers an HTTP request with the registry in the Prometheus text format. */
  async serve(res: ServerResponse): Promise<void> {
    const body = await this.registry.metrics();
    res.writeHead(200, { 'content-type': this.registry.contentType }).end(body);
  }
}
