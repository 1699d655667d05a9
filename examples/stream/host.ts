/**
 * Runs the stream example on a Host backed by a SQLite file in a temp dir, serving files under
 * MEDIA_ROOT (default: the current directory).
 *   npx tsx examples/stream/host.ts [MEDIA_ROOT] [ws://127.0.0.1:7071]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Host } from '../../src/host/index.js';
import { openSqliteStore } from '../../src/store/index.js';

// Read by the service in its worker thread (workers get a copy of the environment at start).
process.env.ROAM_STREAM_ROOT = resolve(process.argv[2] ?? '.');
// ROAM_DB keeps the store across restarts; by default a fresh one in a temp dir.
const dbPath = process.env.ROAM_DB ?? join(mkdtempSync(join(tmpdir(), 'roam-stream-')), 'roam.db');
const store = await openSqliteStore({ path: dbPath });
const host = await Host.start({
  store,
  graceMs: 2000,
  services: [{ name: 'stream', module: new URL('./service.ts', import.meta.url) }],
});
const listener = await host.listen(process.argv[3] ?? 'ws://127.0.0.1:0');
console.log(
  `stream host on ${listener.url}, media root ${process.env.ROAM_STREAM_ROOT}, store ${dbPath}; Ctrl-C to stop`,
);
process.once('SIGINT', () => {
  void host.close().then(() => store.close());
});
