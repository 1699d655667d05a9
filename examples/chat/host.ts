/**
 * Runs the chat example on a Host backed by a SQLite file in a temp dir.
 *   npx tsx examples/chat/host.ts [ws://127.0.0.1:7071]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Host } from '../../src/host/index.js';
import { openSqliteStore } from '../../src/store/index.js';

// ROAM_DB keeps the store across restarts; by default a fresh one in a temp dir.
const dbPath = process.env.ROAM_DB ?? join(mkdtempSync(join(tmpdir(), 'roam-chat-')), 'roam.db');
const store = await openSqliteStore({ path: dbPath });
const host = await Host.start({
  store,
  graceMs: 5000, // a member away longer than this is suspended to the Store; the room carries on
  services: [{ name: 'chat', module: new URL('./service.ts', import.meta.url) }],
});
const listener = await host.listen(process.argv[2] ?? 'ws://127.0.0.1:0');
console.log(`chat host on ${listener.url} (store ${dbPath}); Ctrl-C to stop`);
process.once('SIGINT', () => {
  void host.close().then(() => store.close());
});
