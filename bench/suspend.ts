/**
 * `suspend` suite: what a suspended session costs a host, and how fast it comes back.
 *
 * The host runs in a child process (bench/suspend-host.ts: a Host with the `counter` test service
 * and a SQLite Store in a temp dir, node --expose-gc); this process holds every client session.
 *
 *  1. warm-up: a few sessions go through open, live resume, suspend, restore and close, so one-time
 *     costs (JIT, lazily loaded code, SQLite pages) land in the baseline rather than in the figures;
 *  2. baseline: host memory and fds with 0 sessions;
 *  3. open N `counter` sessions (the first ones one at a time, timed; the rest `batch` at a time),
 *     each sends `pad 4096` (4 KiB of instance state). The counter's timer stays OFF;
 *  4. active: memory with N attached sessions; then a live resume (reconnectNow on an attached
 *     session, nothing suspended) on a sample, as the reference for resume time;
 *  5. every client's own connector gate is shut and `reconnectNow()` drops its transport: the host
 *     holds N detached sessions (its grace period is 1 h): memory again;
 *  6. `host.suspendSession(sid)` for every session, one at a time, timed; stored continuations are
 *     read back for their size and overhead; memory and fds again;
 *  7. resume: one session at a time, open its gate and `reconnectNow()`; time to the client's
 *     `resumed` event and to the service's first message (`resumed:restored`, sent by its resume
 *     hook); the host reports where its side of the time went. Trials alternate between ws:// (the
 *     headline) and tcp:// (the same host; the connector swaps the URL). The remaining sessions
 *     resume in concurrent batches (a burst, for throughput);
 *  8. memory with everything resumed, then after every session closed (leak / retention check);
 *  9. heartbeat probe: a second host at roam's default 1 s heartbeat, idle sessions, host CPU.
 *
 * Sessions here heartbeat every 5 s (both sides), not roam's 1 s default: at the default, idle
 * heartbeats of 10,000 sessions alone saturate a core of the host on a 2-vCPU machine, and every
 * timing would measure queueing. The probe reports what the default costs.
 *
 * Per-session figures are (reading - baseline) / N. RSS includes allocator retention (freed memory
 * the process keeps), so heapUsed-based figures are reported beside it.
 *
 * Extra node flags for the host child (e.g. a CPU profile) come from BENCH_SERVER_NODE_ARGS.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { type Connector, connect, type Session } from '../src/client/node.js';
import { connectTransport } from '../src/transport/index.js';
import { RoamError } from '../src/wire/index.js';
import {
  type Dist,
  dist,
  type HostCommand,
  type HostHello,
  type HostReply,
  type HostStates,
  type InspectResult,
  type MemSnapshot,
  type OpStat,
  type ResumeServerStats,
  round,
  type SuspendAllResult,
} from './suspend-proto.js';

export interface SuspendSuiteOptions {
  quick: boolean;
}

interface Config {
  sessions: number;
  stateBytes: number;
  /** Sessions opened one at a time (timed) before the batched rest. */
  helloSequential: number;
  /** Concurrent handshakes while opening the rest. */
  openBatch: number;
  warmup: number;
  liveResumeSample: number;
  /** Suspended sessions resumed one at a time (the resume_ms figures). */
  resumeSample: number;
  /** Concurrency of the burst that resumes the rest. */
  resumeBatch: number;
  /** Idle window for the host's CPU reading, ms (states with attached sessions: at least one heartbeat interval). */
  idleMs: number;
  /** Client reconnect backoff cap: long, so clients kept away by their gate stay quiet. */
  clientMaxDelayMs: number;
  /**
   * Engine heartbeat, both sides. Not roam's 1 s default: with it, idle heartbeats alone keep a
   * host core busy at a few thousand sessions on a small machine (see heartbeat_probe), which
   * would turn every timing below into a queueing measurement.
   */
  heartbeatMs: number;
  /** Sessions of the heartbeat probe (a second host at roam's default heartbeat). */
  probeSessions: number;
}

function config(quick: boolean): Config {
  return quick
    ? {
        sessions: 1000,
        stateBytes: 4096,
        helloSequential: 50,
        openBatch: 200,
        warmup: 20,
        liveResumeSample: 100,
        resumeSample: 300,
        resumeBatch: 50,
        idleMs: 1000,
        clientMaxDelayMs: 60_000,
        heartbeatMs: 5000,
        probeSessions: 500,
      }
    : {
        sessions: 10_000,
        stateBytes: 4096,
        helloSequential: 200,
        openBatch: 200,
        warmup: 50,
        liveResumeSample: 300,
        resumeSample: 1000,
        resumeBatch: 50,
        idleMs: 2000,
        clientMaxDelayMs: 60_000,
        heartbeatMs: 5000,
        probeSessions: 2000,
      };
}

/** Per-session deltas against the baseline, bytes (fds: count). */
interface PerSession {
  rss: number;
  rss_anon: number;
  heap_used: number;
  external: number;
  array_buffers: number;
  worker_heap_used: number;
  /**
   * heap_used + worker_heap_used + array_buffers: live JS objects, both threads. Not the worker's
   * ArrayBuffer backing stores (the 4 KiB pads): WorkerStats reports heapUsed only.
   */
  js_live: number;
  /** Resident memory by mapping kind (/proc/self/smaps): main-thread malloc, other threads' malloc arenas, other anonymous (V8 pages, big mallocs). */
  smaps_brk_heap: number;
  smaps_thread_arenas: number;
  smaps_anon_other: number;
  fds: number;
}

interface ResumeFigures {
  trials: number;
  definition: string;
  /** reconnectNow() -> the client's `resumed` event. */
  to_resumed: Dist;
  /** reconnectNow() -> first service message after the resume (`resumed:restored`); empty for live resumes. */
  to_first_message: Dist;
  phases: {
    reconnect_to_connector_call: Dist;
    connector_call_to_transport_open: Dist;
    transport_open_to_resumed: Dist;
    /** Can be negative: the replayed message and RESUMED arrive together and the message is delivered before the event. */
    resumed_to_first_message: Dist;
  };
  /** `gapMs` of the `resumed` event: how long the client was detached (not a resume cost). */
  resumed_gap_ms: Dist;
  replayed: number[];
}

export interface HeartbeatProbe {
  sessions: number;
  heartbeat_ms: number;
  host_idle_cpu_pct: number;
  host_cpu_us_per_session_per_s: number;
  /** The bench process (all probe clients) over the same window, roughly. */
  clients_cpu_pct_approx: number;
}

export interface SuspendResult {
  suite: 'suspend';
  sessions: number;
  state_bytes: number;
  /** (rss with N attached sessions - baseline rss) / N. */
  active_bytes_per_session: number;
  /** (rss with N suspended sessions - baseline rss) / N; see per_session.suspended for heap-based figures. */
  suspended_bytes_per_session: number;
  suspended_fds_per_session: number;
  /** Per session: continuationOverhead(session continuation) + continuationOverhead(instance continuation). */
  continuation_overhead_bytes: number;
  /** host.suspendSession() duration, one session at a time. */
  suspend_ms_p50: number;
  /** reconnectNow() -> `resumed`, one suspended session at a time, client-side wall time over ws://. */
  resume_ms_p50: number;
  resume_ms_p99: number;
  targets: {
    /** measured: RSS-based; heap_based: js_live (main + worker heapUsed + arrayBuffers). */
    suspended_bytes_per_session: {
      target: number;
      measured: number;
      heap_based: number;
      met: boolean;
      met_heap_based: boolean;
    };
    suspended_fds_per_session: { target: number; measured: number; met: boolean };
    continuation_overhead_bytes: { target: number; measured: number; met: boolean };
    resume_ms_p50: { target: number; measured: number; met: boolean };
  };
  per_session: { active: PerSession; detached: PerSession; suspended: PerSession; resumed: PerSession };
  memory: Record<string, MemSnapshot>;
  continuation: InspectResult;
  open: {
    /** One HELLO at a time: connect() -> ready. */
    hello_sequential_ms: Dist;
    /** The rest, `batch` concurrent handshakes. */
    batched_sessions: number;
    batch: number;
    wall_s: number;
    sessions_per_s: number;
  };
  suspend: SuspendAllResult & { sessions_per_s: number };
  /** Resume of suspended sessions over ws:// (the headline), with where the host's side of the time goes (ws and tcp trials). */
  resume: ResumeFigures & { server: ResumeServerStats };
  /** The same over tcp:// (every other session of the sample). */
  resume_tcp: ResumeFigures;
  /** Reference: reconnectNow() on an attached session (resumes the live in-memory session), ws:// and tcp://. */
  live_resume: ResumeFigures;
  live_resume_tcp: ResumeFigures;
  resume_burst: {
    sessions: number;
    batch: number;
    wall_s: number;
    sessions_per_s: number;
    to_resumed: Dist;
    to_first_message: Dist;
  };
  /** Host CPU over an idle window (heartbeats only), % of one core, at the bench's heartbeat. */
  idle_cpu_pct: {
    base: number;
    active: number;
    detached: number;
    suspended: number;
    resumed: number;
    active_us_per_session_per_s: number;
  };
  heartbeat_probe: HeartbeatProbe | undefined;
  meta: {
    node: string;
    date: string;
    quick: boolean;
    cpu_model: string;
    cpus: number;
    platform: string;
    transport: string;
    service: string;
    counter_timer: string;
    worker_gc: boolean;
    heartbeat: string;
    store: string;
    config: Config;
    duration_s: number;
    loadavg_start: number[];
    loadavg_end: number[];
    notes: string[];
  };
}

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
/**
 * Force a GC in the service worker before reading its heap, through a heap snapshot (the only way
 * in), at the readings where its heap is small (base, suspended, closed). Not where it is big: a
 * snapshot of a 50 MiB heap leaves tens of MiB of freed buffers in the host's allocator and in
 * the main thread's arrayBuffers, which inflated every later RSS reading by ~20 KB per session.
 * There the worker's heapUsed is read as is (it includes whatever garbage it has; little, there).
 * BENCH_WORKER_GC=0 turns the snapshots off entirely.
 */
const WORKER_GC = process.env.BENCH_WORKER_GC !== '0';
const CMD_TIMEOUT_MS = 180_000;
const dec = new TextDecoder();

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function progress(msg: string): void {
  process.stderr.write(`  ${msg}\n`);
}

/** Rejects once the host child dies unexpectedly, so every wait fails fast instead of hanging. */
let hostGone: Promise<never> = new Promise<never>(() => {});

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, t, hostGone]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------
// the host child

interface HostChild {
  url: string;
  tcpUrl: string;
  call<T>(c: HostCommand): Promise<T>;
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; forced: boolean }>;
}

async function startHost(heartbeatMs: number | undefined): Promise<HostChild> {
  const extra = (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const child: ChildProcess = spawn(
    process.execPath,
    [...extra, '--expose-gc', '--import', 'tsx', 'bench/suspend-host.ts'],
    {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, BENCH_HEARTBEAT_MS: heartbeatMs === undefined ? '' : String(heartbeatMs) },
    },
  );
  let stopping = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  hostGone = exited.then(({ code, signal }) => {
    throw new Error(`host child exited ${stopping ? 'during shutdown' : 'unexpectedly'} (${code ?? signal})`);
  });
  hostGone.catch(() => {});
  let nextId = 1;
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let onHello: ((h: HostHello) => void) | undefined;
  child.on('message', (raw: unknown) => {
    const m = raw as HostReply | HostHello;
    if ('type' in m && m.type === 'listening') {
      onHello?.(m);
      return;
    }
    const r = m as HostReply;
    const p = pending.get(r.id);
    if (!p) return;
    pending.delete(r.id);
    if (r.ok) p.resolve(r.value);
    else p.reject(new Error(`host child: ${r.error}`));
  });
  const hello = await withTimeout(
    new Promise<HostHello>((resolve) => {
      onHello = resolve;
    }),
    30_000,
    'host child start',
  ).catch((err: unknown) => {
    child.kill('SIGKILL');
    throw err;
  });
  progress(`host child pid ${hello.pid} on ${hello.url} (store ${hello.dbPath})`);
  return {
    url: hello.url,
    tcpUrl: hello.tcpUrl,
    call<T>(c: HostCommand): Promise<T> {
      const id = nextId++;
      const p = new Promise<unknown>((resolve, reject) => {
        pending.set(id, { resolve, reject });
        child.send({ ...c, id });
      });
      return withTimeout(p, CMD_TIMEOUT_MS, `host command ${c.cmd}`) as Promise<T>;
    },
    async stop() {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null && child.connected) {
        child.send({ id: nextId++, cmd: 'shutdown' });
      }
      let forced = false;
      const timer = setTimeout(() => {
        forced = true;
        child.kill('SIGKILL');
      }, 20_000);
      const r = await exited;
      clearTimeout(timer);
      if (child.connected) child.disconnect();
      return { ...r, forced };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// clients

/** One client session with its own gate: while shut, its connector fails like an unreachable host. */
interface Client {
  s: Session;
  /** `url`, when set, replaces the session's URL for the next connections (resume over tcp://). */
  gate: { open: boolean; callAt: number; openAt: number; url: string | undefined };
  /** Called with the text of every channel-1 message (the service's `resumed:<how>`). */
  onCh1: ((text: string, at: number) => void) | undefined;
  ended: boolean;
}

/** `heartbeatMs` undefined: roam's default. */
function newClient(url: string, cfg: Config, heartbeatMs: number | undefined = cfg.heartbeatMs): Client {
  const gate: Client['gate'] = { open: true, callAt: 0, openAt: 0, url: undefined };
  const connector: Connector = async (u, o) => {
    if (!gate.open) throw new RoamError('TRANSPORT_CLOSED', 'gate shut (bench)');
    gate.callAt = performance.now();
    const t = await connectTransport(gate.url ?? u, { localAddress: o.localAddress });
    gate.openAt = performance.now();
    return t;
  };
  const s = connect(url, {
    service: 'counter',
    connector,
    reconnect: { maxDelayMs: cfg.clientMaxDelayMs },
    ...(heartbeatMs === undefined ? {} : { engine: { heartbeatMs } }),
  });
  const c: Client = { s, gate, onCh1: undefined, ended: false };
  s.on('message', (data, channel) => {
    if (channel === 1) c.onCh1?.(dec.decode(data), performance.now());
  });
  s.on('lost', () => {
    c.ended = true;
  });
  s.on('closed', () => {
    c.ended = true;
  });
  return c;
}

async function openClient(
  url: string,
  cfg: Config,
  pad: string,
  heartbeatMs: number | undefined = cfg.heartbeatMs,
): Promise<{ c: Client; ms: number }> {
  const t0 = performance.now();
  const c = newClient(url, cfg, heartbeatMs);
  await withTimeout(c.s.ready, 30_000, 'session open');
  const ms = performance.now() - t0;
  c.s.send(pad);
  return { c, ms };
}

async function openMany(
  url: string,
  cfg: Config,
  n: number,
  batch: number,
  pad: string,
  heartbeatMs: number | undefined = cfg.heartbeatMs,
): Promise<Client[]> {
  const out: Client[] = [];
  for (let i = 0; i < n; i += batch) {
    const k = Math.min(batch, n - i);
    const got = await Promise.all(Array.from({ length: k }, () => openClient(url, cfg, pad, heartbeatMs)));
    for (const g of got) out.push(g.c);
  }
  return out;
}

/** Waits until every client's outbound messages are acknowledged (the pad reached the host). */
async function waitAcked(clients: Client[], what: string): Promise<void> {
  const deadline = performance.now() + 60_000;
  for (;;) {
    const busy = clients.filter((c) => c.s.bufferedAmount > 0).length;
    if (busy === 0) return;
    if (performance.now() > deadline) throw new Error(`${what}: ${busy} sessions still have unacknowledged messages`);
    await sleep(50);
  }
}

async function waitStates(
  host: HostChild,
  pred: (s: HostStates) => boolean,
  what: string,
  timeoutMs = 60_000,
): Promise<HostStates> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const s = await host.call<HostStates>({ cmd: 'states' });
    if (pred(s)) return s;
    if (performance.now() > deadline) throw new Error(`${what}: timed out; host says ${JSON.stringify(s)}`);
    await sleep(50);
  }
}

interface Trial {
  toResumed: number;
  toFirst: number;
  toConnect: number;
  connect: number;
  handshake: number;
  resumedToFirst: number;
  gap: number;
  replayed: number;
}

/**
 * Opens the client's gate and resumes it now; resolves once `resumed` arrived and, when `expect` is
 * given, the service's first message after it (`resumed:restored`). A live resume does not wait for
 * the service's message: when the new transport wins the race against the host noticing the old
 * one's loss, the host never sees the session detached and the service's resume hook does not run.
 */
async function resumeOne(c: Client, expect: string | undefined, via?: string): Promise<Trial> {
  let got = 'nothing';
  const resumed = new Promise<{ at: number; gap: number; replayed: number }>((resolve) =>
    c.s.once('resumed', (ev) => {
      got = 'resumed only';
      resolve({ at: performance.now(), gap: ev.gapMs, replayed: ev.replayed });
    }),
  );
  const first =
    expect === undefined
      ? Promise.resolve(Number.NaN)
      : new Promise<number>((resolve) => {
          c.onCh1 = (text, at) => {
            if (text === expect) {
              c.onCh1 = undefined;
              resolve(at);
            }
          };
        });
  c.gate.open = true;
  c.gate.url = via;
  const t0 = performance.now();
  c.s.reconnectNow();
  const [ev, firstAt] = await withTimeout(Promise.all([resumed, first]), 20_000, `resume of ${c.s.id}`).catch(
    (err: unknown) => {
      throw new Error(`${(err as Error).message} (got ${got}; client state ${c.s.state})`);
    },
  );
  return {
    toResumed: ev.at - t0,
    toFirst: firstAt - t0,
    toConnect: c.gate.callAt - t0,
    connect: c.gate.openAt - c.gate.callAt,
    handshake: ev.at - c.gate.openAt,
    resumedToFirst: firstAt - ev.at,
    gap: ev.gap,
    replayed: ev.replayed,
  };
}

function resumeFigures(trials: Trial[], definition: string): ResumeFigures {
  const col = (f: (t: Trial) => number): Dist => dist(trials.map(f).filter(Number.isFinite));
  return {
    trials: trials.length,
    definition,
    to_resumed: col((t) => t.toResumed),
    to_first_message: col((t) => t.toFirst),
    phases: {
      reconnect_to_connector_call: col((t) => t.toConnect),
      connector_call_to_transport_open: col((t) => t.connect),
      transport_open_to_resumed: col((t) => t.handshake),
      resumed_to_first_message: col((t) => t.resumedToFirst),
    },
    resumed_gap_ms: col((t) => t.gap),
    replayed: [...new Set(trials.map((t) => t.replayed))].sort((a, b) => a - b),
  };
}

function perSession(x: MemSnapshot, base: MemSnapshot, n: number): PerSession {
  const d = (f: (m: MemSnapshot) => number): number => round((f(x) - f(base)) / n, 1);
  return {
    rss: d((m) => m.rss),
    rss_anon: d((m) => m.rssAnon),
    heap_used: d((m) => m.heapUsed),
    external: d((m) => m.external),
    array_buffers: d((m) => m.arrayBuffers),
    worker_heap_used: d((m) => m.workerHeapUsed),
    js_live: d((m) => m.heapUsed + m.workerHeapUsed + m.arrayBuffers),
    smaps_brk_heap: d((m) => m.smaps.brk_heap),
    smaps_thread_arenas: d((m) => m.smaps.thread_arenas),
    smaps_anon_other: d((m) => m.smaps.anon_other),
    fds: round((x.fds - base.fds) / n, 4),
  };
}

function mib(b: number): string {
  return `${round(b / 1048576, 1)} MiB`;
}

function describe(m: MemSnapshot): string {
  return `rss ${mib(m.rss)} (brk ${mib(m.smaps.brk_heap)} arenas ${mib(m.smaps.thread_arenas)} anon ${mib(m.smaps.anon_other)} file ${mib(m.smaps.file)}) heap ${mib(m.heapUsed)}/${mib(m.heapTotal)} ab ${mib(m.arrayBuffers)} worker heap ${mib(m.workerHeapUsed)} fds ${m.fds} sessions ${JSON.stringify(m.sessions)} instances ${m.liveInstances} cpu ${round(m.idleCpuPct, 1)}%${m.workerGcMs ? ` (worker gc ${Math.round(m.workerGcMs)} ms)` : ''}`;
}

async function closeAll(clients: Client[]): Promise<void> {
  for (const c of clients) {
    if (c.s.state !== 'lost' && c.s.state !== 'closed') c.s.close('bench done');
  }
}

// ---------------------------------------------------------------------------------------------

export async function run(opts: SuspendSuiteOptions): Promise<SuspendResult> {
  const started = performance.now();
  const cfg = config(opts.quick);
  const N = cfg.sessions;
  const pad = `pad ${cfg.stateBytes}`;
  const loadavgStart = os.loadavg().map((x) => round(x, 2));
  const result = await withHost(cfg.heartbeatMs, (host, all) => scenario(host, cfg, N, pad, all, opts.quick));
  result.heartbeat_probe = await withHost(undefined, (host, all) => heartbeatProbe(host, cfg, pad, all));
  result.meta.duration_s = round((performance.now() - started) / 1000);
  result.meta.loadavg_start = loadavgStart;
  result.meta.loadavg_end = os.loadavg().map((x) => round(x, 2));
  return result;
}

/** Runs `body` against a fresh host child; closes every client and stops the child whatever happens. */
async function withHost<T>(
  heartbeatMs: number | undefined,
  body: (host: HostChild, clients: Client[]) => Promise<T>,
): Promise<T> {
  const host = await startHost(heartbeatMs);
  const clients: Client[] = [];
  let failure: unknown;
  let result: T | undefined;
  try {
    result = await body(host, clients);
  } catch (err) {
    failure = err;
  }
  await closeAll(clients);
  // Let CLOSE frames go out before the host goes away.
  await sleep(200);
  const stopped = await host.stop();
  if (stopped.forced || stopped.code !== 0) {
    const msg = `host child did not exit cleanly (code ${stopped.code}, signal ${stopped.signal}, forced ${stopped.forced})`;
    if (!failure) failure = new Error(msg);
    else progress(msg);
  }
  if (failure !== undefined || result === undefined) throw failure ?? new Error('no result');
  return result;
}

/** A second host at roam's default heartbeat: what idle attached sessions cost in CPU. */
async function heartbeatProbe(host: HostChild, cfg: Config, pad: string, all: Client[]): Promise<HeartbeatProbe> {
  const n = cfg.probeSessions;
  all.push(...(await openMany(host.url, cfg, n, cfg.openBatch, pad, undefined)));
  await waitAcked(all, 'heartbeat probe');
  await waitStates(host, (s) => (s.sessions.attached ?? 0) === n, 'heartbeat probe attached');
  // Let the handshake burst settle into the steady heartbeat rhythm.
  await sleep(1500);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const m = await host.call<MemSnapshot>({
    cmd: 'measure',
    label: 'heartbeat-probe',
    workerGc: false,
    idleMs: cfg.idleMs,
  });
  const d = process.cpuUsage(c0);
  const clientPct = (d.user + d.system) / 10 / (performance.now() - t0);
  const r: HeartbeatProbe = {
    sessions: n,
    heartbeat_ms: 1000,
    host_idle_cpu_pct: round(m.idleCpuPct, 2),
    host_cpu_us_per_session_per_s: round((m.idleCpuPct * 10_000) / n, 1),
    clients_cpu_pct_approx: round(clientPct, 1),
  };
  progress(
    `heartbeat probe: ${n} idle sessions at the default 1 s heartbeat cost the host ${r.host_idle_cpu_pct}% of a core (${r.host_cpu_us_per_session_per_s} us per session per s); clients ~${r.clients_cpu_pct_approx}%`,
  );
  return r;
}

async function scenario(
  host: HostChild,
  cfg: Config,
  N: number,
  pad: string,
  all: Client[],
  quick: boolean,
): Promise<SuspendResult> {
  // idle: 'short' for states without heartbeats; 'heartbeat' spans one whole heartbeat interval, so
  // every attached session pings (both ways) exactly once inside the window.
  // workerGc: only where the worker heap is small (see WORKER_GC); elsewhere its heapUsed is read as is.
  const measure = async (
    label: string,
    idle: 'short' | 'heartbeat' | 'none',
    workerGc: boolean,
  ): Promise<MemSnapshot> => {
    const idleMs = idle === 'none' ? 0 : idle === 'short' ? cfg.idleMs : Math.max(cfg.idleMs, cfg.heartbeatMs);
    const m = await host.call<MemSnapshot>({ cmd: 'measure', label, workerGc: WORKER_GC && workerGc, idleMs });
    progress(`${label}: ${describe(m)}`);
    return m;
  };

  // 1. warm-up: every path once, then everything closed.
  {
    const warm = await openMany(host.url, cfg, cfg.warmup, cfg.warmup, pad);
    all.push(...warm);
    await waitAcked(warm, 'warm-up');
    for (const [i, c] of warm.entries()) await resumeOne(c, undefined, i % 2 ? host.tcpUrl : undefined);
    for (const c of warm) {
      c.gate.open = false;
      c.s.reconnectNow();
    }
    await waitStates(host, (s) => (s.sessions.detached ?? 0) === warm.length, 'warm-up detach');
    await host.call<SuspendAllResult>({ cmd: 'suspendAll' });
    await host.call<InspectResult>({ cmd: 'inspect', sample: 1 });
    for (const [i, c] of warm.entries()) await resumeOne(c, 'resumed:restored', i % 2 ? host.tcpUrl : undefined);
    await closeAll(warm);
    all.length = 0;
    await waitStates(host, (s) => s.liveSessions === 0 && s.liveInstances === 0, 'warm-up close');
    progress(`warm-up: ${warm.length} sessions opened, resumed live, suspended, restored and closed`);
  }

  // 2. baseline
  const base = await measure('base', 'short', true);

  // 3. open N sessions
  const tOpen = performance.now();
  const helloMs: number[] = [];
  for (let i = 0; i < cfg.helloSequential; i++) {
    const { c, ms } = await openClient(host.url, cfg, pad);
    all.push(c);
    helloMs.push(ms);
  }
  const tBatch = performance.now();
  const rest = N - cfg.helloSequential;
  for (let i = 0; i < rest; i += cfg.openBatch) {
    all.push(...(await openMany(host.url, cfg, Math.min(cfg.openBatch, rest - i), cfg.openBatch, pad)));
    if ((i / cfg.openBatch) % 10 === 9) progress(`opened ${all.length}/${N}`);
  }
  const batchWall = (performance.now() - tBatch) / 1000;
  await waitAcked(all, 'open');
  await waitStates(host, (s) => (s.sessions.attached ?? 0) === N && s.liveInstances === N, 'all attached');
  progress(
    `opened ${N} sessions in ${round((performance.now() - tOpen) / 1000)} s (hello p50 ${dist(helloMs).p50} ms one at a time; ${round(rest / batchWall)} sessions/s in batches of ${cfg.openBatch})`,
  );

  // 4. active
  const active = await measure('active', 'heartbeat', false);
  // Reference: resuming sessions the host still holds, alternately over ws:// and tcp://.
  const liveWs: Trial[] = [];
  const liveTcp: Trial[] = [];
  for (let i = 0; i < cfg.liveResumeSample; i++) {
    const c = all[(i * 7919) % N] as Client;
    if (i % 2 === 0) liveWs.push(await resumeOne(c, undefined));
    else liveTcp.push(await resumeOne(c, undefined, host.tcpUrl));
  }
  const liveDef =
    'client-side wall time from Session.reconnectNow() on an attached session to `resumed` (the host still holds the session in memory)';
  const live = resumeFigures(liveWs, `${liveDef}; ws://`);
  const liveOverTcp = resumeFigures(liveTcp, `${liveDef}; tcp://`);
  progress(
    `live resume: to resumed p50 ${live.to_resumed.p50} ms p99 ${live.to_resumed.p99} ms (ws), p50 ${liveOverTcp.to_resumed.p50} ms p99 ${liveOverTcp.to_resumed.p99} ms (tcp)`,
  );

  // 5. clients away: every gate shut, every transport dropped
  for (const c of all) {
    c.gate.open = false;
    c.s.reconnectNow();
  }
  await waitStates(host, (s) => (s.sessions.detached ?? 0) === N, 'all detached');
  const detached = await measure('detached', 'short', false);

  // 6. suspend every session
  const sus = await host.call<SuspendAllResult>({ cmd: 'suspendAll' });
  progress(
    `suspended ${sus.count} in ${round(sus.wallMs / 1000)} s: p50 ${sus.dist.p50} ms p99 ${sus.dist.p99} ms (failures ${sus.failures}${sus.firstError ? `: ${sus.firstError}` : ''}); live sessions ${sus.liveSessionsAfter}, instances ${sus.liveInstancesAfter}`,
  );
  progress(`suspend ops (ms per session): ${opsLine(sus.ops)}`);
  if (sus.failures > 0 || sus.liveSessionsAfter !== 0) throw new Error('not every session was suspended');
  // Read the continuations back first: inspect also drops the bench's list of suspended ids, so
  // nothing of ours stays in the host's heap for the reading.
  const cont = await host.call<InspectResult>({ cmd: 'inspect', sample: 100 });
  progress(
    `continuations: session blob ${cont.session_blob_bytes.p50} B, instance blob ${cont.instance_blob_bytes.p50} B, overhead ${cont.total_overhead_bytes.p50} B (session ${cont.session_overhead_bytes.p50} + instance ${cont.instance_overhead_bytes.p50}); ${cont.with_state}/${cont.checked} hold the pad; db ${mib(cont.db_bytes.main)} + wal ${mib(cont.db_bytes.wal)}`,
  );
  if (cont.problems.length > 0) progress(`continuation problems: ${cont.problems.join('; ')}`);
  if (all.some((c) => c.ended)) throw new Error('a client session ended while suspended');
  const suspended = await measure('suspended', 'short', true);

  // 7. resume: a sample one at a time, then the rest in concurrent batches
  await host.call({ cmd: 'resumeBegin' });
  // Alternately over ws:// (the headline figure) and tcp:// (same host, same sessions).
  const trials: Trial[] = [];
  const trialsTcp: Trial[] = [];
  const sample = Math.min(cfg.resumeSample, N);
  for (let i = 0; i < sample; i++) {
    const c = all[i] as Client;
    if (i % 2 === 0) trials.push(await resumeOne(c, 'resumed:restored'));
    else trialsTcp.push(await resumeOne(c, 'resumed:restored', host.tcpUrl));
  }
  const server = await host.call<ResumeServerStats>({ cmd: 'resumeEnd' });
  const resumeDef =
    'client-side wall time from Session.reconnectNow() on a session whose host-side state is only in the Store, to the `resumed` event (new transport, CHALLENGE/RESUME/RESUMED, restore from SQLite into the worker); one session at a time';
  const resume = { ...resumeFigures(trials, `${resumeDef}; ws://`), server };
  const resumeOverTcp = resumeFigures(trialsTcp, `${resumeDef}; tcp://`);
  progress(
    `resume (suspended): to resumed p50 ${resume.to_resumed.p50} ms p99 ${resume.to_resumed.p99} ms; to first message p50 ${resume.to_first_message.p50} ms; phases p50: ${Object.entries(
      resume.phases,
    )
      .map(([k, v]) => `${k} ${v.p50}`)
      .join(', ')}`,
  );
  progress(
    `resume (suspended) over tcp: to resumed p50 ${resumeOverTcp.to_resumed.p50} ms p99 ${resumeOverTcp.to_resumed.p99} ms; connect p50 ${resumeOverTcp.phases.connector_call_to_transport_open.p50} ms`,
  );
  progress(
    `resume server (ws and tcp): restore() p50 ${server.restore.p50} ms (verify ${server.verify.p50}), accept->restored p50 ${server.accept_to_restored.p50} ms; ops (ms per session): ${opsLine(server.ops)}`,
  );

  const burst: Trial[] = [];
  const tBurst = performance.now();
  for (let i = sample; i < N; i += cfg.resumeBatch) {
    const batch = all.slice(i, Math.min(N, i + cfg.resumeBatch));
    burst.push(...(await Promise.all(batch.map((c) => resumeOne(c, 'resumed:restored')))));
  }
  const burstWall = (performance.now() - tBurst) / 1000;
  if (burst.length > 0) {
    progress(
      `resume burst: ${burst.length} in ${round(burstWall)} s (${round(burst.length / burstWall)} /s), to resumed p50 ${dist(burst.map((t) => t.toResumed)).p50} ms p99 ${dist(burst.map((t) => t.toResumed)).p99} ms`,
    );
  }
  await waitAcked(all, 'resumed');
  await waitStates(host, (s) => (s.sessions.attached ?? 0) === N && s.liveInstances === N, 'all resumed');
  const resumedMem = await measure('resumed', 'heartbeat', false);

  // 8. close everything: what stays behind?
  await closeAll(all);
  await waitStates(host, (s) => s.liveSessions === 0 && s.liveInstances === 0, 'all closed');
  const closed = await measure('closed', 'none', true);

  const perSus = perSession(suspended, base, N);
  const overhead = cont.total_overhead_bytes.p50;
  const r: SuspendResult = {
    suite: 'suspend',
    sessions: N,
    state_bytes: cfg.stateBytes,
    active_bytes_per_session: Math.round((active.rss - base.rss) / N),
    suspended_bytes_per_session: Math.round((suspended.rss - base.rss) / N),
    suspended_fds_per_session: round((suspended.fds - base.fds) / N, 4),
    continuation_overhead_bytes: overhead,
    suspend_ms_p50: sus.dist.p50,
    resume_ms_p50: resume.to_resumed.p50,
    resume_ms_p99: resume.to_resumed.p99,
    targets: {
      suspended_bytes_per_session: {
        target: 1024,
        measured: Math.round((suspended.rss - base.rss) / N),
        heap_based: Math.round(perSus.js_live),
        met: (suspended.rss - base.rss) / N <= 1024,
        met_heap_based: perSus.js_live <= 1024,
      },
      suspended_fds_per_session: {
        target: 0,
        measured: round((suspended.fds - base.fds) / N, 4),
        met: suspended.fds <= base.fds,
      },
      continuation_overhead_bytes: { target: 256, measured: overhead, met: overhead <= 256 },
      resume_ms_p50: { target: 2, measured: resume.to_resumed.p50, met: resume.to_resumed.p50 <= 2 },
    },
    per_session: {
      active: perSession(active, base, N),
      detached: perSession(detached, base, N),
      suspended: perSus,
      resumed: perSession(resumedMem, base, N),
    },
    memory: { base, active, detached, suspended, resumed: resumedMem, closed },
    continuation: cont,
    open: {
      hello_sequential_ms: dist(helloMs),
      batched_sessions: rest,
      batch: cfg.openBatch,
      wall_s: round(batchWall, 2),
      sessions_per_s: round(rest / batchWall),
    },
    suspend: { ...sus, sessions_per_s: round(sus.count / (sus.wallMs / 1000)) },
    resume,
    resume_tcp: resumeOverTcp,
    live_resume: live,
    live_resume_tcp: liveOverTcp,
    resume_burst: {
      sessions: burst.length,
      batch: cfg.resumeBatch,
      wall_s: round(burstWall, 2),
      sessions_per_s: round(burst.length / burstWall),
      to_resumed: dist(burst.map((t) => t.toResumed)),
      to_first_message: dist(burst.map((t) => t.toFirst)),
    },
    idle_cpu_pct: {
      base: round(base.idleCpuPct, 2),
      active: round(active.idleCpuPct, 2),
      detached: round(detached.idleCpuPct, 2),
      suspended: round(suspended.idleCpuPct, 2),
      resumed: round(resumedMem.idleCpuPct, 2),
      active_us_per_session_per_s: round(((active.idleCpuPct - base.idleCpuPct) * 10_000) / N, 1),
    },
    heartbeat_probe: undefined,
    meta: {
      node: process.version,
      date: new Date().toISOString(),
      quick,
      cpu_model: os.cpus()[0]?.model ?? 'unknown',
      cpus: os.cpus().length,
      platform: `${os.platform()} ${os.release()} ${os.arch()}`,
      transport: 'ws:// on 127.0.0.1 (host and clients in separate processes)',
      service: 'counter (test/support/services/counter.ts), one per-session instance per session',
      counter_timer: 'off (no `start` sent): instance state is the 4 KiB pad only',
      worker_gc: WORKER_GC,
      heartbeat: `${cfg.heartbeatMs} ms on both sides (roam default 1000 ms; see heartbeat_probe)`,
      store: 'SQLite (openSqliteStore) in a temp dir, WAL, synchronous=FULL',
      config: cfg,
      duration_s: 0,
      loadavg_start: [],
      loadavg_end: [],
      notes: [
        'per-session memory = (reading - baseline) / sessions, after GC on the host main thread (4x); the worker is forced to GC (by a heap snapshot, after the process-wide readings) only at base, suspended and closed, where its heap is small (memory[label].workerGcMs > 0)',
        'rss includes allocator retention: memory freed by suspended sessions that the process keeps (V8 committed pages, glibc brk heap and thread arenas; compare memory.closed, after every session ended); js_live (main heapUsed + main arrayBuffers + worker heapUsed) is the live-object view; the worker arrayBuffers (the 4 KiB pads) are not visible through WorkerStats',
        'resume.phases.resumed_to_first_message can be negative: RESUMED and the replayed `resumed:restored` arrive together and the message is delivered before the `resumed` event',
        'worker heap is read through private fields (Host has no worker stats API)',
      ],
    },
  };
  return r;
}

function opsLine(ops: Record<string, OpStat>): string {
  return Object.entries(ops)
    .map(([k, v]) => `${k} ${v.ms_per_session} (x${v.per_session}, p50 ${v.p50_ms})`)
    .join(', ');
}

/** Human summary. */
export function summarize(r: SuspendResult): string {
  const lines: string[] = [];
  const pad = (s: string | number, n: number): string => String(s).padStart(n);
  lines.push(
    `suspend bench (${r.meta.quick ? 'quick' : 'full'}, ${r.sessions} sessions x ${r.state_bytes} B state, node ${r.meta.node}, ${r.meta.cpu_model} x${r.meta.cpus})`,
  );
  lines.push('');
  lines.push(
    `${'per session vs baseline'.padEnd(24)}${pad('rss', 10)}${pad('rss anon', 10)}${pad('heap', 10)}${pad('arrbuf', 10)}${pad('wrk heap', 10)}${pad('js live', 10)}${pad('fds', 8)}`,
  );
  for (const [k, v] of Object.entries(r.per_session)) {
    lines.push(
      `${k.padEnd(24)}${pad(v.rss, 10)}${pad(v.rss_anon, 10)}${pad(v.heap_used, 10)}${pad(v.array_buffers, 10)}${pad(v.worker_heap_used, 10)}${pad(v.js_live, 10)}${pad(v.fds, 8)}`,
    );
  }
  lines.push('');
  const c = r.continuation;
  lines.push(
    `continuation: overhead ${r.continuation_overhead_bytes} B/session (session ${c.session_overhead_bytes.p50} + instance ${c.instance_overhead_bytes.p50}); blobs ${c.session_blob_bytes.p50} + ${c.instance_blob_bytes.p50} B; store ${c.store_bytes_per_session} B/session`,
  );
  lines.push('');
  lines.push(`${'ms'.padEnd(40)}${pad('p50', 9)}${pad('p99', 9)}`);
  lines.push(
    `${'suspendSession (one at a time)'.padEnd(40)}${pad(r.suspend.dist.p50, 9)}${pad(r.suspend.dist.p99, 9)}`,
  );
  lines.push(
    `${'resume suspended -> resumed'.padEnd(40)}${pad(r.resume.to_resumed.p50, 9)}${pad(r.resume.to_resumed.p99, 9)}`,
  );
  lines.push(
    `${'resume suspended -> first message'.padEnd(40)}${pad(r.resume.to_first_message.p50, 9)}${pad(r.resume.to_first_message.p99, 9)}`,
  );
  for (const [k, v] of Object.entries(r.resume.phases)) {
    lines.push(`${`  ${k.replaceAll('_', ' ')}`.padEnd(40)}${pad(v.p50, 9)}${pad(v.p99, 9)}`);
  }
  lines.push(
    `${'  server: restore()'.padEnd(40)}${pad(r.resume.server.restore.p50, 9)}${pad(r.resume.server.restore.p99, 9)}`,
  );
  lines.push(
    `${'resume suspended over tcp -> resumed'.padEnd(40)}${pad(r.resume_tcp.to_resumed.p50, 9)}${pad(r.resume_tcp.to_resumed.p99, 9)}`,
  );
  lines.push(
    `${'resume live over tcp -> resumed'.padEnd(40)}${pad(r.live_resume_tcp.to_resumed.p50, 9)}${pad(r.live_resume_tcp.to_resumed.p99, 9)}`,
  );
  lines.push(
    `${'resume live -> resumed (reference)'.padEnd(40)}${pad(r.live_resume.to_resumed.p50, 9)}${pad(r.live_resume.to_resumed.p99, 9)}`,
  );
  lines.push(
    `${`resume burst x${r.resume_burst.batch} -> resumed`.padEnd(40)}${pad(r.resume_burst.to_resumed.p50, 9)}${pad(r.resume_burst.to_resumed.p99, 9)}`,
  );
  lines.push(
    `${'hello (new session, one at a time)'.padEnd(40)}${pad(r.open.hello_sequential_ms.p50, 9)}${pad(r.open.hello_sequential_ms.p99, 9)}`,
  );
  lines.push('');
  lines.push('targets:');
  for (const [k, v] of Object.entries(r.targets)) {
    if ('heap_based' in v) {
      lines.push(
        `  ${k.padEnd(30)} target ${pad(v.target, 6)}  measured ${pad(v.measured, 9)}  ${v.met ? 'met' : 'MISSED'} (rss); heap-based ${v.heap_based}: ${v.met_heap_based ? 'met' : 'MISSED'}`,
      );
      continue;
    }
    lines.push(
      `  ${k.padEnd(30)} target ${pad(v.target, 6)}  measured ${pad(v.measured, 9)}  ${v.met ? 'met' : 'MISSED'}`,
    );
  }
  lines.push('');
  lines.push(
    `idle host cpu %: base ${r.idle_cpu_pct.base}, active ${r.idle_cpu_pct.active}, detached ${r.idle_cpu_pct.detached}, suspended ${r.idle_cpu_pct.suspended}, resumed ${r.idle_cpu_pct.resumed}`,
  );
  const hp = r.heartbeat_probe;
  if (hp) {
    lines.push(
      `heartbeat probe: ${hp.sessions} idle sessions at ${hp.heartbeat_ms} ms heartbeat: host ${hp.host_idle_cpu_pct}% of a core (${hp.host_cpu_us_per_session_per_s} us/session/s); at ${r.meta.config.heartbeatMs} ms: ${r.idle_cpu_pct.active_us_per_session_per_s} us/session/s`,
    );
  }
  lines.push(
    `took ${r.meta.duration_s} s (load average ${r.meta.loadavg_start.join(' ')} -> ${r.meta.loadavg_end.join(' ')})`,
  );
  return lines.join('\n');
}
