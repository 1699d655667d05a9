import { Host, type HostOptions, silentLogger } from '../../src/host/index.js';
import { openSqliteStore, type Store } from '../../src/store/index.js';
import { tempDir } from './server.js';

export const SERVICES = {
  counter: new URL('./services/counter.ts', import.meta.url).pathname,
  counterV2: new URL('./services/counter-v2.ts', import.meta.url).pathname,
  room: new URL('./services/room.ts', import.meta.url).pathname,
  stream: new URL('./services/stream.ts', import.meta.url).pathname,
  needy: new URL('./services/needy.ts', import.meta.url).pathname,
};

export interface TestHost {
  host: Host;
  store: Store;
  url: string;
  dbPath: string;
  close(): Promise<void>;
}

/**
 * An in-process Host on a fresh SQLite file, listening on tcp://127.0.0.1:0. `wrapStore` puts
 * something between the host and that Store (to hold or observe its calls); closing the host
 * closes the wrapper.
 */
export async function startTestHost(
  opts: Partial<HostOptions> & { dir?: string; listen?: string; wrapStore?: (store: Store) => Store } = {},
): Promise<TestHost> {
  const dir = opts.dir ? undefined : await tempDir();
  const dbPath = `${opts.dir ?? dir?.path}/roam.db`;
  const opened = opts.store ?? (await openSqliteStore({ path: dbPath }));
  const store = opts.wrapStore ? opts.wrapStore(opened) : opened;
  const host = await Host.start({
    logger: silentLogger(),
    services: [
      { name: 'counter', module: SERVICES.counter },
      { name: 'room', module: SERVICES.room },
    ],
    ...opts,
    store,
  });
  const l = await host.listen(opts.listen ?? 'tcp://127.0.0.1:0');
  return {
    host,
    store,
    url: l.url,
    dbPath,
    close: async () => {
      await host.close();
      await store.close();
      await dir?.cleanup();
    },
  };
}
