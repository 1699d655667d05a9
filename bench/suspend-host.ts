/**
 * Host half of the `suspend` bench, run as a child process by bench/suspend.ts:
 *
 *   node --expose-gc --import tsx bench/suspend-host.ts
 *
 * Runs a roam Host with the `counter` test service (test/support/services/counter.ts) and a SQLite
 * Store in a fresh temp directory, listening on ws://127.0.0.1:0, and answers the control commands
 * of bench/suspend-proto.ts over IPC. Grace suspension and continuation GC are pushed out of the
 * way (1 h) so the bench decides when sessions are suspended. BENCH_HEARTBEAT_MS sets the engine
 * heartbeat of the host's sessions (roam's default when unset).
 *
 * Instrumentation (bench-only, no change to src/): the Store is wrapped in a Proxy that times
 * every call, ServiceWorker.prototype.request is wrapped to time every worker round trip, and the
 * session server's `restore` hook is wrapped to time whole restores and their proof checks.
 * Timings are recorded only during `suspendAll` and between `resumeBegin` / `resumeEnd`.
 *
 * Exits by itself (Host closed, Store closed, temp dir removed) on `shutdown` or when the IPC
 * channel closes.
 */
import { createWriteStream, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { writeHeapSnapshot } from 'node:v8';
import type { Worker } from 'node:worker_threads';
import { Host, type SessionServerOptions, silentLogger } from '../src/host/index.js';
import { ServiceWorker } from '../src/host/service-worker.js';
import { type Continuation, continuationOverhead, decodeContinuation } from '../src/service/continuation.js';
import type { WorkerStats } from '../src/service/protocol.js';
import type { Transport } from '../src/session/index.js';
import { openSqliteStore, type Store } from '../src/store/index.js';
import {
  dist,
  type HostHello,
  type HostRequest,
  type HostStates,
  type InspectResult,
  type MemSnapshot,
  opStats,
  type ResumeServerStats,
  type SuspendAllResult,
} from './suspend-proto.js';

/**
 * Diagnostics: when set, heap snapshots of the main thread and the worker, and /proc/self/smaps,
 * are written there at every `measure` (the snapshots take long at 10,000 sessions).
 */
const SNAPSHOT_DIR = process.env.BENCH_HEAPSNAPSHOT_DIR;
const COUNTER = new URL('../test/support/services/counter.ts', import.meta.url);
const HOUR = 3600_000;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------------
// instrumentation

/** Durations (ms) by op name, recorded only while `recording`. */
let recording = false;
let ops = new Map<string, number[]>();
function record(name: string, ms: number): void {
  if (!recording) return;
  let xs = ops.get(name);
  if (!xs) {
    xs = [];
    ops.set(name, xs);
  }
  xs.push(ms);
}

/** A Store whose calls are timed (better-sqlite3 runs them synchronously, so this is their real cost). */
function timedStore(store: Store): Store {
  const cache = new Map<PropertyKey, unknown>();
  return new Proxy(store, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (typeof v !== 'function') return v;
      let wrapped = cache.get(prop);
      if (!wrapped) {
        const fn = v as (...args: unknown[]) => unknown;
        wrapped =
          prop === 'watch' || prop === 'close'
            ? fn.bind(target)
            : async (...args: unknown[]): Promise<unknown> => {
                const t0 = performance.now();
                try {
                  return await fn.apply(target, args);
                } finally {
                  record(`store.${String(prop)}`, performance.now() - t0);
                }
              };
        cache.set(prop, wrapped);
      }
      return wrapped;
    },
  });
}

// Every worker round trip, by op. (The prototype is patched before the Host creates its workers.)
{
  const proto = ServiceWorker.prototype as unknown as { request: (m: { op: string }) => Promise<unknown> };
  const orig = proto.request;
  proto.request = function (this: ServiceWorker, m: { op: string }): Promise<unknown> {
    const t0 = performance.now();
    const p = orig.call(this, m);
    p.then(
      () => record(`worker.${m.op}`, performance.now() - t0),
      () => {},
    );
    return p;
  };
}

// ---------------------------------------------------------------------------------------------

const dir = await mkdtemp(join(tmpdir(), 'roam-bench-suspend-'));
const dbPath = join(dir, 'roam.db');
const rawStore = await openSqliteStore({ path: dbPath });
/** Engine heartbeat of every session (BENCH_HEARTBEAT_MS); roam's default (1 s) when unset. */
const heartbeatMs = process.env.BENCH_HEARTBEAT_MS ? Number(process.env.BENCH_HEARTBEAT_MS) : undefined;
const host = await Host.start({
  store: timedStore(rawStore),
  services: [{ name: 'counter', module: COUNTER }],
  graceMs: HOUR,
  gcIntervalMs: HOUR,
  logger: silentLogger(),
  ...(heartbeatMs ? { server: { engine: { heartbeatMs } } } : {}),
});

// Restore timing: the server calls opts.restore at RESUME time, so wrapping the property works.
const restoreMs: number[] = [];
const verifyMs: number[] = [];
const acceptToRestoredMs: number[] = [];
{
  const srvOpts = (host.server as unknown as { opts: SessionServerOptions }).opts;
  const orig = srvOpts.restore;
  if (orig) {
    srvOpts.restore = async (sid, verify) => {
      const t0 = performance.now();
      try {
        return await orig(sid, async (key) => {
          const t1 = performance.now();
          try {
            await verify(key);
          } finally {
            if (recording) verifyMs.push(performance.now() - t1);
          }
        });
      } finally {
        if (recording) restoreMs.push(performance.now() - t0);
      }
    };
  }
  // Server-side time from a transport being accepted to the restore finishing. Resumes are timed
  // one at a time by the parent, so the latest accept belongs to the session being restored.
  let lastAccept = 0;
  const server = host.server as unknown as { accept: (t: Transport) => void };
  const accept = server.accept.bind(host.server);
  server.accept = (t: Transport) => {
    lastAccept = performance.now();
    accept(t);
  };
  host.on('restored', () => {
    if (recording && lastAccept > 0) acceptToRestoredMs.push(performance.now() - lastAccept);
  });
}

function counterWorker(): ServiceWorker {
  const w = (host as unknown as { workers: Map<string, { worker: ServiceWorker }> }).workers.get('counter');
  if (!w) throw new Error('no counter worker');
  return w.worker;
}

function sessionStates(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of host.server.allSessions()) out[s.state] = (out[s.state] ?? 0) + 1;
  return out;
}

/**
 * Resident memory by kind of mapping (/proc/self/smaps), bytes: the brk heap (main-thread malloc),
 * glibc per-thread malloc arenas (anonymous, 64 MiB-aligned: the worker's and libuv threads'
 * mallocs), other anonymous mappings (V8 heap pages, large mallocs, thread stacks), file mappings.
 */
function smaps(): MemSnapshot['smaps'] {
  const out = { brk_heap: 0, thread_arenas: 0, anon_other: 0, file: 0 };
  let text: string;
  try {
    text = readFileSync('/proc/self/smaps', 'utf8');
  } catch {
    return out;
  }
  let kind: keyof typeof out = 'anon_other';
  const ARENA = 64n * 1024n * 1024n;
  for (const line of text.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      const start = BigInt(`0x${head[1]}`);
      const end = BigInt(`0x${head[2]}`);
      const path = head[3] ?? '';
      if (path === '[heap]') kind = 'brk_heap';
      else if (path !== '' && !path.startsWith('[')) kind = 'file';
      else if (path === '' && start % ARENA === 0n && end - start <= ARENA) kind = 'thread_arenas';
      else kind = 'anon_other';
      continue;
    }
    if (line.startsWith('Rss:')) out[kind] += Number(/(\d+)/.exec(line)?.[1] ?? 0) * 1024;
  }
  return out;
}

function procStatus(): { rssAnon: number; rssFile: number; rssShmem: number } {
  const text = readFileSync('/proc/self/status', 'utf8');
  const kb = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : Number.NaN;
  };
  return { rssAnon: kb('RssAnon'), rssFile: kb('RssFile'), rssShmem: kb('RssShmem') };
}

async function collect(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run the host child with --expose-gc');
  for (let i = 0; i < 4; i++) {
    gc();
    await sleep(25);
  }
}

async function measure(label: string, workerGc: boolean, idleMs: number): Promise<MemSnapshot> {
  let idleCpuPct = Number.NaN;
  if (idleMs > 0) {
    // Collect first, so the idle window does not pay for the garbage of what just happened.
    await collect();
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await sleep(idleMs);
    const d = process.cpuUsage(c0);
    idleCpuPct = (d.user + d.system) / 10 / (performance.now() - t0);
  }
  // Process-wide readings first, before the worker snapshot below allocates (and frees) its own
  // buffers.
  await collect();
  const mu = process.memoryUsage();
  const status = procStatus();
  const maps = smaps();
  const fds = readdirSync('/proc/self/fd').length;
  const sw = counterWorker();
  let workerGcMs = 0;
  if (workerGc) {
    // No API makes the worker collect garbage; a heap snapshot does a full GC first. The snapshot
    // itself is drained and thrown away.
    const t0 = performance.now();
    const w = (sw as unknown as { worker: Worker }).worker;
    const stream = await w.getHeapSnapshot();
    if (SNAPSHOT_DIR) {
      await pipeline(stream, createWriteStream(join(SNAPSHOT_DIR, `suspend-worker-${label}.heapsnapshot`)));
    } else {
      for await (const _chunk of stream) {
        // discard
      }
    }
    workerGcMs = performance.now() - t0;
    await collect();
  }
  const ws = await sw.request<WorkerStats>({ op: 'stats' });
  if (SNAPSHOT_DIR) {
    writeFileSync(join(SNAPSHOT_DIR, `suspend-host-${label}.smaps`), readFileSync('/proc/self/smaps'));
    writeHeapSnapshot(join(SNAPSHOT_DIR, `suspend-host-${label}.heapsnapshot`));
  }
  return {
    label,
    rss: mu.rss,
    heapTotal: mu.heapTotal,
    heapUsed: mu.heapUsed,
    external: mu.external,
    arrayBuffers: mu.arrayBuffers,
    ...status,
    smaps: maps,
    workerHeapUsed: ws.heapUsed,
    workerGcMs,
    fds,
    sessions: sessionStates(),
    liveSessions: host.liveSessions,
    liveInstances: host.liveInstances,
    workerInstances: ws.instances,
    workerSessions: ws.sessions,
    idleCpuPct,
  };
}

function states(): HostStates {
  const c = host.counters;
  return {
    sessions: sessionStates(),
    liveSessions: host.liveSessions,
    liveInstances: host.liveInstances,
    counters: {
      suspended: c.suspended,
      restored: c.restored,
      instancesSuspended: c.instancesSuspended,
      instancesRestored: c.instancesRestored,
    },
  };
}

/** Session ids suspended by the last suspendAll, in order. */
let suspendedIds: string[] = [];

async function suspendAll(): Promise<SuspendAllResult> {
  const ids = [...host.server.allSessions()].map((s) => s.id);
  const ms: number[] = [];
  let failures = 0;
  let firstError: string | undefined;
  ops = new Map();
  recording = true;
  const t0 = performance.now();
  for (const sid of ids) {
    const t = performance.now();
    try {
      await host.suspendSession(sid);
      ms.push(performance.now() - t);
    } catch (err) {
      failures++;
      firstError ??= (err as Error).message;
    }
  }
  const wallMs = performance.now() - t0;
  recording = false;
  suspendedIds = ids;
  const opSummary = opStats(ops, ids.length);
  // Nothing of the bench's own bookkeeping may stay behind for the memory reading that follows.
  ops = new Map();
  return {
    count: ids.length,
    dist: dist(ms),
    wallMs,
    ops: opSummary,
    liveSessionsAfter: host.liveSessions,
    liveInstancesAfter: host.liveInstances,
    failures,
    firstError,
  };
}

function stateBytes(c: Continuation): number {
  const enc = new TextEncoder();
  let n = 0;
  const count = (entries: Array<[string, Uint8Array]>): void => {
    for (const [k, v] of entries) n += enc.encode(k).length + v.length;
  };
  count(c.instanceState);
  for (const s of c.sessions) count(s.state);
  return n;
}

async function inspect(sample: number): Promise<InspectResult> {
  const dec = new TextDecoder();
  const col = {
    sessionBlob: [] as number[],
    instanceBlob: [] as number[],
    sessionOver: [] as number[],
    instanceOver: [] as number[],
    totalOver: [] as number[],
    state: [] as number[],
    sessionMeta: [] as number[],
    instanceMeta: [] as number[],
    keys: [] as number[],
  };
  const problems: string[] = [];
  let checked = 0;
  let withState = 0;
  for (const [i, sid] of suspendedIds.entries()) {
    const key = `roam.session.${sid}`;
    try {
      const meta = await rawStore.get(key);
      const sblob = await rawStore.getBlob(key);
      if (!meta || !sblob) throw new Error('session continuation missing');
      const m = JSON.parse(dec.decode(meta.value)) as { inst: string; service: string };
      const ikey = `roam.instance.${m.service}.${m.inst}`;
      const imeta = await rawStore.get(ikey);
      const iblob = await rawStore.getBlob(ikey);
      if (!imeta || !iblob) throw new Error('instance continuation missing');
      const sc = decodeContinuation(sblob);
      const ic = decodeContinuation(iblob);
      checked++;
      const pad = ic.instanceState.find(([k]) => k === 'pad')?.[1];
      if (pad && pad.length >= 4096) withState++;
      if (i < sample) {
        const so = continuationOverhead(sc);
        const io = continuationOverhead(ic);
        col.sessionBlob.push(sblob.length);
        col.instanceBlob.push(iblob.length);
        col.sessionOver.push(so);
        col.instanceOver.push(io);
        col.totalOver.push(so + io);
        col.state.push(stateBytes(sc) + stateBytes(ic));
        col.sessionMeta.push(meta.value.length);
        col.instanceMeta.push(imeta.value.length);
        col.keys.push(2 * key.length + 2 * ikey.length);
      }
    } catch (err) {
      if (problems.length < 10) problems.push(`${sid}: ${(err as Error).message}`);
    }
  }
  suspendedIds = [];
  const size = (p: string): number => {
    try {
      return statSync(p).size;
    } catch {
      return 0;
    }
  };
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  return {
    sampled: col.totalOver.length,
    session_blob_bytes: dist(col.sessionBlob, 0),
    instance_blob_bytes: dist(col.instanceBlob, 0),
    session_overhead_bytes: dist(col.sessionOver, 0),
    instance_overhead_bytes: dist(col.instanceOver, 0),
    total_overhead_bytes: dist(col.totalOver, 0),
    state_bytes: dist(col.state, 0),
    session_meta_bytes: dist(col.sessionMeta, 0),
    instance_meta_bytes: dist(col.instanceMeta, 0),
    store_bytes_per_session: Math.round(
      mean(col.sessionBlob) + mean(col.instanceBlob) + mean(col.sessionMeta) + mean(col.instanceMeta) + mean(col.keys),
    ),
    checked,
    with_state: withState,
    problems,
    db_bytes: { main: size(dbPath), wal: size(`${dbPath}-wal`), shm: size(`${dbPath}-shm`) },
  };
}

function resumeBegin(): void {
  ops = new Map();
  restoreMs.length = 0;
  verifyMs.length = 0;
  acceptToRestoredMs.length = 0;
  recording = true;
}

function resumeEnd(): ResumeServerStats {
  recording = false;
  const r: ResumeServerStats = {
    restores: restoreMs.length,
    restore: dist(restoreMs),
    verify: dist(verifyMs),
    accept_to_restored: dist(acceptToRestoredMs),
    ops: opStats(ops, restoreMs.length),
  };
  ops = new Map();
  restoreMs.length = 0;
  verifyMs.length = 0;
  acceptToRestoredMs.length = 0;
  return r;
}

// ---------------------------------------------------------------------------------------------

let stopping = false;
async function shutdown(): Promise<void> {
  if (stopping) return;
  stopping = true;
  setTimeout(() => {
    process.stderr.write(`suspend-host: still alive 10 s after shutdown: ${process.getActiveResourcesInfo()}\n`);
    process.exit(1);
  }, 10_000).unref();
  await host.close();
  await rawStore.close();
  await rm(dir, { recursive: true, force: true });
  if (process.connected) process.disconnect();
}

async function handle(m: HostRequest): Promise<unknown> {
  switch (m.cmd) {
    case 'measure':
      return measure(m.label, m.workerGc, m.idleMs);
    case 'states':
      return states();
    case 'suspendAll':
      return suspendAll();
    case 'inspect':
      return inspect(m.sample);
    case 'resumeBegin':
      resumeBegin();
      return undefined;
    case 'resumeEnd':
      return resumeEnd();
    case 'shutdown':
      await shutdown();
      return undefined;
  }
}

process.on('message', (raw: unknown) => {
  const m = raw as HostRequest;
  const reply = (r: object): void => {
    if (process.connected) process.send?.(r);
  };
  // A shutdown reply must leave before the channel closes.
  if (m.cmd === 'shutdown') reply({ id: m.id, ok: true, value: undefined });
  handle(m).then(
    (value) => {
      if (m.cmd !== 'shutdown') reply({ id: m.id, ok: true, value });
    },
    (err: unknown) => reply({ id: m.id, ok: false, error: (err as Error)?.stack ?? String(err) }),
  );
});
process.on('disconnect', () => void shutdown());

const listener = await host.listen('ws://127.0.0.1:0');
const tcpListener = await host.listen('tcp://127.0.0.1:0');
const hello: HostHello = { type: 'listening', url: listener.url, tcpUrl: tcpListener.url, pid: process.pid, dbPath };
process.send?.(hello);
