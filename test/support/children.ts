import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/**
 * Child processes (roam hosts, directories, gateways) that must not outlive the test process.
 * A test file that times out is ended by the runner with SIGTERM, which skips every `t.after`:
 * without this, its cluster would keep running (and keep a 2-core machine busy) as orphans.
 */
const live = new Set<ChildProcess>();
let installed = false;

function killAll(): void {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  live.clear();
}

/** Kills `child` when this process exits or is told to stop (SIGTERM, SIGINT), if it still runs. */
export function reapOnExit<C extends ChildProcess>(child: C): C {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!installed) {
    installed = true;
    process.on('exit', killAll);
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      process.once(sig, () => {
        killAll();
        // What the default disposition would have done: die of the signal.
        process.kill(process.pid, sig);
      });
    }
  }
  return child;
}

/**
 * What the kernel says process `pid` and each of its threads are doing (state, and the kernel
 * function a sleeping thread waits in), one line per thread; for the message of a failure in
 * which a process stopped answering (blocked in a syscall? spinning?). Empty where /proc is not.
 */
export function kernelState(pid: number): string {
  const read = (f: string): string => {
    try {
      return readFileSync(f, 'utf8').trim();
    } catch {
      return '?';
    }
  };
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return '';
  }
  return tasks
    .map((t) => {
      const dir = `/proc/${pid}/task/${t}`;
      // Field 3 of stat is the state; the command name (field 2) may hold spaces, hence the ')'.
      const stat = read(`${dir}/stat`);
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
      return `  ${t} ${read(`${dir}/comm`)} ${state} wchan=${read(`${dir}/wchan`)} syscall=${read(`${dir}/syscall`).split(' ')[0]}`;
    })
    .join('\n');
}
