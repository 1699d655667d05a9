/**
 * `session` suite: roam sessions over ws:// against raw `ws`, client and server in separate
 * processes (the server is bench/session-server.ts, spawned here).
 *
 *  1. throughput: one-way client->server msgs/s for several payload sizes, as fast as
 *     backpressure allows, until the server reports it received everything;
 *  2. one-way latency at a fixed moderate rate, 64-byte payloads carrying hrtime;
 *  3. resume: `reconnectNow()` then a `send` while suspended, timed until its echo comes back
 *     (the message is replayed on the new transport), plus the `gapMs` of the `resumed` event.
 *
 * roam and ws trials alternate (and alternate which goes first), because small machines are noisy.
 *
 * Extra node flags for the server child (e.g. a CPU profile) come from BENCH_SERVER_NODE_ARGS,
 * whitespace-separated: BENCH_SERVER_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof".
 */
import { type ChildProcess, spawn } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { connect, type Session } from '../src/client/node.js';
import { connectTransport, WsTransport } from '../src/transport/index.js';
import { CONTROL_CHANNEL, readStamp, type SinkReply, writeStamp } from './session-sink.js';

export interface SessionSuiteOptions {
  quick: boolean;
  /** Subset of 'throughput', 'latency', 'resume' (default all); handy under a profiler. */
  only?: string[] | undefined;
  /** Only these sides ('roam', 'ws'); default both. Ratios need both. */
  sides?: string[] | undefined;
  /** Throughput payload sizes in bytes (default 64, 1024, 65536). */
  sizes?: number[] | undefined;
  /**
   * Latency breakdown: timestamps where each message enters `ws.send` on the client and where its
   * WebSocket message arrives at the server (server child runs with BENCH_DIAG=1).
   */
  diag?: boolean | undefined;
}

export interface ThroughputRow {
  size: number;
  roam_msgs_per_s: number;
  ws_msgs_per_s: number;
  ratio: number;
  roam_mib_per_s: number;
  ws_mib_per_s: number;
  /** Median CPU time (user + system) per message, client and server process, per side. */
  roam_client_cpu_us_per_msg: number;
  roam_server_cpu_us_per_msg: number;
  ws_client_cpu_us_per_msg: number;
  ws_server_cpu_us_per_msg: number;
  msgs_per_trial: number;
  roam_trials_msgs_per_s: number[];
  ws_trials_msgs_per_s: number[];
}

export interface SessionResult {
  suite: 'session';
  throughput: ThroughputRow[];
  latency_us: {
    roam_p50: number;
    roam_p99: number;
    ws_p50: number;
    ws_p99: number;
    /** roam minus ws at the same percentile. */
    overhead_p50: number;
    overhead_p99: number;
    roam_mean: number;
    ws_mean: number;
    roam_max: number;
    ws_max: number;
    roam_samples: number;
    ws_samples: number;
    /** Median over segments of CPU time per message (includes timers, ACKs, heartbeats, idle wake-ups). */
    roam_client_cpu_us_per_msg: number;
    roam_server_cpu_us_per_msg: number;
    ws_client_cpu_us_per_msg: number;
    ws_server_cpu_us_per_msg: number;
    rate_msgs_per_s: number;
    payload_bytes: number;
    seconds_per_side: number;
    /** --diag only: where the one-way time goes, per side (p50/p99 of each leg, µs). */
    breakdown_us?: { roam: Breakdown | undefined; ws: Breakdown | undefined };
  };
  resume_ms: {
    /** From the `reconnectNow()` call to the delivery of the echo of a message sent while suspended. */
    p50: number;
    p99: number;
    definition: string;
    /** `gapMs` of the client's `resumed` event: transport detached -> new transport attached. */
    resumed_gap_p50: number;
    resumed_gap_p99: number;
    /** From `reconnectNow()` to the client's `resumed` event. */
    reconnect_to_resumed_p50: number;
    reconnect_to_resumed_p99: number;
    /** Where the time goes, per trial (ms, p50/p99 of each phase); phases add up to p50/p99 only roughly. */
    phases?: {
      reconnect_to_connector_call: { p50: number; p99: number };
      connector_call_to_transport_open: { p50: number; p99: number };
      transport_open_to_resumed: { p50: number; p99: number };
      resumed_to_echo: { p50: number; p99: number };
    };
    /** Context, not a resume: raw ws, new WebSocket + open + one echo round trip. */
    ws_fresh_connect_echo_p50: number;
    ws_fresh_connect_echo_p99: number;
    /** Messages the client replayed per resume, as reported by `resumed` (expected 1). */
    replayed_per_resume: number[];
    trials: number;
  };
  meta: {
    node: string;
    date: string;
    quick: boolean;
    diag: boolean;
    cpu_model: string;
    cpus: number;
    platform: string;
    ws_version: string;
    trials: { throughput: number; latency_segments: number; resume: number };
    config: Config;
    duration_s: number;
  };
}

interface Breakdown {
  /** Client: stamp written -> `session.send()` / `ws.send()` returned (ws: includes its write syscall). */
  stamp_to_send_returned: { p50: number; p99: number };
  /** Client: stamp written -> the `ws.send` call that carries the message (roam: session + framing + batching). */
  stamp_to_ws_send: { p50: number; p99: number };
  /** Stamp -> the WebSocket message reaches the server's `message` listeners (before roam code there). */
  stamp_to_server_ws_message: { p50: number; p99: number };
  /** Server: WebSocket `message` -> sink (roam: transport, decoder, engine, service). */
  server_ws_message_to_sink: { p50: number; p99: number };
}

interface Config {
  sizes: number[];
  /** Bytes of payload per throughput trial (the message count is derived, capped below). */
  bytesPerTrial: number;
  maxMsgsPerTrial: number;
  throughputTrials: number;
  /** Roam's send() backpressure is its replay window; ws gets a userland high-water mark of this. */
  wsHighWaterBytes: number;
  latencyRate: number;
  latencySegments: number;
  latencySegmentMs: number;
  latencyWarmupMs: number;
  resumeTrials: number;
}

function config(quick: boolean): Config {
  return quick
    ? {
        sizes: [64, 1024, 64 * 1024],
        bytesPerTrial: 8 * 1024 * 1024,
        maxMsgsPerTrial: 50_000,
        throughputTrials: 3,
        wsHighWaterBytes: 4 * 1024 * 1024,
        latencyRate: 1000,
        latencySegments: 4,
        latencySegmentMs: 250,
        latencyWarmupMs: 200,
        resumeTrials: 50,
      }
    : {
        sizes: [64, 1024, 64 * 1024],
        bytesPerTrial: 64 * 1024 * 1024,
        maxMsgsPerTrial: 200_000,
        throughputTrials: 7,
        wsHighWaterBytes: 4 * 1024 * 1024,
        latencyRate: 1000,
        latencySegments: 10,
        latencySegmentMs: 250,
        latencyWarmupMs: 300,
        resumeTrials: 200,
      };
}

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const TRIAL_TIMEOUT_MS = 60_000;
const enc = new TextEncoder();
const dec = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// small helpers

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Nearest-rank percentile of an ascending array. */
function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function progress(msg: string): void {
  process.stderr.write(`  ${msg}\n`);
}

/** Rejects once the server child dies unexpectedly, so every wait below fails fast instead of hanging. */
let serverGone: Promise<never> = new Promise<never>(() => {});

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, t, serverGone]).finally(() => clearTimeout(timer));
}

/** Waits for control replies of a given type, in order. An `error` reply fails every waiter. */
class Replies {
  private waiters: Array<{
    type: SinkReply['type'];
    resolve: (r: SinkReply) => void;
    reject: (e: Error) => void;
  }> = [];

  push(json: string): void {
    const r = JSON.parse(json) as SinkReply;
    if (r.type === 'error') {
      const err = new Error(`sink: ${r.message}`);
      for (const w of this.waiters.splice(0)) w.reject(err);
      return;
    }
    const i = this.waiters.findIndex((w) => w.type === r.type);
    if (i < 0) return;
    const [w] = this.waiters.splice(i, 1);
    w?.resolve(r);
  }

  wait<T extends SinkReply['type']>(type: T, what: string): Promise<Extract<SinkReply, { type: T }>> {
    const p = new Promise<SinkReply>((resolve, reject) => this.waiters.push({ type, resolve, reject }));
    return withTimeout(p, TRIAL_TIMEOUT_MS, what) as Promise<Extract<SinkReply, { type: T }>>;
  }
}

// ---------------------------------------------------------------------------------------------
// the server child

interface ServerChild {
  roamUrl: string;
  wsUrl: string;
  child: ChildProcess;
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; forced: boolean }>;
}

async function startServer(diag: boolean): Promise<ServerChild> {
  const extra = (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const child = spawn(process.execPath, [...extra, '--import', 'tsx', 'bench/session-server.ts'], {
    cwd: REPO_ROOT,
    stdio: ['pipe', 'pipe', 'inherit', 'ipc'],
    env: { ...process.env, BENCH_DIAG: diag ? '1' : '0' },
  });
  let stopping = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  serverGone = exited.then(({ code, signal }) => {
    throw new Error(`server child exited ${stopping ? 'during shutdown' : 'unexpectedly'} (${code ?? signal})`);
  });
  serverGone.catch(() => {});
  const stdout = child.stdout;
  if (!stdout) throw new Error('server child has no stdout');
  const line = await withTimeout(
    new Promise<string>((resolve, reject) => {
      let buf = '';
      const onData = (chunk: Buffer): void => {
        buf += chunk.toString('utf8');
        const nl = buf.indexOf('\n');
        if (nl >= 0) {
          stdout.off('data', onData);
          resolve(buf.slice(0, nl));
        }
      };
      stdout.on('data', onData);
      void exited.then(({ code, signal }) => reject(new Error(`server child exited early (${code ?? signal})`)));
    }),
    20_000,
    'server child start',
  ).catch((err: unknown) => {
    child.kill('SIGKILL');
    throw err;
  });
  // Keep draining stdout so a chatty child can never block on a full pipe.
  stdout.resume();
  const info = JSON.parse(line) as { roam: string; ws: string };
  return {
    roamUrl: info.roam,
    wsUrl: info.ws,
    child,
    async stop() {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null) {
        if (child.connected) child.send({ type: 'shutdown' });
        child.stdin?.end();
      }
      let forced = false;
      const timer = setTimeout(() => {
        forced = true;
        child.kill('SIGKILL');
      }, 10_000);
      const r = await exited;
      clearTimeout(timer);
      if (child.connected) child.disconnect();
      return { ...r, forced };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// the two sides behind one interface

interface Side {
  readonly name: 'roam' | 'ws';
  readonly replies: Replies;
  control(cmd: string): void;
  /** Sends `n` copies of `payload` as fast as backpressure allows. */
  blast(payload: Uint8Array, n: number): Promise<void>;
  sendOne(payload: Uint8Array): void;
  close(): Promise<void>;
  /** Diagnostic mode: ns from stamp to the `ws.send` call carrying it, since the last call. */
  takeClientStack(): number[];
}

/**
 * Diagnostic connector: like roam's own ws connector, but records for every stamped 64-byte DATA
 * frame on channel 0 the time from its stamp to the `ws.send` call that carries it.
 */
function diagConnector(out: number[]): (url: string) => Promise<WsTransport> {
  return async (url) => {
    const ws = await openWs(url);
    ws.removeAllListeners();
    const send = ws.send.bind(ws) as (data: Uint8Array) => void;
    (ws as unknown as { send: (data: Uint8Array) => void }).send = (data: Uint8Array) => {
      const now = process.hrtime.bigint();
      const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
      for (let off = 0; off + 8 <= data.length; ) {
        const len = view.getUint32(off + 4);
        if (data[off + 1] === 6 && len === 10 + LATENCY_PAYLOAD && view.getUint16(off + 8) === 0) {
          out.push(Number(now - readStamp(data.subarray(off + 18))));
        }
        off += 8 + len;
      }
      send(data);
    };
    return new WsTransport(ws, '127.0.0.1');
  };
}

async function roamSide(url: string, diag: boolean): Promise<Side> {
  const stack: number[] = [];
  const s = connect(url, { service: 'sink', ...(diag ? { connector: diagConnector(stack) } : {}) });
  const replies = new Replies();
  s.on('message', (data, channel) => {
    if (channel === CONTROL_CHANNEL) replies.push(dec.decode(data));
  });
  await withTimeout(s.ready, 10_000, 'roam sink session');
  const drain = (): Promise<void> => new Promise<void>((r) => s.once('drain', r));
  return {
    name: 'roam',
    replies,
    control: (cmd) => {
      s.send(enc.encode(cmd), CONTROL_CHANNEL);
    },
    async blast(payload, n) {
      for (let i = 0; i < n; i++) {
        if (!s.send(payload)) await drain();
      }
    },
    sendOne: (p) => {
      s.send(p);
    },
    close: () => closeSession(s),
    takeClientStack: () => stack.splice(0),
  };
}

async function closeSession(s: Session): Promise<void> {
  if (s.state === 'closed' || s.state === 'lost') return;
  s.close('bench done');
}

function openWs(url: string): Promise<WebSocket> {
  return withTimeout(
    new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      ws.once('open', () => {
        ws.off('error', reject);
        resolve(ws);
      });
      ws.once('error', reject);
    }),
    10_000,
    `open ${url}`,
  );
}

function closeWs(ws: WebSocket): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve();
  return new Promise<void>((resolve) => {
    // A peer that never answers the closing handshake must not hold us for ws' 30 s default.
    const kill = setTimeout(() => ws.terminate(), 2000);
    ws.once('close', () => {
      clearTimeout(kill);
      resolve();
    });
    ws.close(1000);
  });
}

async function wsSide(url: string, highWater: number, diag: boolean): Promise<Side> {
  const stack: number[] = [];
  const ws = await openWs(`${url}/sink`);
  ws.on('error', () => {});
  const replies = new Replies();
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    if (!isBinary) replies.push(data.toString('utf8'));
  });
  return {
    name: 'ws',
    replies,
    control: (cmd) => ws.send(cmd),
    async blast(payload, n) {
      // Same shape as roam's backpressure: stop at the high-water mark, resume below half of it.
      // (Polling with setImmediate measured no worse than awaiting a send callback here.)
      for (let i = 0; i < n; i++) {
        if (ws.bufferedAmount >= highWater) {
          while (ws.bufferedAmount >= highWater / 2) {
            if (ws.readyState !== WebSocket.OPEN) throw new Error('ws sink connection closed');
            await new Promise<void>((r) => setImmediate(r));
          }
        }
        ws.send(payload);
      }
    },
    sendOne: diag
      ? (p) => {
          stack.push(Number(process.hrtime.bigint() - readStamp(p)));
          ws.send(p);
        }
      : (p) => ws.send(p),
    close: () => closeWs(ws),
    takeClientStack: () => stack.splice(0),
  };
}

// ---------------------------------------------------------------------------------------------
// 1. throughput

interface TrialResult {
  msgsPerS: number;
  /** CPU time (user + system) per message of the client process and of the server process. */
  clientCpuUs: number;
  serverCpuUs: number;
}

function cpuUsSince(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return d.user + d.system;
}

async function throughputTrial(side: Side, payload: Uint8Array, n: number): Promise<TrialResult> {
  const done = side.replies.wait('done', `${side.name} throughput ${payload.length} B`);
  side.control(`expect ${n}`);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await withTimeout(side.blast(payload, n), TRIAL_TIMEOUT_MS, `${side.name} blast`);
  const r = await done;
  const secs = (performance.now() - t0) / 1000;
  const clientCpu = cpuUsSince(cpu0);
  if (r.msgs !== n || r.bytes !== n * payload.length) {
    throw new Error(`${side.name}: sink got ${r.msgs} msgs / ${r.bytes} B, expected ${n} / ${n * payload.length}`);
  }
  return { msgsPerS: n / secs, clientCpuUs: clientCpu / n, serverCpuUs: r.cpu_us / n };
}

async function throughput(sides: Side[], cfg: Config): Promise<ThroughputRow[]> {
  const rows: ThroughputRow[] = [];
  for (const size of cfg.sizes) {
    const payload = new Uint8Array(size);
    for (let i = 0; i < size; i++) payload[i] = i & 0xff;
    const n = Math.max(1, Math.min(cfg.maxMsgsPerTrial, Math.floor(cfg.bytesPerTrial / size)));
    // Warm-up (JIT, socket buffers), untimed.
    for (const side of sides) await throughputTrial(side, payload, Math.max(1, n >> 2));
    const results: Record<string, TrialResult[]> = { roam: [], ws: [] };
    for (let t = 0; t < cfg.throughputTrials; t++) {
      const order = t % 2 === 0 ? sides : [...sides].reverse();
      for (const side of order) results[side.name]?.push(await throughputTrial(side, payload, n));
      progress(
        `throughput ${size} B trial ${t + 1}/${cfg.throughputTrials}: ${sides
          .map((s) => {
            const r = results[s.name]?.at(-1);
            return `${s.name} ${Math.round(r?.msgsPerS ?? 0)} msg/s (cpu us/msg client ${round(r?.clientCpuUs ?? 0, 2)}, server ${round(r?.serverCpuUs ?? 0, 2)})`;
          })
          .join(', ')}`,
      );
    }
    const pick = (side: string, f: (r: TrialResult) => number): number => median((results[side] ?? []).map(f));
    const roam = pick('roam', (r) => r.msgsPerS);
    const ws = pick('ws', (r) => r.msgsPerS);
    rows.push({
      size,
      roam_msgs_per_s: Math.round(roam),
      ws_msgs_per_s: Math.round(ws),
      ratio: round(roam / ws, 3),
      roam_mib_per_s: round((roam * size) / 2 ** 20),
      ws_mib_per_s: round((ws * size) / 2 ** 20),
      roam_client_cpu_us_per_msg: round(
        pick('roam', (r) => r.clientCpuUs),
        3,
      ),
      roam_server_cpu_us_per_msg: round(
        pick('roam', (r) => r.serverCpuUs),
        3,
      ),
      ws_client_cpu_us_per_msg: round(
        pick('ws', (r) => r.clientCpuUs),
        3,
      ),
      ws_server_cpu_us_per_msg: round(
        pick('ws', (r) => r.serverCpuUs),
        3,
      ),
      msgs_per_trial: n,
      roam_trials_msgs_per_s: (results.roam ?? []).map((r) => Math.round(r.msgsPerS)),
      ws_trials_msgs_per_s: (results.ws ?? []).map((r) => Math.round(r.msgsPerS)),
    });
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// 2. latency

const LATENCY_PAYLOAD = 64;

/**
 * Sends stamped 64-byte messages at `rate`/s for `ms`; catches up after late timers. The next
 * wake-up is armed before sending, so that none of the harness's own work runs between a send and
 * the end of the tick (roam writes its batch in a microtask at the end of the tick; work done after
 * `send()` in the same tick would be charged to roam). `sendReturn` (diagnostic mode) receives the
 * ns from stamp to the return of `sendOne`.
 */
async function paced(side: Side, rate: number, ms: number, sendReturn?: number[]): Promise<number> {
  const total = Math.round((rate * ms) / 1000);
  const interval = 1000 / rate;
  const start = performance.now();
  let sent = 0;
  while (sent < total) {
    const now = performance.now();
    const due = Math.min(total, Math.floor((now - start) / interval) + 1);
    const wake = sleep(Math.max(0, Math.floor(start + due * interval - now)));
    while (sent < due) {
      const buf = new Uint8Array(LATENCY_PAYLOAD);
      writeStamp(buf);
      side.sendOne(buf);
      if (sendReturn) sendReturn.push(Number(process.hrtime.bigint() - readStamp(buf)));
      sent++;
    }
    await wake;
  }
  return sent;
}

interface Segment {
  us: number[];
  clientCpuUs: number;
  serverCpuUs: number;
  /** Diagnostic mode only (µs): stamp -> ws.send on the client; stamp -> ws message at the server. */
  clientStackUs: number[];
  arrivalUs: number[];
  sendReturnUs: number[];
}

async function latencySegment(side: Side, rate: number, ms: number, diag: boolean): Promise<Segment> {
  side.control('lat start');
  const sendReturn: number[] = [];
  const cpu0 = process.cpuUsage();
  const sent = await paced(side, rate, ms, diag ? sendReturn : undefined);
  const clientCpu = cpuUsSince(cpu0);
  const reply = side.replies.wait('lat', `${side.name} latency samples`);
  side.control('lat stop');
  const r = await reply;
  if (r.samples_ns.length !== sent) {
    throw new Error(`${side.name}: sink recorded ${r.samples_ns.length} latency samples, ${sent} were sent`);
  }
  return {
    us: r.samples_ns.map((ns) => ns / 1000),
    clientCpuUs: clientCpu / sent,
    serverCpuUs: r.cpu_us / sent,
    clientStackUs: side.takeClientStack().map((ns) => ns / 1000),
    arrivalUs: (r.arrival_ns ?? []).map((ns) => ns / 1000),
    sendReturnUs: sendReturn.map((ns) => ns / 1000),
  };
}

async function latency(sides: Side[], cfg: Config, diag: boolean): Promise<SessionResult['latency_us']> {
  for (const side of sides) {
    await latencySegment(side, cfg.latencyRate, cfg.latencyWarmupMs, diag);
    side.takeClientStack();
  }
  const segs: Record<string, Segment[]> = { roam: [], ws: [] };
  for (let t = 0; t < cfg.latencySegments; t++) {
    const order = t % 2 === 0 ? sides : [...sides].reverse();
    for (const side of order)
      segs[side.name]?.push(await latencySegment(side, cfg.latencyRate, cfg.latencySegmentMs, diag));
  }
  const all = (side: string): number[] => (segs[side] ?? []).flatMap((g) => g.us).sort((a, b) => a - b);
  const cpu = (side: string, f: (g: Segment) => number): number => round(median((segs[side] ?? []).map(f)), 2);
  const roam = all('roam');
  const ws = all('ws');
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
  const r: SessionResult['latency_us'] = {
    roam_p50: round(pct(roam, 50)),
    roam_p99: round(pct(roam, 99)),
    ws_p50: round(pct(ws, 50)),
    ws_p99: round(pct(ws, 99)),
    overhead_p50: round(pct(roam, 50) - pct(ws, 50)),
    overhead_p99: round(pct(roam, 99) - pct(ws, 99)),
    roam_mean: round(mean(roam)),
    ws_mean: round(mean(ws)),
    roam_max: round(roam.at(-1) ?? Number.NaN),
    ws_max: round(ws.at(-1) ?? Number.NaN),
    roam_samples: roam.length,
    ws_samples: ws.length,
    roam_client_cpu_us_per_msg: cpu('roam', (g) => g.clientCpuUs),
    roam_server_cpu_us_per_msg: cpu('roam', (g) => g.serverCpuUs),
    ws_client_cpu_us_per_msg: cpu('ws', (g) => g.clientCpuUs),
    ws_server_cpu_us_per_msg: cpu('ws', (g) => g.serverCpuUs),
    rate_msgs_per_s: cfg.latencyRate,
    payload_bytes: LATENCY_PAYLOAD,
    seconds_per_side: (cfg.latencySegments * cfg.latencySegmentMs) / 1000,
  };
  const breakdown = (side: string): Breakdown | undefined => {
    const g = segs[side] ?? [];
    const stack = g.flatMap((x) => x.clientStackUs).sort((a, b) => a - b);
    const ret = g.flatMap((x) => x.sendReturnUs).sort((a, b) => a - b);
    const arrival = g.flatMap((x) => x.arrivalUs).sort((a, b) => a - b);
    // server stack per message: sink time - ws arrival time (same stamp, so stamp cancels)
    const server = g
      .flatMap((x) => x.us.map((u, i) => u - (x.arrivalUs[i] ?? Number.NaN)))
      .filter(Number.isFinite)
      .sort((a, b) => a - b);
    if (stack.length === 0 || arrival.length === 0) return undefined;
    const q = (xs: number[]): { p50: number; p99: number } => ({
      p50: round(pct(xs, 50), 2),
      p99: round(pct(xs, 99), 2),
    });
    return {
      stamp_to_send_returned: q(ret),
      stamp_to_ws_send: q(stack),
      stamp_to_server_ws_message: q(arrival),
      server_ws_message_to_sink: q(server),
    };
  };
  const roamB = breakdown('roam');
  const wsB = breakdown('ws');
  if (roamB || wsB) {
    r.breakdown_us = { roam: roamB, ws: wsB };
    progress(`latency breakdown (us): ${JSON.stringify(r.breakdown_us)}`);
  }
  progress(
    `latency: roam p50 ${r.roam_p50} us p99 ${r.roam_p99} us | ws p50 ${r.ws_p50} us p99 ${r.ws_p99} us (${roam.length}/${ws.length} samples); cpu us/msg client ${r.roam_client_cpu_us_per_msg}/${r.ws_client_cpu_us_per_msg}, server ${r.roam_server_cpu_us_per_msg}/${r.ws_server_cpu_us_per_msg} (roam/ws)`,
  );
  return r;
}

// ---------------------------------------------------------------------------------------------
// 3. resume

interface ResumeTrial {
  toEcho: number;
  toResumed: number;
  gap: number;
  replayed: number;
  /** reconnectNow() -> the session asks its connector for a new transport. */
  toConnect: number;
  /** connector call -> transport open (TCP connect + WebSocket upgrade). */
  connect: number;
  /** transport open -> `resumed` (CHALLENGE / RESUME / RESUMED with their HMACs, then replay). */
  handshake: number;
  /** `resumed` -> echo delivered (replayed message to the server and its echo back). */
  resumedToEcho: number;
}

/** Timestamps of the latest transport the timed connector opened. */
interface ConnectTimes {
  start: number;
  open: number;
}

async function resumeTrial(s: Session, i: number, times: ConnectTimes): Promise<ResumeTrial> {
  const marker = new Uint8Array(16);
  new DataView(marker.buffer).setUint32(0, 0x524f414d); // "ROAM"
  new DataView(marker.buffer).setUint32(4, i >>> 0);
  const resumed = new Promise<{ at: number; gap: number; replayed: number }>((resolve) =>
    s.once('resumed', (ev) => resolve({ at: performance.now(), gap: ev.gapMs, replayed: ev.replayed })),
  );
  const echoed = new Promise<number>((resolve) => {
    const onMessage = (data: Uint8Array): void => {
      if (data.length === marker.length && data.every((b, k) => b === marker[k])) {
        s.off('message', onMessage);
        resolve(performance.now());
      }
    };
    s.on('message', onMessage);
  });
  const t0 = performance.now();
  s.reconnectNow();
  s.send(marker);
  const [ev, echoAt] = await withTimeout(Promise.all([resumed, echoed]), 10_000, `resume trial ${i}`);
  return {
    toEcho: echoAt - t0,
    toResumed: ev.at - t0,
    gap: ev.gap,
    replayed: ev.replayed,
    toConnect: times.start - t0,
    connect: times.open - times.start,
    handshake: ev.at - times.open,
    resumedToEcho: echoAt - ev.at,
  };
}

async function wsFreshEcho(wsUrl: string): Promise<number> {
  const t0 = performance.now();
  const ws = await openWs(`${wsUrl}/echo`);
  const got = new Promise<number>((resolve) => ws.once('message', () => resolve(performance.now())));
  ws.send(new Uint8Array(16));
  const t1 = await withTimeout(got, 10_000, 'ws echo');
  await closeWs(ws);
  return t1 - t0;
}

async function resume(roamUrl: string, wsUrl: string | undefined, cfg: Config): Promise<SessionResult['resume_ms']> {
  // roam's own ws connector, timed: the same call node.ts makes by default (no TLS here).
  const times: ConnectTimes = { start: 0, open: 0 };
  const s = connect(roamUrl, {
    service: 'echo',
    connector: async (url, o) => {
      times.start = performance.now();
      const t = await connectTransport(url, { localAddress: o.localAddress });
      times.open = performance.now();
      return t;
    },
  });
  s.on('warning', () => {});
  try {
    await withTimeout(s.ready, 10_000, 'roam echo session');
    for (let i = 0; i < 5; i++) await resumeTrial(s, -1 - i, times); // warm-up
    if (wsUrl) for (let i = 0; i < 5; i++) await wsFreshEcho(wsUrl);
    const trials: ResumeTrial[] = [];
    const fresh: number[] = [];
    for (let i = 0; i < cfg.resumeTrials; i++) {
      trials.push(await resumeTrial(s, i, times));
      if (wsUrl) fresh.push(await wsFreshEcho(wsUrl));
    }
    const q = (xs: number[], p: number): number =>
      round(
        pct(
          [...xs].sort((a, b) => a - b),
          p,
        ),
        3,
      );
    const col = (f: (t: ResumeTrial) => number): number[] => trials.map(f);
    const phase = (f: (t: ResumeTrial) => number): { p50: number; p99: number } => ({
      p50: q(col(f), 50),
      p99: q(col(f), 99),
    });
    const res: SessionResult['resume_ms'] = {
      p50: q(
        col((t) => t.toEcho),
        50,
      ),
      p99: q(
        col((t) => t.toEcho),
        99,
      ),
      definition:
        'client-side wall time from Session.reconnectNow() to delivery of the echo of a message sent right after it (queued while suspended, replayed on the new transport)',
      resumed_gap_p50: q(
        col((t) => t.gap),
        50,
      ),
      resumed_gap_p99: q(
        col((t) => t.gap),
        99,
      ),
      reconnect_to_resumed_p50: q(
        col((t) => t.toResumed),
        50,
      ),
      reconnect_to_resumed_p99: q(
        col((t) => t.toResumed),
        99,
      ),
      phases: {
        reconnect_to_connector_call: phase((t) => t.toConnect),
        connector_call_to_transport_open: phase((t) => t.connect),
        transport_open_to_resumed: phase((t) => t.handshake),
        resumed_to_echo: phase((t) => t.resumedToEcho),
      },
      ws_fresh_connect_echo_p50: q(fresh, 50),
      ws_fresh_connect_echo_p99: q(fresh, 99),
      replayed_per_resume: [...new Set(col((t) => t.replayed))].sort((a, b) => a - b),
      trials: cfg.resumeTrials,
    };
    progress(
      `resume: reconnectNow->echo p50 ${res.p50} ms p99 ${res.p99} ms; resumed.gapMs p50 ${res.resumed_gap_p50} ms p99 ${res.resumed_gap_p99} ms; ws fresh connect+echo p50 ${res.ws_fresh_connect_echo_p50} ms`,
    );
    progress(
      `resume phases p50 (ms): ${Object.entries(res.phases ?? {})
        .map(([k, v]) => `${k} ${v.p50}`)
        .join(', ')}`,
    );
    return res;
  } finally {
    await closeSession(s);
  }
}

// ---------------------------------------------------------------------------------------------

export async function run(opts: SessionSuiteOptions): Promise<SessionResult> {
  const started = performance.now();
  const cfg = config(opts.quick);
  if (opts.sizes && opts.sizes.length > 0) cfg.sizes = opts.sizes;
  const only = new Set(opts.only ?? ['throughput', 'latency', 'resume']);
  const sideNames = new Set(opts.sides ?? ['roam', 'ws']);
  const diag = opts.diag === true;
  const server = await startServer(diag);
  const sides: Side[] = [];
  const nan = Number.NaN;
  const result: SessionResult = {
    suite: 'session',
    throughput: [],
    latency_us: {
      roam_p50: nan,
      roam_p99: nan,
      ws_p50: nan,
      ws_p99: nan,
      overhead_p50: nan,
      overhead_p99: nan,
      roam_mean: nan,
      ws_mean: nan,
      roam_max: nan,
      ws_max: nan,
      roam_samples: 0,
      ws_samples: 0,
      roam_client_cpu_us_per_msg: nan,
      roam_server_cpu_us_per_msg: nan,
      ws_client_cpu_us_per_msg: nan,
      ws_server_cpu_us_per_msg: nan,
      rate_msgs_per_s: cfg.latencyRate,
      payload_bytes: LATENCY_PAYLOAD,
      seconds_per_side: 0,
    },
    resume_ms: {
      p50: nan,
      p99: nan,
      definition: '',
      resumed_gap_p50: nan,
      resumed_gap_p99: nan,
      reconnect_to_resumed_p50: nan,
      reconnect_to_resumed_p99: nan,
      ws_fresh_connect_echo_p50: nan,
      ws_fresh_connect_echo_p99: nan,
      replayed_per_resume: [],
      trials: 0,
    },
    meta: {
      node: process.version,
      date: new Date().toISOString(),
      quick: opts.quick,
      diag,
      cpu_model: os.cpus()[0]?.model ?? 'unknown',
      cpus: os.cpus().length,
      platform: `${os.platform()} ${os.release()} ${os.arch()}`,
      ws_version: await wsVersion(),
      trials: {
        throughput: cfg.throughputTrials,
        latency_segments: cfg.latencySegments,
        resume: cfg.resumeTrials,
      },
      config: cfg,
      duration_s: 0,
    },
  };
  let failure: unknown;
  try {
    if (sideNames.has('roam')) sides.push(await roamSide(server.roamUrl, diag));
    if (sideNames.has('ws')) sides.push(await wsSide(server.wsUrl, cfg.wsHighWaterBytes, diag));
    if (only.has('throughput')) result.throughput = await throughput(sides, cfg);
    if (only.has('latency')) result.latency_us = await latency(sides, cfg, diag);
    if (only.has('resume') && sideNames.has('roam')) {
      result.resume_ms = await resume(server.roamUrl, sideNames.has('ws') ? server.wsUrl : undefined, cfg);
    }
  } catch (err) {
    failure = err;
  }
  for (const s of sides) await s.close().catch(() => {});
  const stopped = await server.stop();
  if (stopped.forced || stopped.code !== 0) {
    const msg = `server child did not exit cleanly (code ${stopped.code}, signal ${stopped.signal}, forced ${stopped.forced})`;
    if (!failure) failure = new Error(msg);
    else progress(msg);
  }
  if (failure) throw failure;
  result.meta.duration_s = round((performance.now() - started) / 1000);
  return result;
}

async function wsVersion(): Promise<string> {
  try {
    const { readFile } = await import('node:fs/promises');
    const pkg = JSON.parse(await readFile(new URL('../node_modules/ws/package.json', import.meta.url), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Human summary: one table of lines. */
export function summarize(r: SessionResult): string {
  const lines: string[] = [];
  const pad = (s: string | number, n: number): string => String(s).padStart(n);
  lines.push(
    `session bench (${r.meta.quick ? 'quick' : 'full'}, node ${r.meta.node}, ${r.meta.cpu_model} x${r.meta.cpus})`,
  );
  if (r.throughput.length > 0) {
    lines.push('');
    lines.push(
      `${'throughput'.padEnd(10)}${pad('roam msg/s', 12)}${pad('ws msg/s', 11)}${pad('ratio', 7)}${pad('roam MiB/s', 12)}${pad('ws MiB/s', 10)}${pad('cpu us/msg cli+srv roam | ws', 31)}`,
    );
    for (const t of r.throughput) {
      const size = t.size >= 1024 ? `${t.size / 1024} KiB` : `${t.size} B`;
      const cpu = `${round(t.roam_client_cpu_us_per_msg, 1)}+${round(t.roam_server_cpu_us_per_msg, 1)} | ${round(t.ws_client_cpu_us_per_msg, 1)}+${round(t.ws_server_cpu_us_per_msg, 1)}`;
      lines.push(
        `${size.padEnd(10)}${pad(t.roam_msgs_per_s, 12)}${pad(t.ws_msgs_per_s, 11)}${pad(t.ratio.toFixed(2), 7)}${pad(t.roam_mib_per_s, 12)}${pad(t.ws_mib_per_s, 10)}${pad(cpu, 31)}`,
      );
    }
  }
  const l = r.latency_us;
  if (l.roam_samples > 0 || l.ws_samples > 0) {
    lines.push('');
    lines.push(
      `${'latency us'.padEnd(12)}${pad('p50', 10)}${pad('p99', 10)}${pad('mean', 10)}${pad('n', 8)}${pad('cpu us/msg cli+srv', 22)}`,
    );
    lines.push(
      `${'roam'.padEnd(12)}${pad(l.roam_p50, 10)}${pad(l.roam_p99, 10)}${pad(l.roam_mean, 10)}${pad(l.roam_samples, 8)}${pad(`${l.roam_client_cpu_us_per_msg}+${l.roam_server_cpu_us_per_msg}`, 22)}`,
    );
    lines.push(
      `${'ws'.padEnd(12)}${pad(l.ws_p50, 10)}${pad(l.ws_p99, 10)}${pad(l.ws_mean, 10)}${pad(l.ws_samples, 8)}${pad(`${l.ws_client_cpu_us_per_msg}+${l.ws_server_cpu_us_per_msg}`, 22)}`,
    );
    lines.push(`${'overhead'.padEnd(12)}${pad(l.overhead_p50, 10)}${pad(l.overhead_p99, 10)}`);
    for (const [side, b] of Object.entries(l.breakdown_us ?? {})) {
      if (!b) continue;
      lines.push(
        `  ${side} p50 legs: stamp->send() returned ${b.stamp_to_send_returned.p50}, stamp->ws.send ${b.stamp_to_ws_send.p50}, stamp->server ws msg ${b.stamp_to_server_ws_message.p50}, server ws msg->sink ${b.server_ws_message_to_sink.p50}`,
      );
    }
  }
  const m = r.resume_ms;
  if (m.trials > 0) {
    lines.push('');
    lines.push(`${'resume ms'.padEnd(36)}${pad('p50', 9)}${pad('p99', 9)}`);
    lines.push(`${'reconnectNow -> echo'.padEnd(36)}${pad(m.p50, 9)}${pad(m.p99, 9)}`);
    lines.push(`${'resumed.gapMs'.padEnd(36)}${pad(m.resumed_gap_p50, 9)}${pad(m.resumed_gap_p99, 9)}`);
    lines.push(
      `${'reconnectNow -> resumed'.padEnd(36)}${pad(m.reconnect_to_resumed_p50, 9)}${pad(m.reconnect_to_resumed_p99, 9)}`,
    );
    for (const [k, v] of Object.entries(m.phases ?? {})) {
      lines.push(`${`  ${k.replaceAll('_', ' ')}`.padEnd(36)}${pad(v.p50, 9)}${pad(v.p99, 9)}`);
    }
    if (Number.isFinite(m.ws_fresh_connect_echo_p50)) {
      lines.push(
        `${'(ws new conn + echo, context)'.padEnd(36)}${pad(m.ws_fresh_connect_echo_p50, 9)}${pad(m.ws_fresh_connect_echo_p99, 9)}`,
      );
    }
  }
  lines.push('');
  lines.push(`took ${r.meta.duration_s} s`);
  return lines.join('\n');
}
