import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { openSqliteStore } from '../../src/store/index.js';
import { reapOnExit } from './children.js';
import { SERVICES } from './host.js';
import { tempDir } from './server.js';

const SCRIPT = new URL('./host-process.ts', import.meta.url).pathname;

export interface SpawnedHost {
  url: string;
  exited: Promise<unknown>;
  kill(signal: NodeJS.Signals): void;
  /** Resolves once the session's continuation is in the Store (watched, not polled). */
  waitSuspended(sid: string): Promise<void>;
  /** Starts a new host process on the same Store file and the same port. */
  restart(opts?: { counterModule?: keyof typeof SERVICES }): Promise<SpawnedHost>;
  cleanup(): Promise<void>;
}

/** A Host in a child process (test/support/host-process.ts) on a fresh SQLite file. */
export async function spawnHost(opts: { graceMs?: number } = {}): Promise<SpawnedHost> {
  const dir = await tempDir();
  const dbPath = `${dir.path}/roam.db`;
  const children = new Set<ChildProcess>();
  const start = async (listen: string, counterModule: keyof typeof SERVICES = 'counter'): Promise<SpawnedHost> => {
    const child = reapOnExit(
      spawn(
        process.execPath,
        ['--import', 'tsx', SCRIPT, dbPath, listen, `counter=${SERVICES[counterModule]}`, `room=${SERVICES.room}`],
        {
          stdio: ['ignore', 'pipe', 'inherit'],
          env: { ...process.env, ROAM_GRACE_MS: String(opts.graceMs ?? 30_000) },
        },
      ),
    );
    children.add(child);
    const exited = once(child, 'exit').finally(() => children.delete(child));
    const [line] = (await Promise.race([
      once(createInterface({ input: child.stdout }), 'line'),
      exited.then(() => {
        throw new Error('host process exited before listening');
      }),
    ])) as [string];
    const url = (JSON.parse(line) as { url: string }).url;
    return {
      url,
      exited,
      kill: (sig) => child.kill(sig),
      async waitSuspended(sid) {
        const store = await openSqliteStore({ path: dbPath, pollIntervalMs: 10 });
        const ac = new AbortController();
        try {
          const events = store.watch('roam.session.', { signal: ac.signal });
          if (await store.get(`roam.session.${sid}`)) return;
          for await (const ev of events) if (ev.type === 'put' && ev.key === `roam.session.${sid}`) return;
        } finally {
          ac.abort();
          await store.close();
        }
      },
      restart: (o = {}) => start(`tcp://127.0.0.1:${new URL(url).port}`, o.counterModule),
      async cleanup() {
        for (const c of children) c.kill('SIGKILL');
        await dir.cleanup();
      },
    };
  };
  return start('tcp://127.0.0.1:0');
}
