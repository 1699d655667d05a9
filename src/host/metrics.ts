import type { ServerResponse } from 'node:http';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { CasOp, Store, StoreEntry, StoreEvent, WatchOptions } from '../store/index.js';
import type { DrainStatus, MigrationReason, MigrationRecord } from '../transport/cluster.js';
import type { HostEvents } from './host.js';
import type { IncomingMigration } from './migration.js';

/**
 * A host's Prometheus metrics (`roam_host_*`), on a `prom-client` {@link Registry} the host owns:
 * never the global default registry, so several hosts (and a directory) in one process each
 * report their own figures. Gauges are read from the host when scraped; counters of things the
 * host already counts (`host.counters`, `host.server.counters`) are too; migrations are counted
 * from the host's `migration` and `migrationIn` events. docs/observability.md lists every metric.
 *
 * @module
 */

export interface HostMetricsOptions {
  /**
   * Also register prom-client's default process metrics (`process_*`, `nodejs_*`: CPU, memory,
   * event loop lag, GC, handles) on the host's registry. Default true. prom-client starts a GC
   * observer and an event-loop-delay monitor for them that live as long as the process (they
   * keep no handle open); turn this off when one process starts many short-lived hosts.
   */
  process?: boolean;
}

/** What the metrics read from a host: its public surface plus two views of private tables. */
export interface MeteredHost {
  readonly id: string;
  readonly counters: {
    readonly suspended: number;
    readonly restored: number;
    readonly instancesSuspended: number;
    readonly instancesRestored: number;
    readonly collected: number;
    readonly fenced: number;
    readonly bytesIn: number;
    readonly bytesOut: number;
  };
  readonly server: {
    readonly counters: {
      readonly accepted: number;
      readonly hellos: number;
      readonly resumes: number;
      readonly refused: ReadonlyMap<string, number>;
    };
  };
  describeSessions(): Array<{ state: string }>;
  on<K extends keyof HostEvents>(event: K, fn: (...args: HostEvents[K]) => void): unknown;
}

/** Views of host tables the public API does not expose, read at scrape time. */
export interface HostMetricsSources {
  /** The loaded services (each gets an `instances` series, 0 when idle). */
  services(): Iterable<string>;
  /** Every instance in memory, with its service. */
  instances(): Iterable<{ service: string }>;
  /** Moved sessions kept as stubs to redirect late clients. */
  stubs(): number;
}

/** Buckets (seconds) for client gaps and freezes: 1 ms to 1 s in 1-2.5-5 steps, plus slow tails. */
export const GAP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Buckets (seconds) for Store calls: 50 µs (memory, page cache) to 1 s (a stalled fsync). */
export const STORE_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1];
/** Buckets for pre-copy rounds; the default cap is 30 rounds. */
const ROUND_BUCKETS = [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 30];

/** Migration reasons that may become a label value. */
const REASONS = new Set<string>(['operator', 'drain', 'shutdown', 'self', 'policy'] satisfies MigrationReason[]);

/** Store operation labels of `roam_host_store_op_duration_seconds`. */
export type StoreOp = 'get' | 'put' | 'cas' | 'casMany' | 'delete' | 'list' | 'blob';

export class HostMetrics {
  /** This host's registry; scrape it with {@link HostMetrics.scrape}. */
  readonly registry = new Registry();
  private readonly storeDuration: Histogram<'op'>;
  private readonly storeErrors: Counter<'op' | 'code'>;

  constructor(opts: HostMetricsOptions = {}) {
    const registers = [this.registry];
    this.storeDuration = new Histogram({
      name: 'roam_host_store_op_duration_seconds',
      help: 'Latency of Store calls made by this host, by operation (blob: putBlob, getBlob, deleteBlob).',
      labelNames: ['op'],
      buckets: STORE_BUCKETS,
      registers,
    });
    this.storeErrors = new Counter({
      name: 'roam_host_store_errors_total',
      help: 'Store calls that failed, by operation and error code (STORE_CONFLICT is a lost compare-and-set).',
      labelNames: ['op', 'code'],
      registers,
    });
    if (opts.process ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /**
   * Wraps `store` so every call is timed into `roam_host_store_op_duration_seconds`. Forwards
   * everything unchanged (results, errors, `watch` iterables); `watch` and `close` are not timed.
   */
  instrumentStore(store: Store): Store {
    const time = <T>(op: StoreOp, call: () => Promise<T>): Promise<T> => {
      const end = this.storeDuration.startTimer({ op });
      return call().then(
        (v) => {
          end();
          return v;
        },
        (err: unknown) => {
          end();
          const code = (err as { code?: unknown } | null)?.code;
          this.storeErrors.inc({ op, code: typeof code === 'string' ? code : 'UNKNOWN' });
          throw err;
        },
      );
    };
    return {
      get: (key: string): Promise<StoreEntry | undefined> => time('get', () => store.get(key)),
      put: (key: string, value: Uint8Array): Promise<number> => time('put', () => store.put(key, value)),
      compareAndSet: (key: string, rev: number, value: Uint8Array): Promise<number> =>
        time('cas', () => store.compareAndSet(key, rev, value)),
      compareAndSetMany: (ops: ReadonlyArray<CasOp>): Promise<number[]> =>
        time('casMany', () => store.compareAndSetMany(ops)),
      delete: (key: string, rev?: number): Promise<boolean> => time('delete', () => store.delete(key, rev)),
      list: (prefix: string): Promise<StoreEntry[]> => time('list', () => store.list(prefix)),
      watch: (prefix: string, o?: WatchOptions): AsyncIterable<StoreEvent> => store.watch(prefix, o),
      putBlob: (name: string, bytes: Uint8Array): Promise<void> => time('blob', () => store.putBlob(name, bytes)),
      getBlob: (name: string): Promise<Uint8Array | undefined> => time('blob', () => store.getBlob(name)),
      deleteBlob: (name: string): Promise<boolean> => time('blob', () => store.deleteBlob(name)),
      close: (): Promise<void> => store.close(),
    };
  }

  /** Registers every host metric: collectors that read `host` and `sources`, listeners on its events. */
  attach(host: MeteredHost, sources: HostMetricsSources): void {
    const registers = [this.registry];
    new Gauge({
      name: 'roam_host_info',
      help: 'Always 1; the host label is this host id (the fingerprint of its identity in a cluster).',
      labelNames: ['host'],
      registers,
      collect() {
        this.set({ host: host.id }, 1);
      },
    });
    new Gauge({
      name: 'roam_host_sessions',
      help: 'Sessions in memory, by state (attached: transport up; detached: client away within its grace period).',
      labelNames: ['state'],
      registers,
      collect() {
        const n = new Map<string, number>([
          ['attached', 0],
          ['detached', 0],
        ]);
        for (const s of host.describeSessions()) n.set(s.state, (n.get(s.state) ?? 0) + 1);
        this.reset();
        for (const [state, v] of n) this.set({ state }, v);
      },
    });
    new Gauge({
      name: 'roam_host_instances',
      help: 'Service instances in memory, by service.',
      labelNames: ['service'],
      registers,
      collect() {
        const n = new Map<string, number>();
        for (const s of sources.services()) n.set(s, 0);
        for (const i of sources.instances()) n.set(i.service, (n.get(i.service) ?? 0) + 1);
        this.reset();
        for (const [service, v] of n) this.set({ service }, v);
      },
    });
    new Gauge({
      name: 'roam_host_moved_stubs',
      help: 'Sessions that migrated away and are kept to send a late client its MOVE.',
      registers,
      collect() {
        this.set(sources.stubs());
      },
    });
    /** A counter whose values are read from the host's own counters when scraped. */
    const mirrored = <L extends string>(
      name: string,
      help: string,
      labelNames: L[],
      read: () => Array<[Partial<Record<L, string>>, number]>,
    ): void => {
      new Counter<L>({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          for (const [labels, v] of read()) this.inc(labels, v);
        },
      });
    };
    const c = host.counters;
    mirrored(
      'roam_host_continuations_suspended_total',
      'Continuations written to the Store, by kind.',
      ['kind'],
      () => [
        [{ kind: 'session' }, c.suspended],
        [{ kind: 'instance' }, c.instancesSuspended],
      ],
    );
    mirrored(
      'roam_host_continuations_restored_total',
      'Continuations brought back from the Store into memory, by kind.',
      ['kind'],
      () => [
        [{ kind: 'session' }, c.restored],
        [{ kind: 'instance' }, c.instancesRestored],
      ],
    );
    mirrored('roam_host_continuations_collected_total', 'Expired continuations deleted by the collector.', [], () => [
      [{}, c.collected],
    ]);
    mirrored(
      'roam_host_fenced_instances_total',
      'Instances this host stopped serving because another host owns them at a newer epoch.',
      [],
      () => [[{}, c.fenced]],
    );
    mirrored(
      'roam_host_client_bytes_total',
      'Application payload bytes exchanged with clients (in: received from clients; out: sent by services).',
      ['direction'],
      () => [
        [{ direction: 'in' }, c.bytesIn],
        [{ direction: 'out' }, c.bytesOut],
      ],
    );
    const sc = host.server.counters;
    mirrored('roam_host_client_connections_total', 'Client transports accepted (before the handshake).', [], () => [
      [{}, sc.accepted],
    ]);
    mirrored(
      'roam_host_client_handshakes_total',
      'Client handshakes completed, by kind (hello: new session; resume: existing session).',
      ['kind'],
      () => [
        [{ kind: 'hello' }, sc.hellos],
        [{ kind: 'resume' }, sc.resumes],
      ],
    );
    mirrored('roam_host_client_refused_total', 'Client handshakes refused, by error code.', ['code'], () =>
      [...sc.refused].map(([code, v]): [{ code: string }, number] => [{ code }, v]),
    );

    const migrations = new Counter({
      name: 'roam_host_migrations_total',
      help: 'Migrations this host took part in, by direction (out: source; in: destination), outcome and reason.',
      labelNames: ['direction', 'outcome', 'reason'],
      registers,
    });
    const bytes = new Counter({
      name: 'roam_host_migration_bytes_total',
      help: 'Bytes of migration messages, by direction (out: sent as source; in: received as destination).',
      labelNames: ['direction'],
      registers,
    });
    const gap = new Histogram({
      name: 'roam_host_migration_client_gap_seconds',
      help: 'Per committed outgoing migration with attached clients: longest client gap, freeze until the client resumed at the destination.',
      buckets: GAP_BUCKETS,
      registers,
    });
    const freeze = new Histogram({
      name: 'roam_host_migration_freeze_seconds',
      help: 'Per committed outgoing migration: time the instances were frozen (stop-and-copy until the commit verdict).',
      buckets: GAP_BUCKETS,
      registers,
    });
    const downtime = new Histogram({
      name: 'roam_host_migration_downtime_seconds',
      help: 'Per committed outgoing migration: time the instances ran nowhere (the freeze until serving at the destination).',
      buckets: GAP_BUCKETS,
      registers,
    });
    const rounds = new Histogram({
      name: 'roam_host_migration_precopy_rounds',
      help: 'Per committed outgoing migration: pre-copy rounds before the stop-and-copy.',
      buckets: ROUND_BUCKETS,
      registers,
    });
    const drains = new Counter({
      name: 'roam_host_drains_total',
      help: 'Drains of this host that ended, by final state (done or failed).',
      labelNames: ['state'],
      registers,
    });
    host.on('migration', (m: MigrationRecord) => {
      // The source reports a committed migration twice: at the commit, then with the client gap.
      if (m.phases.clientGapMs !== undefined) {
        gap.observe(m.phases.clientGapMs / 1000);
        return;
      }
      migrations.inc({ direction: 'out', outcome: m.outcome, reason: m.reason });
      bytes.inc({ direction: 'out' }, m.bytesSent);
      if (m.outcome === 'committed') {
        freeze.observe(m.phases.freezeMs / 1000);
        const down = m.phases.freezeSteps?.downtimeMs;
        if (down !== undefined) downtime.observe(down / 1000);
        rounds.observe(m.rounds.length);
      }
    });
    host.on('migrationIn', (m: IncomingMigration) => {
      // The reason comes from the source's offer: only known values become a label.
      const reason = m.reason !== undefined && REASONS.has(m.reason) ? m.reason : 'unknown';
      migrations.inc({ direction: 'in', outcome: m.outcome, reason });
      bytes.inc({ direction: 'in' }, m.bytesReceived);
    });
    let lastDrain: string | undefined;
    host.on('drain', (d: DrainStatus) => {
      if (d.state === 'running' || d.id === lastDrain) return;
      lastDrain = d.id;
      drains.inc({ state: d.state });
    });
  }

  /** The registry in the Prometheus text format, with its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** Answers an HTTP request with {@link scrape}. */
  async serve(res: ServerResponse): Promise<void> {
    const { contentType, body } = await this.scrape();
    res.writeHead(200, { 'content-type': contentType }).end(body);
  }
}
