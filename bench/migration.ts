/**
 * `migration` suite: what a client sees while its instance moves between hosts.
 *
 * A directory and two hosts run as `roam` processes on one SQLite Store (test/support/cluster.ts),
 * plus a gateway for gateway mode. This process holds the client. For each state size (4 KiB,
 * 1 MiB, 16 MiB of instance state in 1 KiB values) and each mode (direct: the client follows MOVE;
 * gateway: the gateway re-splices), the `stream` service ticks at 1 kHz and rewrites one random
 * 1 KiB value on every tick, so the state is being dirtied while it moves. The instance migrates
 * back and forth `migrations` times with pre-copy, and as many times without it (stop-and-copy of
 * everything: the baseline, in the same run, interleaved with the pre-copy moves). In direct mode
 * a third arm in the same rotation moves with pre-copy but without MOVE hints, which measures
 * what opening the client's transport during the pre-copy saves. Every block of moves runs each
 * arm once, in a shuffled order.
 *
 * gap = the longest interval between two consecutive counter messages the client received from
 * just before the move was requested until 100 indices after it committed. lost / duplicated
 * count indices missing or repeated on the client over the whole case.
 */
import { connect } from '../src/client/node.js';
import type { MigrationRecord } from '../src/transport/cluster.js';
import { type Cluster, startCluster } from '../test/support/cluster.js';
import { SERVICES } from '../test/support/host.js';
import type { SuiteOptions } from './run.js';
import { median, p99 } from './stats.js';

export interface MigrationCase {
  state_bytes: number;
  rate_hz: number;
  mode: 'direct' | 'gateway';
  migrations: number;
  gap_ms_p50: number;
  gap_ms_p99: number;
  freeze_ms_p50: number;
  freeze_ms_p99: number;
  /**
   * The downtime: the source's freeze → the instance serving at the destination (FreezeSteps'
   * `downtimeMs`). `freeze_ms` runs on until the source hears the verdict, a link trip later.
   */
  downtime_ms_p50: number;
  downtime_ms_p99: number;
  total_ms_p50: number;
  rounds_p50: number;
  final_dirty_bytes_p50: number;
  bytes_sent_over_state: number;
  lost: number;
  duplicated: number;
  baseline_gap_ms_p50: number;
  baseline_gap_ms_p99: number;
  baseline_freeze_ms_p50: number;
  /**
   * Direct mode only: pre-copy moves without MOVE hints (the client opens its transport to the
   * destination only at the MOVE), a third arm in the same rotation.
   */
  nohint_gap_ms_p50?: number;
  nohint_gap_ms_p99?: number;
  /**
   * The gap's baseline: the same measure (longest interval between consecutive indices) over a
   * window of as many intervals as each pre-copy move's window, taken while nothing moves, 50 ms
   * after that move's window closed. The floor the gap has on this machine (timer jitter,
   * scheduling), measured in the same run.
   */
  idle_gap_ms_p50: number;
  idle_gap_ms_p99: number;
  /**
   * The gap split in two (pre-copy moves): the interval that spans the freeze (what the move
   * itself cost the client), and the longest interval elsewhere in the same window (the machine's
   * jitter, measured in the same moves).
   */
  move_gap_ms_p50: number;
  move_gap_ms_p99: number;
  other_gap_ms_p50: number;
  /** Median of each step of the freeze (FreezeSteps), pre-copy moves. */
  freeze_steps_ms_p50: Record<string, number>;
}

export interface MigrationResult {
  suite: 'migration';
  at: string;
  quick: boolean;
  machine: { cpus: number; node: string };
  cases: MigrationCase[];
}

const dec = new TextDecoder();

const round2 = (x: number) => Math.round(x * 100) / 100;

/** Indices as they arrive: times, losses and duplicates. */
class Receiver {
  last = 0;
  lost = 0;
  duplicated = 0;
  readonly at: number[] = [];
  private waiters: Array<{ n: number; resolve: () => void }> = [];
  on(v: number): void {
    const now = performance.now();
    if (v <= this.last) this.duplicated++;
    else {
      if (v > this.last + 1) this.lost += v - this.last - 1;
      for (let i = this.last + 1; i <= v; i++) this.at[i] = now;
      this.last = v;
    }
    this.waiters = this.waiters.filter((w) => {
      if (this.last >= w.n) w.resolve();
      return this.last < w.n;
    });
  }
  until(n: number): Promise<void> {
    if (this.last >= n) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }
  /**
   * Splits [from, to] at the instant `t` (this process's performance.now()): the longest interval
   * that overlaps t ± 2 ms (the one spanning the freeze; ± the 1 ms resolution of the record's
   * wall clock), and the longest of the intervals that do not.
   */
  split(from: number, to: number, t: number): { move: number; other: number } {
    let move = 0;
    let other = 0;
    for (let i = Math.max(2, from + 1); i <= to; i++) {
      const a = this.at[i - 1];
      const b = this.at[i];
      if (a === undefined || b === undefined) continue;
      if (b >= t - 2 && a <= t + 2) move = Math.max(move, b - a);
      else other = Math.max(other, b - a);
    }
    return { move, other };
  }
  /** Longest interval between consecutive indices in [from, to]. */
  gap(from: number, to: number): number {
    let g = 0;
    for (let i = Math.max(2, from + 1); i <= to; i++) {
      const a = this.at[i - 1];
      const b = this.at[i];
      if (a !== undefined && b !== undefined) g = Math.max(g, b - a);
    }
    return g;
  }
}

async function runCase(
  cluster: Cluster,
  gatewayUrl: string,
  stateBytes: number,
  mode: 'direct' | 'gateway',
  migrations: number,
): Promise<MigrationCase> {
  const [a, b] = cluster.hosts as [Cluster['hosts'][0], Cluster['hosts'][0]];
  const url = mode === 'direct' ? a.clientUrl : gatewayUrl;
  const s = connect(url, { service: 'stream', reconnect: { initialDelayMs: 2, maxDelayMs: 50 } });
  const rx = new Receiver();
  const filled = new Promise<void>((resolve) => {
    s.on('message', (d, ch) => {
      if (ch === 0) rx.on(Number(dec.decode(d)));
      else if (ch === 1 && dec.decode(d).startsWith('filled')) resolve();
    });
  });
  await s.ready;
  const slots = Math.max(1, Math.round(stateBytes / 1024));
  s.send(`fill ${slots} 1024`);
  await filled;
  s.send('start 1 1024');
  await rx.until(300);
  const { sessions } = await cluster.api<{ sessions: Array<{ instance: string; host: string }> }>(
    `/api/sessions?id=${s.id}`,
  );
  const instance = sessions[0]?.instance as string;
  let on = sessions[0]?.host as string;
  const pre: {
    gap: number[];
    freeze: number[];
    downtime: number[];
    total: number[];
    rounds: number[];
    dirty: number[];
    ratio: number[];
  } = { gap: [], freeze: [], downtime: [], total: [], rounds: [], dirty: [], ratio: [] };
  const base: { gap: number[]; freeze: number[] } = { gap: [], freeze: [] };
  const nohint: number[] = [];
  const split: { move: number[]; other: number[] } = { move: [], other: [] };
  const idle: number[] = [];
  const steps = new Map<string, number[]>();
  // Date.now() (the hosts' record times) on this process's performance.now() clock.
  const wallOffset = Date.now() - performance.now();
  // Arms in rotation: pre-copy, the stop-and-copy baseline and, in direct mode (a gateway keeps
  // hints to itself), pre-copy without MOVE hints.
  const arms = mode === 'direct' ? (['pre-copy', 'baseline', 'no hint'] as const) : (['pre-copy', 'baseline'] as const);
  // Each block of moves runs every arm once, in a shuffled order (seeded, so runs are comparable):
  // in a fixed rotation each arm would always follow the same other arm (the no-hint arm, say,
  // always right after a stop-and-copy of the whole state) and inherit its after-effects.
  const order: Array<(typeof arms)[number]> = [];
  let seed = 0x2545f491;
  const random = (): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  for (let k = 0; k < migrations; k++) {
    const block = [...arms];
    for (let j = block.length - 1; j > 0; j--) {
      const r = Math.floor(random() * (j + 1));
      [block[j], block[r]] = [block[r] as (typeof arms)[number], block[j] as (typeof arms)[number]];
    }
    order.push(...block);
  }
  for (let i = 0; i < order.length; i++) {
    const arm = order[i] as (typeof arms)[number];
    const precopy = arm !== 'baseline';
    const to = on === a.id ? b.id : a.id;
    const from = rx.last;
    const t0 = performance.now();
    const rec = await cluster.api<MigrationRecord>('/api/migrate', {
      instance,
      to,
      precopy,
      ...(arm === 'no hint' ? { hint: false } : {}),
    });
    const total = performance.now() - t0;
    on = to;
    const committedAt = rx.last;
    await rx.until(committedAt + 100);
    const gap = rx.gap(from, rx.last);
    if (arm === 'no hint') {
      nohint.push(gap);
    } else if (precopy) {
      pre.gap.push(gap);
      pre.freeze.push(rec.phases.freezeMs);
      if (rec.phases.freezeSteps?.downtimeMs !== undefined) pre.downtime.push(rec.phases.freezeSteps.downtimeMs);
      pre.total.push(total);
      pre.rounds.push(rec.rounds.length);
      pre.dirty.push(rec.finalDirtyBytes);
      pre.ratio.push(rec.bytesSent / Math.max(1, rec.stateBytes));
      const frozeAt = rec.startedAt + rec.phases.negotiateMs + rec.phases.precopyMs - wallOffset;
      const parts = rx.split(from, rx.last, frozeAt);
      split.move.push(parts.move);
      split.other.push(parts.other);
      for (const [k, v] of Object.entries(rec.phases.freezeSteps ?? {})) steps.set(k, [...(steps.get(k) ?? []), v]);
      const intervals = rx.last - from;
      await rx.until(rx.last + 50);
      const quiet = rx.last;
      await rx.until(quiet + intervals);
      idle.push(rx.gap(quiet, quiet + intervals));
    } else {
      base.gap.push(gap);
      base.freeze.push(rec.phases.freezeMs);
    }
    process.stderr.write(
      `  ${mode} ${stateBytes} B #${i} ${arm}: gap ${gap.toFixed(1)} ms, freeze ${rec.phases.freezeMs.toFixed(1)} ms, rounds ${rec.rounds.length}\n`,
    );
  }
  s.close();
  return {
    state_bytes: stateBytes,
    rate_hz: 1000,
    mode,
    migrations,
    gap_ms_p50: round2(median(pre.gap)),
    gap_ms_p99: round2(p99(pre.gap)),
    freeze_ms_p50: round2(median(pre.freeze)),
    freeze_ms_p99: round2(p99(pre.freeze)),
    downtime_ms_p50: round2(median(pre.downtime)),
    downtime_ms_p99: round2(p99(pre.downtime)),
    total_ms_p50: round2(median(pre.total)),
    rounds_p50: median(pre.rounds),
    final_dirty_bytes_p50: median(pre.dirty),
    bytes_sent_over_state: round2(median(pre.ratio)),
    lost: rx.lost,
    duplicated: rx.duplicated,
    baseline_gap_ms_p50: round2(median(base.gap)),
    baseline_gap_ms_p99: round2(p99(base.gap)),
    baseline_freeze_ms_p50: round2(median(base.freeze)),
    ...(nohint.length > 0 ? { nohint_gap_ms_p50: round2(median(nohint)), nohint_gap_ms_p99: round2(p99(nohint)) } : {}),
    idle_gap_ms_p50: round2(median(idle)),
    idle_gap_ms_p99: round2(p99(idle)),
    move_gap_ms_p50: round2(median(split.move)),
    move_gap_ms_p99: round2(p99(split.move)),
    other_gap_ms_p50: round2(median(split.other)),
    freeze_steps_ms_p50: Object.fromEntries([...steps].map(([k, v]) => [k, round2(median(v))])),
  };
}

export async function run(opts: SuiteOptions): Promise<MigrationResult> {
  const services = [`stream=${SERVICES.stream}`];
  const cluster = await startCluster({ hosts: [{ services }, { services }] });
  const cases: MigrationCase[] = [];
  try {
    const gw = await cluster.startGateway();
    const sizes = opts.sizes ?? [4096, 1 << 20, 16 << 20];
    const modes = (opts.sides ?? ['direct', 'gateway']) as Array<'direct' | 'gateway'>;
    const n = opts.quick ? 5 : 30;
    for (const size of sizes) {
      for (const mode of modes) {
        process.stderr.write(`migration: ${size} B state, ${mode} mode, ${n} migrations per arm\n`);
        cases.push(await runCase(cluster, gw.urls[0] as string, size, mode, n));
      }
    }
  } finally {
    await cluster.close();
  }
  return {
    suite: 'migration',
    at: new Date().toISOString(),
    quick: opts.quick,
    machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
    cases,
  };
}

export function summarize(r: MigrationResult): string {
  const rows = r.cases.map(
    (c) =>
      `${String(c.state_bytes).padStart(9)} B ${c.mode.padEnd(8)} gap p50 ${c.gap_ms_p50} ms p99 ${c.gap_ms_p99} ms (move ${c.move_gap_ms_p50}, elsewhere ${c.other_gap_ms_p50}; idle window p50 ${c.idle_gap_ms_p50} p99 ${c.idle_gap_ms_p99}) | freeze p50 ${c.freeze_ms_p50} ms (downtime ${c.downtime_ms_p50}) ${JSON.stringify(c.freeze_steps_ms_p50)} | rounds ${c.rounds_p50} | sent/state ${c.bytes_sent_over_state} | baseline gap p50 ${c.baseline_gap_ms_p50} ms | lost ${c.lost} dup ${c.duplicated}`,
  );
  return ['migration (1 kHz, one 1 KiB value rewritten per tick):', ...rows].join('\n');
}
