import { spawn } from 'node:child_process';
import { once } from 'node:events';

/** The CLI from source (through tsx), so tests never run a stale build in dist/. */
export const ROAM = new URL('../../src/cli/main.ts', import.meta.url).pathname;
/**
 * Node flags for every `roam` the tests and benchmarks start. ROAM_TEST_NODE_ARGS adds more, e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile the hosts of a benchmark (flags that
 * NODE_OPTIONS does not accept).
 */
export const NODE_ARGS = ['--import', 'tsx', ...(process.env.ROAM_TEST_NODE_ARGS ?? '').split(' ').filter(Boolean)];
/**
 * Whether those flags profile: a profile is written only when the process exits by itself, so
 * cleanup then asks it to stop (SIGTERM) before it kills it.
 */
export const PROFILING = NODE_ARGS.some((a) => a.startsWith('--cpu-prof') || a.startsWith('--heap-prof'));
/** Whether ROAM_TEST_NODE_ARGS changed how the roam processes run (any flag: a profiler, a V8 heap size). */
export const EXTRA_NODE_ARGS = NODE_ARGS.length > 2;

/** Runs `roam <args>` to completion. */
export function roam(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = spawn(process.execPath, [...NODE_ARGS, ROAM, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d) => {
    stdout += d;
  });
  p.stderr.on('data', (d) => {
    stderr += d;
  });
  return once(p, 'close').then(([code]) => ({ code: code as number | null, stdout, stderr }));
}
