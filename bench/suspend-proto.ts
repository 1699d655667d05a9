/**
 * Shared by the `suspend` bench (bench/suspend.ts, the clients and orchestrator) and its host
 * child (bench/suspend-host.ts): the IPC control protocol, the shapes of what the child reports,
 * and small statistics helpers.
 *
 * Protocol: the parent sends `{ id, cmd, ...args }` over the child's IPC channel; the child answers
 * `{ id, ok: true, value }` or `{ id, ok: false, error }`. Before any command, the child sends one
 * `{ type: 'listening', url, pid }` once its Host listens.
 */

export type HostCommand =
  /** GC (main thread; the worker's via a heap snapshot when `workerGc`), then memory, fds, sessions. */
  | { cmd: 'measure'; label: string; workerGc: boolean; idleMs: number }
  /** Session counts by state, and the host's counters. */
  | { cmd: 'states' }
  /** `host.suspendSession(sid)` for every live session, one at a time, each timed. */
  | { cmd: 'suspendAll' }
  /** Reads stored continuations: overhead of `sample` sessions, and checks every suspended one. */
  | { cmd: 'inspect'; sample: number }
  /** Starts / ends recording server-side resume timings (store calls, worker requests, restore()). */
  | { cmd: 'resumeBegin' }
  | { cmd: 'resumeEnd' }
  | { cmd: 'shutdown' };

export type HostRequest = HostCommand & { id: number };

export type HostReply = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };

export interface HostHello {
  type: 'listening';
  /** ws:// URL (sessions open here). */
  url: string;
  /** tcp:// URL of the same host, for resumes over raw TCP. */
  tcpUrl: string;
  pid: number;
  dbPath: string;
}

/** One memory / fd reading of the host process, after GC. */
export interface MemSnapshot {
  label: string;
  /** process.memoryUsage() of the main thread, bytes (rss covers the worker thread too). */
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  /** /proc/self/status, bytes: anonymous memory, file-backed mappings (code, libraries), shared memory (SQLite -shm). */
  rssAnon: number;
  rssFile: number;
  rssShmem: number;
  /** Resident bytes by mapping kind (/proc/self/smaps); see suspend-host.ts smaps(). */
  smaps: { brk_heap: number; thread_arenas: number; anon_other: number; file: number };
  /** The service worker's V8 heap (from its `stats` op), bytes; after a forced GC when workerGc. */
  workerHeapUsed: number;
  /** Time the worker heap snapshot (used only to force a GC there) took, ms; 0 when not taken. */
  workerGcMs: number;
  /** Open file descriptors of the host process (/proc/self/fd). */
  fds: number;
  /** Sessions in memory by engine state. */
  sessions: Record<string, number>;
  liveSessions: number;
  liveInstances: number;
  workerInstances: number;
  workerSessions: number;
  /** CPU time of the host process (user + system) over an idle window, % of one core; NaN when not measured. */
  idleCpuPct: number;
}

export interface HostStates {
  sessions: Record<string, number>;
  liveSessions: number;
  liveInstances: number;
  counters: { suspended: number; restored: number; instancesSuspended: number; instancesRestored: number };
}

/** Distribution of a set of durations, ms. */
export interface Dist {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** One instrumented operation (a Store call or a worker request) during a phase. */
export interface OpStat {
  /** Calls in the phase. */
  calls: number;
  /** Calls per suspended / restored session. */
  per_session: number;
  p50_ms: number;
  p99_ms: number;
  /** Total time in this op divided by the number of sessions, ms: how much of each session's time it takes. */
  ms_per_session: number;
}

export interface SuspendAllResult {
  count: number;
  dist: Dist;
  wallMs: number;
  /** Store calls and worker requests made by the suspensions, keyed `store.putBlob`, `worker.suspendSession`, … */
  ops: Record<string, OpStat>;
  liveSessionsAfter: number;
  liveInstancesAfter: number;
  failures: number;
  firstError: string | undefined;
}

export interface InspectResult {
  sampled: number;
  /** Per session: session continuation + instance continuation, bytes (same for every sampled session here). */
  session_blob_bytes: Dist;
  instance_blob_bytes: Dist;
  /** continuationOverhead() of each. */
  session_overhead_bytes: Dist;
  instance_overhead_bytes: Dist;
  total_overhead_bytes: Dist;
  /** UTF-8 key + encoded value bytes of all state entries (what continuationOverhead subtracts). */
  state_bytes: Dist;
  /** The JSON meta records the Host keeps next to each blob (session and instance). */
  session_meta_bytes: Dist;
  instance_meta_bytes: Dist;
  /** Everything the Store holds for one suspended session: keys, meta values, blobs. */
  store_bytes_per_session: number;
  /** Every suspended session checked: continuation present, decodes, instance state holds the pad. */
  checked: number;
  with_state: number;
  problems: string[];
  /** SQLite files on disk (main, -wal, -shm), bytes. */
  db_bytes: { main: number; wal: number; shm: number };
}

export interface ResumeServerStats {
  /** Restores recorded. */
  restores: number;
  /** The Host's restore(): Store reads, key import, proof check, instance + session restore in the worker, Store deletes. */
  restore: Dist;
  /** The proof check inside restore (HMAC over the challenge). */
  verify: Dist;
  /** Server-side: transport accepted -> host `restored` event (includes the CHALLENGE round trip). */
  accept_to_restored: Dist;
  ops: Record<string, OpStat>;
}

// ---------------------------------------------------------------------------------------------

/** Nearest-rank percentile of an ascending array. */
export function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function dist(xs: number[], digits = 3): Dist {
  const s = [...xs].sort((a, b) => a - b);
  const mean = s.length === 0 ? Number.NaN : s.reduce((a, b) => a + b, 0) / s.length;
  return {
    n: s.length,
    p50: round(pct(s, 50), digits),
    p90: round(pct(s, 90), digits),
    p99: round(pct(s, 99), digits),
    max: round(s.at(-1) ?? Number.NaN, digits),
    mean: round(mean, digits),
  };
}

export function opStats(ops: Map<string, number[]>, sessions: number): Record<string, OpStat> {
  const out: Record<string, OpStat> = {};
  for (const [name, xs] of [...ops].sort(([a], [b]) => a.localeCompare(b))) {
    const d = dist(xs);
    out[name] = {
      calls: xs.length,
      per_session: round(xs.length / Math.max(1, sessions), 2),
      p50_ms: d.p50,
      p99_ms: d.p99,
      ms_per_session: round(xs.reduce((a, b) => a + b, 0) / Math.max(1, sessions), 4),
    };
  }
  return out;
}
