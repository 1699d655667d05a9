/**
 * `drain` suite: how fast a host hands all its sessions to others.
 *
 * A directory and three hosts run as `roam` processes on one SQLite Store. This process opens
 * `sessions` `stream` sessions on host A, each with 4 KiB of instance state (4 × 1 KiB values) and
 * one number sent and echoed (so each session's own state holds a counter too). Then it drains A
 * through the directory (`POST /api/drain`) and measures:
 *   - seconds: drain request → the drain's `done` event (every instance committed elsewhere);
 *   - clients_s: drain request → every client resumed on its new host (the client side of it);
 * then every client sends its next number: the service must echo it (its per-session counter
 * moved with it: lost = echoes missing or out of order, duplicated = echoes repeated).
 *
 * Baseline in the same run (`ws_baseline`): the floor for moving the clients alone. The same
 * number of raw `ws` clients on a plain `ws` server (a child process, like roam's hosts) are told
 * to reconnect to one of two other such servers; each opens its new connection, makes one round
 * trip ("hi" → "ok") and cuts the old one (no close handshake, as roam's clients). No state, no authentication, no directory: what any
 * server that hands clients to another host pays on this machine at least. Both sides also report
 * the CPU time every process involved used (this one, the servers or the directory and hosts),
 * which is steadier than wall time on a busy machine. The Migrate paper's 64 sessions in 1.5 s is
 * the published anchor.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { connect, type Session } from '../src/client/node.js';
import { readEvents } from '../src/directory/index.js';
import type { DrainStatus, MigrationRecord } from '../src/transport/cluster.js';
import type { RoamError } from '../src/wire/index.js';
import { startCluster } from '../test/support/cluster.js';
import { SERVICES } from '../test/support/host.js';
import type { SuiteOptions } from './run.js';
import { percentile } from './stats.js';

export interface DrainResult {
  suite: 'drain';
  at: string;
  quick: boolean;
  machine: { cpus: number; node: string };
  sessions: number;
  state_bytes: number;
  seconds: number;
  sessions_per_s: number;
  /** Until every client had resumed at its new host. */
  clients_seconds: number;
  /**
   * Per client, from the MOVE it got to its resume at the new host (ms): how long a drain
   * interrupts each session as its client sees it. Its batch's freeze and commit, and this
   * process's own work: one thread handles every client's MOVE and resume, so with thousands of
   * clients here this measures that thread as much as the hosts.
   */
  client_interruption_ms_p50: number;
  client_interruption_ms_p99: number;
  /**
   * Per batch, the source's freeze until the destination serves its sessions (ms; the
   * migration record's downtime): how long every session of a batch is frozen on the hosts' side,
   * whatever the clients' process adds.
   */
  batch_downtime_ms_p50: number;
  batch_downtime_ms_p99: number;
  /**
   * Event-loop delay of this process (every client) from the drain request until every client
   * resumed, p50 / max (ms): how far behind the one thread that runs all the clients fell.
   */
  clients_loop_delay_ms_p50: number;
  clients_loop_delay_ms_max: number;
  lost: number;
  duplicated: number;
  batches: number;
  batch_commit_ms_p50: number;
  /** Median per-phase time of a batch (source side), ms. */
  batch_phases_ms_p50: { negotiate: number; precopy: number; freeze: number; commit: number };
  placement: Record<string, number>;
  /** Sessions that failed to open during setup and were replaced (see `opened` in run). */
  setup_retries: number;
  /** Warnings sessions raised while opening, by code and message (digits as N). */
  setup_warnings: Record<string, number>;
  /** CPU time (user + system) of every process, from the drain request until every client resumed. */
  cpu_seconds: number;
  /** The same, by process: this one (the clients), the directory, the drained host, the others. */
  cpu_seconds_by_process: Record<string, number>;
  /** Raw `ws` clients moved between plain `ws` servers, same count, same run (see the file's doc). */
  ws_baseline: { seconds: number; cpu_seconds: number; cpu_seconds_by_process: Record<string, number> };
  /** roam's clients_seconds over the baseline's seconds. */
  clients_over_ws: number;
}

const dec = new TextDecoder();

export async function run(opts: SuiteOptions): Promise<DrainResult> {
  const n = opts.quick ? 1000 : 10_000;
  const services = [`stream=${SERVICES.stream}`];
  const args = ['--heartbeat-ms', '5000'];
  const cluster = await startCluster({
    hosts: [
      { services, args },
      { services, args },
      { services, args },
    ],
  });
  const sessions: Session[] = [];
  try {
    const [a] = cluster.hosts as [Cluster0];
    const echoes = new Map<Session, number[]>();
    const filled = new Map<Session, () => void>();
    const echoed = new Map<Session, () => void>();
    process.stderr.write(`drain: opening ${n} sessions on ${a.id.slice(0, 12)}\n`);
    const setupWarnings = new Map<string, number>();
    let setupRetries = 0;
    const open = (): Session => {
      // Heartbeats every 5 s as in the suspend suite: at roam's default 1 s, idle heartbeats of
      // 10,000 sessions alone keep a core of a 2-vCPU machine busy.
      const s = connect(a.clientUrl, {
        service: 'stream',
        reconnect: { initialDelayMs: 5, maxDelayMs: 500 },
        engine: { heartbeatMs: 5000 },
      });
      const onWarning = (w: RoamError): void => {
        const k = `${w.code}: ${w.message.replace(/\d+/g, 'N')}`;
        setupWarnings.set(k, (setupWarnings.get(k) ?? 0) + 1);
      };
      s.on('warning', onWarning);
      void s.ready.then(
        () => s.off('warning', onWarning),
        () => {},
      );
      return s;
    };
    /**
     * A session that could not open within its 30 s is replaced (at most twice), counted in
     * `setup_retries` with the warnings its attempts raised: what is measured is the drain, and
     * the failure stays on record (seen once in about ten full runs, cause not yet known).
     */
    const opened = async (first: Session): Promise<Session> => {
      let s = first;
      for (let attempt = 0; ; attempt++) {
        try {
          await s.ready;
          return s;
        } catch (err) {
          if (attempt === 2) throw err;
          setupRetries++;
          process.stderr.write(`  setup: a session failed to open (${(err as Error).message}); opening another\n`);
          s = open();
        }
      }
    };
    for (let i = 0; i < n; i += 200) {
      const tries = Array.from({ length: Math.min(200, n - i) }, () => open());
      const batch = (await Promise.all(tries.map(opened))).map((s) => {
        echoes.set(s, []);
        s.on('message', (d, ch) => {
          const text = dec.decode(d);
          if (ch === 2) {
            const list = echoes.get(s);
            list?.push(Number(text));
            if (list?.length === 2) echoed.get(s)?.();
          }
          if (ch === 1 && text.startsWith('filled')) filled.get(s)?.();
        });
        return s;
      });
      await everyAnswers(
        batch,
        filled,
        (s) => {
          s.send('fill 4 1024');
          s.send('1');
        },
        `answered "fill" (setup, sessions ${i}+)`,
      );
      sessions.push(...batch);
    }
    const resumed = new Set<Session>();
    let allResumed: () => void = () => {};
    const allIn = new Promise<void>((r) => {
      allResumed = r;
    });
    // Per client, from the MOVE to the resume at its new host: while its session is frozen at the
    // source and until the destination serves it, the client receives nothing.
    const movedAt = new Map<Session, number>();
    const interruptions: number[] = [];
    for (const s of sessions) {
      s.on('event', (ev) => {
        if (ev.type === 'moved' && !movedAt.has(s)) movedAt.set(s, performance.now());
        if (ev.type === 'resumed' && s.url !== a.clientUrl && !resumed.has(s)) {
          resumed.add(s);
          const at = movedAt.get(s);
          if (at !== undefined) interruptions.push(performance.now() - at);
          if (resumed.size === sessions.length) allResumed();
        }
      });
    }
    const ac = new AbortController();
    const records: MigrationRecord[] = [];
    const over = (async () => {
      for await (const ev of readEvents(cluster.directory.url, {
        secret: cluster.secretBytes,
        types: ['drain', 'migration'],
        signal: ac.signal,
      })) {
        if (ev.type === 'migration' && ev.migration.from === a.id && ev.migration.phases.clientGapMs === undefined) {
          records.push(ev.migration);
        }
        if (ev.type === 'drain' && ev.drain.host === a.id && ev.drain.state !== 'running') return ev.drain;
        if (ev.type === 'drain' && ev.drain.host === a.id) {
          process.stderr.write(
            `\r  moved ${ev.drain.moved}/${ev.drain.total} eta ${ev.drain.etaS?.toFixed(1) ?? '?'} s   `,
          );
        }
      }
      throw new Error('event stream ended before the drain');
    })();
    const procs: Record<string, number | undefined> = {
      directory: cluster.directory.child.pid,
      source: a.child.pid,
      ...Object.fromEntries(cluster.hosts.slice(1).map((h, i) => [`destination${i + 1}`, h.child.pid])),
    };
    const cpu0 = cpuMs(procs);
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    const t0 = performance.now();
    const w0 = process.hrtime.bigint() / 1000n;
    await cluster.api<DrainStatus>('/api/drain', { host: a.id, concurrency: 4, batchSize: 250, deadlineMs: 600_000 });
    const done = await within(600_000, over, () => 'the drain did not end');
    const seconds = (performance.now() - t0) / 1000;
    await within(120_000, allIn, () => {
      const states = new Map<string, number>();
      for (const s of sessions) {
        if (resumed.has(s)) continue;
        const k = `${s.state}${s.url === a.clientUrl ? ' (still at the source)' : ''}`;
        states.set(k, (states.get(k) ?? 0) + 1);
      }
      return `${sessions.length - resumed.size} clients never resumed at their new host: ${JSON.stringify([...states])}`;
    });
    const clientsSeconds = (performance.now() - t0) / 1000;
    loop.disable();
    const cpu = cpuSince(cpu0, cpuMs(procs));
    // For bench/cpuprofile-top.ts --window: the drain, on the clock every process's profile uses.
    process.stderr.write(`\n  profile window: --window=${w0},${process.hrtime.bigint() / 1000n}\n`);
    ac.abort();
    process.stderr.write(`\n  drain ${done.state}: ${done.moved} moved in ${seconds.toFixed(2)} s\n`);
    // Every session's own counter moved with it: 2 must follow 1.
    await everyAnswers(sessions, echoed, (s) => s.send('2'), 'echoed their second number');
    let lost = 0;
    let duplicated = 0;
    for (const list of echoes.values()) {
      if (list[0] !== 1 || list[1] !== 2) lost++;
      if (list.length > 2) duplicated += list.length - 2;
    }
    const placement: Record<string, number> = {};
    for (const r of records) placement[r.to.slice(0, 12)] = (placement[r.to.slice(0, 12)] ?? 0) + r.sessions;
    const commits = records.map((r) => r.endedAt - r.startedAt).sort((x, y) => x - y);
    const downtimes = records.flatMap((r) => {
      const d = r.phases.freezeSteps?.downtimeMs;
      return d === undefined ? [] : [d];
    });
    const med = (f: (r: MigrationRecord) => number) => {
      const xs = records.map(f).sort((x, y) => x - y);
      return Math.round(xs[Math.floor(xs.length / 2)] ?? 0);
    };
    // The baseline must not share the machine with 10,000 sessions trying to reconnect.
    const ended = sessions.map(
      (s) =>
        new Promise<void>((resolve) => {
          s.on('event', (ev) => {
            if (ev.type === 'closed' || ev.type === 'lost') resolve();
          });
        }),
    );
    for (const s of sessions) s.close();
    await Promise.all(ended);
    sessions.length = 0;
    await cluster.close();
    const base = await wsBaseline(n);
    return {
      suite: 'drain',
      at: new Date().toISOString(),
      quick: opts.quick,
      machine: { cpus: os.cpus().length, node: process.version },
      sessions: n,
      state_bytes: 4096,
      seconds: Math.round(seconds * 1000) / 1000,
      sessions_per_s: Math.round(n / seconds),
      clients_seconds: Math.round(clientsSeconds * 1000) / 1000,
      client_interruption_ms_p50: Math.round(percentile(interruptions, 50)),
      client_interruption_ms_p99: Math.round(percentile(interruptions, 99)),
      batch_downtime_ms_p50: Math.round(percentile(downtimes, 50)),
      batch_downtime_ms_p99: Math.round(percentile(downtimes, 99)),
      clients_loop_delay_ms_p50: Math.round(loop.percentile(50) / 1e6),
      clients_loop_delay_ms_max: Math.round(loop.max / 1e6),
      lost,
      duplicated,
      batches: records.length,
      batch_commit_ms_p50: commits[Math.floor(commits.length / 2)] ?? 0,
      batch_phases_ms_p50: {
        negotiate: med((r) => r.phases.negotiateMs),
        precopy: med((r) => r.phases.precopyMs),
        freeze: med((r) => r.phases.freezeMs),
        commit: med((r) => r.phases.commitMs),
      },
      placement,
      setup_retries: setupRetries,
      setup_warnings: Object.fromEntries(setupWarnings),
      cpu_seconds: cpu.total,
      cpu_seconds_by_process: cpu.byProcess,
      ws_baseline: base,
      clients_over_ws: Math.round((clientsSeconds / base.seconds) * 100) / 100,
    };
  } finally {
    for (const s of sessions) s.close();
    await cluster.close();
  }
}

type Cluster0 = Awaited<ReturnType<typeof startCluster>>['hosts'][0];

const round3 = (x: number): number => Math.round(x * 1000) / 1000;

/** `p`, or an error saying what never happened if it takes longer than `ms`: a stall fails the bench. */
async function within<T>(ms: number, p: Promise<T>, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what()} (within ${ms / 1000} s)`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * CPU time (user + system, ms) used so far by this process (`clients`) and by each named one,
 * from /proc (Linux): the clock ticks of a process and all its threads.
 */
function cpuMs(procs: Record<string, number | undefined>): Record<string, number> {
  const self = process.cpuUsage();
  const out: Record<string, number> = { clients: (self.user + self.system) / 1000 };
  const tick = 1000 / 100; // USER_HZ is 100 on every Linux this runs on.
  for (const [name, pid] of Object.entries(procs)) {
    if (pid === undefined) continue;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out[name] = (Number(f[11]) + Number(f[12])) * tick;
  }
  return out;
}

/** Seconds of CPU each process used between two {@link cpuMs} readings, and their sum. */
function cpuSince(
  before: Record<string, number>,
  after: Record<string, number>,
): { total: number; byProcess: Record<string, number> } {
  const byProcess: Record<string, number> = {};
  let total = 0;
  for (const [name, ms] of Object.entries(after)) {
    const s = (ms - (before[name] ?? 0)) / 1000;
    byProcess[name] = round3(s);
    total += s;
  }
  return { total: round3(total), byProcess };
}

interface WsServer {
  url: string;
  child: ChildProcess;
  send(line: string): void;
  stop(): Promise<void>;
}

async function startWsServer(): Promise<WsServer> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/drain-ws-server.ts'], {
    cwd: REPO_ROOT,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    void exited.then(() => reject(new Error('drain-ws-server exited before it listened')));
  });
  const { url } = JSON.parse(first) as { url: string };
  return {
    url,
    child,
    send: (line) => child.stdin?.write(`${line}\n`),
    async stop() {
      child.stdin?.end();
      await exited;
    },
  };
}

/**
 * Sends on every session and waits until `answered` fires for each; after 60 s fails saying how
 * many never did.
 */
async function everyAnswers(
  list: Session[],
  answered: Map<Session, () => void>,
  send: (s: Session) => void,
  what: string,
): Promise<void> {
  let waiting = list.length;
  const all = list.map(
    (s) =>
      new Promise<void>((resolve) => {
        answered.set(s, () => {
          waiting--;
          resolve();
        });
        send(s);
      }),
  );
  await within(60_000, Promise.all(all), () => `${waiting} of ${list.length} sessions never ${what}`);
}

/** Clients told to move and not yet gone, at most: roam's drain below runs 4 batches of 250. */
const BASELINE_WINDOW = 1000;

/** The baseline: `n` raw ws clients on server A, all told to reconnect to B or C. */
async function wsBaseline(n: number): Promise<DrainResult['ws_baseline']> {
  const servers = await Promise.all([startWsServer(), startWsServer(), startWsServer()]);
  const [a, b, c] = servers as [WsServer, WsServer, WsServer];
  const clients: WebSocket[] = [];
  try {
    process.stderr.write(`drain baseline: opening ${n} raw ws clients\n`);
    let moved = 0;
    let allMoved: () => void = () => {};
    const done = new Promise<void>((r) => {
      allMoved = r;
    });
    const open = (url: string): Promise<WebSocket> =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url, { perMessageDeflate: false });
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
      });
    for (let i = 0; i < n; i += 200) {
      const batch = await Promise.all(Array.from({ length: Math.min(200, n - i) }, () => open(a.url)));
      for (const old of batch) {
        old.on('message', (data: Buffer) => {
          const text = data.toString('utf8');
          if (!text.startsWith('move ')) return;
          const next = new WebSocket(text.slice(5), { perMessageDeflate: false });
          clients.push(next);
          next.on('open', () => next.send('hi'));
          next.on('message', (d: Buffer) => {
            if (d.toString('utf8') !== 'ok') return;
            // Cut, not closed: a roam client that followed a MOVE skips the close handshake too.
            old.terminate();
            if (++moved === n) allMoved();
          });
        });
      }
      clients.push(...batch);
    }
    const procs = { source: a.child.pid, destination1: b.child.pid, destination2: c.child.pid };
    const cpu0 = cpuMs(procs);
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    const t0 = performance.now();
    a.send(`move ${BASELINE_WINDOW} ${b.url} ${c.url}`);
    await within(120_000, done, () => `baseline: ${n - moved} raw ws clients never moved`);
    const seconds = (performance.now() - t0) / 1000;
    const cpu = cpuSince(cpu0, cpuMs(procs));
    process.stderr.write(`  baseline: ${n} raw ws clients moved in ${seconds.toFixed(2)} s\n`);
    return { seconds: round3(seconds), cpu_seconds: cpu.total, cpu_seconds_by_process: cpu.byProcess };
  } finally {
    for (const ws of clients) ws.terminate();
    await Promise.all(servers.map((s) => s.stop()));
  }
}

export function summarize(r: DrainResult): string {
  return `drain: ${r.sessions} sessions × ${r.state_bytes} B in ${r.seconds} s (${r.sessions_per_s}/s; clients all resumed at ${r.clients_seconds} s, each interrupted p50 ${r.client_interruption_ms_p50} ms p99 ${r.client_interruption_ms_p99} ms; batch downtime p50 ${r.batch_downtime_ms_p50} ms p99 ${r.batch_downtime_ms_p99} ms; clients' event loop delay p50 ${r.clients_loop_delay_ms_p50} ms max ${r.clients_loop_delay_ms_max} ms), lost ${r.lost}, duplicated ${r.duplicated}, placement ${JSON.stringify(r.placement)}; CPU ${r.cpu_seconds} s ${JSON.stringify(r.cpu_seconds_by_process)}; raw ws baseline: clients moved in ${r.ws_baseline.seconds} s, CPU ${r.ws_baseline.cpu_seconds} s ${JSON.stringify(r.ws_baseline.cpu_seconds_by_process)}`;
}
