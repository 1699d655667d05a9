/**
 * Child process of the store crash-safety test: writes self-validating values and blobs to the
 * SQLite store at argv[2] in a tight loop and prints `committed N` after write N has committed,
 * until it is killed.
 */
import { openSqliteStore } from '../../src/store/index.js';
import { makeValue } from './store-values.js';

const path = process.argv[2];
if (!path) throw new Error('usage: store-crash-child.ts DB_PATH');
const store = await openSqliteStore({ path });
let last = 0;
for (let i = 0; ; i++) {
  const seed = Math.imul(i + 1, 2654435761) >>> 0 || 1;
  await store.put(`crash.v.${i}`, makeValue(i, seed, 4096 + (seed % (60 * 1024))));
  if (i % 8 === 0)
    await store.putBlob(`crash.b.${i}`, makeValue(i, seed ^ 0x5a5a5a, 64 * 1024 + (seed % (448 * 1024))));
  last = await store.compareAndSet('crash.last', last, makeValue(i, seed, 64));
  process.stdout.write(`committed ${i}\n`);
}
