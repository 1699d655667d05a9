import { spawn } from 'node:child_process';
import { once } from 'node:events';

/** The CLI from source (through tsx), so tests never run a stale build in dist/. */
export const ROAM = new URL('../../src/cli/main.ts', import.meta.url).pathname;
export const NODE_ARGS = ['--import', 'tsx'];

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
