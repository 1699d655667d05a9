import type { ChildProcess } from 'node:child_process';

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
