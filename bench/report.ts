/**
 * Renders docs/benchmarks.md from bench/results/*.json, so the figures in the docs are always
 * the ones the last full run measured. Run: npx tsx bench/report.ts
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
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
  '```',
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

out.push('## Anchors', '');
out.push(
  '- The Migrate paper (seed 004): session resumption in "a few hundred milliseconds"; 64 SSH continuations in 1.5 s;',
);
out.push('  continuations at 1–5 % of the process footprint.');
out.push('');
writeFileSync(new URL('docs/benchmarks.md', root), out.join('\n'));
process.stdout.write('wrote docs/benchmarks.md\n');
