/**
 * Child process of the store race test: opens the SQLite store at argv[2], prints `ready`, waits
 * for `go T` on stdin, from wall-clock time T increments the counter at argv[3] argv[4] times with CAS retry loops, and
 * prints its `CasResult` (the values and revisions it wrote, how often it lost) as JSON.
 */
import { createInterface } from 'node:readline';
import { openSqliteStore } from '../../src/store/index.js';
import { casIncrement } from './store-values.js';

const [path, key, times] = process.argv.slice(2);
if (!path || !key || !times) throw new Error('usage: store-cas-child.ts DB_PATH KEY TIMES');
const store = await openSqliteStore({ path });
const lines = createInterface({ input: process.stdin });
process.stdout.write('ready\n');
// `go T`: start at wall-clock time T (ms), so every writer starts together.
const go = await new Promise<string>((resolve) => lines.once('line', resolve));
lines.close();
await new Promise((r) => setTimeout(r, Number(go.split(' ')[1] ?? 0) - Date.now()));
const result = await casIncrement(store, key, Number(times));
await store.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
