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
 * Baseline in the same run: the same sessions suspended to the Store and restored elsewhere is
 * not offered by roam; the figure next to it is the Migrate paper's 64 sessions in 1.5 s.
 */
import os from 'node:os';
import { connect, type Session } from '../src/client/node.js';
import { readEvents } from '../src/directory/index.js';
import type { DrainStatus, MigrationRecord } from '../src/transport/cluster.js';
import { startCluster } from '../test/support/cluster.js';
import { SERVICES } from '../test/support/host.js';
import type { SuiteOptions } from './run.js';

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
  lost: number;
  duplicated: number;
  batches: number;
  batch_commit_ms_p50: number;
  /** Median per-phase time of a batch (source side), ms. */
  batch_phases_ms_p50: { negotiate: number; precopy: number; freeze: number; commit: number };
  placement: Record<string, number>;
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
    process.stderr.write(`drain: opening ${n} sessions on ${a.id.slice(0, 12)}\n`);
    for (let i = 0; i < n; i += 200) {
      const batch = Array.from({ length: Math.min(200, n - i) }, () => {
        // Heartbeats every 5 s as in the suspend suite: at roam's default 1 s, idle heartbeats of
        // 10,000 sessions alone keep a core of a 2-vCPU machine busy.
        const s = connect(a.clientUrl, {
          service: 'stream',
          reconnect: { initialDelayMs: 5, maxDelayMs: 500 },
          engine: { heartbeatMs: 5000 },
        });
        echoes.set(s, []);
        s.on('message', (d, ch) => {
          const text = dec.decode(d);
          if (ch === 2) echoes.get(s)?.push(Number(text));
          if (ch === 1 && text.startsWith('filled')) filled.get(s)?.();
        });
        return s;
      });
      await Promise.all(batch.map((s) => s.ready));
      await Promise.all(
        batch.map(
          (s) =>
            new Promise<void>((resolve) => {
              filled.set(s, resolve);
              s.send('fill 4 1024');
              s.send('1');
            }),
        ),
      );
      sessions.push(...batch);
    }
    const resumed = new Set<Session>();
    let allResumed: () => void = () => {};
    const allIn = new Promise<void>((r) => {
      allResumed = r;
    });
    for (const s of sessions) {
      s.on('event', (ev) => {
        if (ev.type === 'resumed' && s.url !== a.clientUrl) {
          resumed.add(s);
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
    const t0 = performance.now();
    await cluster.api<DrainStatus>('/api/drain', { host: a.id, concurrency: 4, batchSize: 250, deadlineMs: 600_000 });
    const done = await over;
    const seconds = (performance.now() - t0) / 1000;
    await allIn;
    const clientsSeconds = (performance.now() - t0) / 1000;
    ac.abort();
    process.stderr.write(`\n  drain ${done.state}: ${done.moved} moved in ${seconds.toFixed(2)} s\n`);
    // Every session's own counter moved with it: 2 must follow 1.
    for (const s of sessions) s.send('2');
    await Promise.all(
      sessions.map(
        (s) =>
          new Promise<void>((resolve) => {
            const check = () => {
              if ((echoes.get(s)?.length ?? 0) >= 2) resolve();
              else setImmediate(check);
            };
            check();
          }),
      ),
    );
    let lost = 0;
    let duplicated = 0;
    for (const list of echoes.values()) {
      if (list[0] !== 1 || list[1] !== 2) lost++;
      if (list.length > 2) duplicated += list.length - 2;
    }
    const placement: Record<string, number> = {};
    for (const r of records) placement[r.to.slice(0, 12)] = (placement[r.to.slice(0, 12)] ?? 0) + r.sessions;
    const commits = records.map((r) => r.endedAt - r.startedAt).sort((x, y) => x - y);
    const med = (f: (r: MigrationRecord) => number) => {
      const xs = records.map(f).sort((x, y) => x - y);
      return Math.round(xs[Math.floor(xs.length / 2)] ?? 0);
    };
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
    };
  } finally {
    for (const s of sessions) s.close();
    await cluster.close();
  }
}

type Cluster0 = Awaited<ReturnType<typeof startCluster>>['hosts'][0];

export function summarize(r: DrainResult): string {
  return `drain: ${r.sessions} sessions × ${r.state_bytes} B in ${r.seconds} s (${r.sessions_per_s}/s; clients all resumed at ${r.clients_seconds} s), lost ${r.lost}, duplicated ${r.duplicated}, placement ${JSON.stringify(r.placement)}`;
}
