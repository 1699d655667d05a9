/**
 * Runs the counter example on a Host backed by a SQLite file in a temp dir.
 *   npx tsx examples/counter/host.ts [ws://127.0.0.1:7071]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Host } from '../../src/host/index.js';
import { openSqliteStore } from '../../src/store/index.js';

// ROAM_DB keeps the store across restarts; by default a fresh one in a temp dir.
const dbPath = process.env.ROAM_DB ?? join(mkdtempSync(join(tmpdir(), 'roam-counter-')), 'roam.db');
const store = await openSqliteStore({ path: dbPath });
const host = await Host.start({
  store,
  graceMs: 2000, // a client away longer than this is suspended to the Store
  services: [{ name: 'counter', module: new URL('./service.ts', import.meta.url) }],
});
const listener = await host.listen(process.argv[2] ?? 'ws://127.0.0.1:0');
console.log(`counter host on ${listener.url} (store ${dbPath}); Ctrl-C to stop`);
process.once('SIGINT', () => {
  void host.close().then(() => store.close());
});
