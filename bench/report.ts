/**
 * Renders docs/benchmarks.md from bench/results/*.json, so the figures in the docs are always
 * the ones the last full run measured. Run: npx tsx bench/report.ts
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { barChart } from './charts.js';
import type { DrainResult } from './drain.js';
import type { MigrationResult } from './migration.js';
import type { SessionResult } from './session.js';
import type { SuspendResult } from './suspend.js';

const root = new URL('../', import.meta.url);
const load = <T>(suite: string): T | undefined => {
  const f = new URL(`bench/results/${suite}.json`, root);
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as T) : undefined;
};
const fmt = (n: number | undefined, d = 0): string =>
  n === undefined || Number.isNaN(n)
    ? 'n/a'
    : n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const met = (ok: boolean): string => (ok ? 'met' : '**missed**');

const out: string[] = [
  '# Benchmarks',
  '',
  'Every figure is measured side by side with its baseline in the same run, because these machines',
  'are noisy (2 cores, shared). Figures are medians unless marked p99. This page is generated from',
  '`bench/results/*.json` by `npx tsx bench/report.ts`; never edit the numbers by hand.',
  '',
  '```sh',
  'npm run bench -- session [--quick]   # bench/results/session.json',
  'npm run bench -- suspend [--quick]   # bench/results/suspend.json',
  'npm run bench -- migration [--quick] # bench/results/migration.json',
  'npm run bench -- drain [--quick]     # bench/results/drain.json',
  '```',
  '',
  'A `--quick` run (smaller, for a first look) writes `<suite>-partial.json` instead, as do `--only`,',
  '`--sides`, `--sizes`, `--diag` and runs with extra node flags for the roam processes (`ROAM_TEST_NODE_ARGS=--cpu-prof…`), so the results below always come from full runs.',
  '',
];

const s = load<SessionResult>('session');
if (s) {
  out.push('## Session layer (`session`)', '');
  out.push('Client and server in separate processes on loopback; roam over WebSocket vs raw `ws`.', '');
  out.push('| payload | roam msgs/s | raw ws msgs/s | ratio | target |', '|---|---|---|---|---|');
  for (const r of s.throughput) {
    const target = r.size === 1024 ? `≥ 0.85: ${met(r.ratio >= 0.85)}` : '';
    out.push(`| ${r.size} B | ${fmt(r.roam_msgs_per_s)} | ${fmt(r.ws_msgs_per_s)} | ${fmt(r.ratio, 2)} | ${target} |`);
  }
  const overhead = s.latency_us.roam_p50 - s.latency_us.ws_p50;
  out.push('', '| one-way latency | roam | raw ws |', '|---|---|---|');
  out.push(`| p50 | ${fmt(s.latency_us.roam_p50, 1)} µs | ${fmt(s.latency_us.ws_p50, 1)} µs |`);
  out.push(`| p99 | ${fmt(s.latency_us.roam_p99, 1)} µs | ${fmt(s.latency_us.ws_p99, 1)} µs |`);
  out.push('', `p50 overhead ${fmt(overhead, 1)} µs (target ≤ 20 µs: ${met(overhead <= 20)}).`, '');
  const phases: Record<string, { p50: number; p99: number }> | undefined = s.resume_ms.phases;
  const open = phases?.transport_open_to_resumed;
  out.push('| resume | p50 | p99 |', '|---|---|---|');
  if (open) {
    out.push(
      `| new transport open → resumed, replay sent (target p50 ≤ 1 ms: ${met(open.p50 <= 1)}) | ${fmt(open.p50, 2)} ms | ${fmt(open.p99, 2)} ms |`,
    );
  }
  out.push(
    `| \`reconnectNow()\` → echo of a message queued while away | ${fmt(s.resume_ms.p50, 2)} ms | ${fmt(s.resume_ms.p99, 2)} ms |`,
  );
  for (const [name, v] of Object.entries(phases ?? {})) {
    if (name !== 'transport_open_to_resumed')
      out.push(`| ↳ ${name.replaceAll('_', ' ')} | ${fmt(v.p50, 2)} ms | ${fmt(v.p99, 2)} ms |`);
  }
  out.push('');
}

const u = load<SuspendResult>('suspend');
if (u) {
  out.push('## Suspension (`suspend`)', '');
  out.push(
    `${fmt(u.sessions)} sessions of \`counter\` with ${fmt(u.state_bytes)} B of state each; memory measured from the host process.`,
    '',
  );
  out.push('| figure | measured | target |', '|---|---|---|');
  out.push(`| resident bytes per active session | ${fmt(u.active_bytes_per_session)} | |`);
  const heap = u.targets.suspended_bytes_per_session.heap_based;
  out.push(
    `| resident bytes per suspended session (RSS) | ${fmt(u.suspended_bytes_per_session)}${heap !== undefined ? ` (JS heap: ${fmt(heap)})` : ''} | ≤ 1024: ${met(u.suspended_bytes_per_session <= 1024)} |`,
  );
  out.push(
    `| file descriptors per suspended session | ${fmt(u.suspended_fds_per_session, 2)} | 0: ${met(u.suspended_fds_per_session === 0)} |`,
  );
  out.push(
    `| continuation bytes minus state bytes | ${fmt(u.continuation_overhead_bytes)} | ≤ 256: ${met(u.continuation_overhead_bytes <= 256)} |`,
  );
  out.push(`| suspend p50 | ${fmt(u.suspend_ms_p50, 2)} ms | |`);
  out.push(
    `| resume p50 / p99 | ${fmt(u.resume_ms_p50, 2)} / ${fmt(u.resume_ms_p99, 2)} ms | p50 ≤ 2 ms: ${met(u.resume_ms_p50 <= 2)} |`,
    '',
  );
}

const m = load<MigrationResult>('migration');
if (m) {
  out.push('## Live migration (`migration`)', '');
  out.push(
    'A directory and two hosts as separate processes on one SQLite Store; the client in the bench process. The',
    '`stream` service ticks at 1 kHz and rewrites one random 1 KiB value of its state on every tick. Each case',
    'interleaves, in shuffled order, migrations with pre-copy and without (stop-and-copy of everything: the baseline); in direct mode a',
    'third arm moves with pre-copy but without MOVE hints (the client connects to the destination only at the MOVE',
    'instead of during the pre-copy; a gateway keeps hints to itself). gap = longest',
    'interval between consecutive ticks seen by the client around the move (from the migrate request to 100 ticks',
    'after the commit); `idle` = its baseline, the same measure over a window of as many ticks with nothing moving,',
    'taken after each pre-copy move (the 1 kHz timer’s own jitter and scheduling on this machine). freeze = the source’s freeze until it hears the',
    'verdict; downtime = the freeze until the instance serves at the destination (the verdict’s trip back left out).',
    '',
  );
  out.push(
    '| state | mode | gap p50 | gap p99 | freeze p50 | downtime p50 | total p50 | rounds | final dirty | sent / state | lost | dup | baseline gap p50 | baseline freeze p50 | no-hint gap p50 / p99 | idle gap p50 / p99 |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  );
  const kib = (b: number) => (b >= 1 << 20 ? `${fmt(b / (1 << 20))} MiB` : `${fmt(b / 1024)} KiB`);
  for (const c of m.cases) {
    out.push(
      `| ${kib(c.state_bytes)} | ${c.mode} | ${fmt(c.gap_ms_p50, 1)} ms | ${fmt(c.gap_ms_p99, 1)} ms | ${fmt(c.freeze_ms_p50, 1)} ms | ${c.downtime_ms_p50 === undefined ? '–' : `${fmt(c.downtime_ms_p50, 1)} ms`} | ${fmt(c.total_ms_p50, 0)} ms | ${c.rounds_p50} | ${kib(c.final_dirty_bytes_p50)} | ${fmt(c.bytes_sent_over_state, 2)} | ${c.lost} | ${c.duplicated} | ${fmt(c.baseline_gap_ms_p50, 1)} ms | ${fmt(c.baseline_freeze_ms_p50, 1)} ms | ${c.nohint_gap_ms_p50 === undefined ? '–' : `${fmt(c.nohint_gap_ms_p50, 1)} / ${fmt(c.nohint_gap_ms_p99 ?? 0, 1)} ms`} | ${fmt(c.idle_gap_ms_p50, 1)} / ${fmt(c.idle_gap_ms_p99, 1)} ms |`,
    );
  }
  const mib = m.cases.filter((c) => c.state_bytes === 1 << 20);
  out.push('', 'Targets (1 MiB at 1 kHz):', '');
  for (const c of mib) {
    out.push(
      `- ${c.mode}: gap p50 ${fmt(c.gap_ms_p50, 1)} ms (≤ 5: ${met(c.gap_ms_p50 <= 5)}), p99 ${fmt(c.gap_ms_p99, 1)} ms (≤ 20: ${met(c.gap_ms_p99 <= 20)}), freeze p50 ${fmt(c.freeze_ms_p50, 1)} ms with final dirty set ${kib(c.final_dirty_bytes_p50)} (≤ 2 ms: ${met(c.freeze_ms_p50 <= 2)}), downtime p50 ${c.downtime_ms_p50 === undefined ? '–' : `${fmt(c.downtime_ms_p50, 1)} ms (≤ 2 ms: ${met(c.downtime_ms_p50 <= 2)})`}; lost = duplicated = 0: ${met(c.lost === 0 && c.duplicated === 0)}.`,
    );
  }
  const svg = barChart({
    title: 'Client-observed gap, p50 (ms): pre-copy vs stop-and-copy',
    groups: m.cases.map((c) => `${kib(c.state_bytes)} ${c.mode}`),
    series: [
      { name: 'pre-copy', values: m.cases.map((c) => c.gap_ms_p50) },
      { name: 'stop-and-copy (baseline)', values: m.cases.map((c) => c.baseline_gap_ms_p50) },
      { name: 'idle (same window, nothing moving)', values: m.cases.map((c) => c.idle_gap_ms_p50) },
    ],
  });
  writeFileSync(new URL('docs/img/migration-gap.svg', root), svg);
  out.push('', '![client gap by state size and mode](img/migration-gap.svg)', '');
}

const d = load<DrainResult>('drain');
if (d) {
  out.push('## Drain (`drain`)', '');
  out.push(
    `${fmt(d.sessions)} sessions × ${fmt(d.state_bytes)} B of state on one host, drained through the directory to two others (${d.batches} batches).`,
    '',
  );
  out.push('| figure | measured | target |', '|---|---|---|');
  out.push(
    `| drain request → every instance committed elsewhere | ${fmt(d.seconds, 2)} s | ≤ 5 s: ${met(d.seconds <= 5)} |`,
  );
  out.push(`| sessions per second | ${fmt(d.sessions_per_s)} | |`);
  out.push(`| drain request → every client resumed at its new host | ${fmt(d.clients_seconds, 2)} s | |`);
  if (d.client_interruption_ms_p50 !== undefined) {
    out.push(
      `| each batch, freeze → its sessions served at the destination (hosts' side of each session's interruption), p50 / p99 | ${fmt(d.batch_downtime_ms_p50)} / ${fmt(d.batch_downtime_ms_p99)} ms | |`,
      `| each client, MOVE → resumed at its new host, p50 / p99 (includes the one bench thread that moves every client) | ${fmt(d.client_interruption_ms_p50)} / ${fmt(d.client_interruption_ms_p99)} ms | |`,
      `| that thread's event-loop delay meanwhile, p50 / max | ${fmt(d.clients_loop_delay_ms_p50)} / ${fmt(d.clients_loop_delay_ms_max)} ms | |`,
    );
  }
  if (d.ws_baseline) {
    out.push(
      `| baseline, same run: as many raw \`ws\` clients moved between plain \`ws\` servers (no state, no auth) | ${fmt(d.ws_baseline.seconds, 2)} s | |`,
      `| every client resumed, over the baseline | ${fmt(d.clients_over_ws, 2)}× | |`,
      `| CPU time of every process, drain request → every client resumed (baseline) | ${fmt(d.cpu_seconds, 1)} s (${fmt(d.ws_baseline.cpu_seconds, 1)} s) | |`,
    );
  }
  out.push(`| batch (up to 250 instances) start → commit, p50 | ${fmt(d.batch_commit_ms_p50)} ms | |`);
  out.push(`| lost / duplicated | ${d.lost} / ${d.duplicated} | 0 / 0: ${met(d.lost === 0 && d.duplicated === 0)} |`);
  out.push(
    `| placement | ${Object.entries(d.placement)
      .map(([h, n]) => `${h}: ${n}`)
      .join(', ')} | |`,
    '',
  );
  if (d.ws_baseline && d.ws_baseline.seconds > 5) {
    out.push(
      `On this machine (${d.machine.cpus} CPUs, the clients on it too) merely moving ${fmt(d.sessions)} raw \`ws\` clients from one server to two others takes ${fmt(d.ws_baseline.seconds, 2)} s, more than the 5 s target.`,
      '',
    );
  }
}

out.push('## Anchors', '');
out.push(
  '- The Migrate paper (seed 004): session resumption in "a few hundred milliseconds"; 64 SSH continuations in 1.5 s;',
);
out.push('  continuations at 1–5 % of the process footprint.');
out.push(
  '- Live VM migration (seed 003): Xen 60–210 ms downtime; QEMU’s default downtime ceiling 300 ms; CRIU dump + restore 60–90 ms.',
);
out.push('');
writeFileSync(new URL('docs/benchmarks.md', root), out.join('\n'));
// Aligned tables, as the linter wants them (the page is checked with the rest of the repository).
execFileSync(fileURLToPath(new URL('node_modules/.bin/biome', root)), ['format', '--write', 'docs/benchmarks.md'], {
  cwd: fileURLToPath(root),
  stdio: 'ignore',
});
process.stdout.write('wrote docs/benchmarks.md\n');
