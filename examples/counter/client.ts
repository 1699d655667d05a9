/**
 * A client of the counter example: starts the counter and prints what arrives.
 *   npx tsx examples/counter/client.ts ws://127.0.0.1:PORT [periodMs] [count]
 *
 * Kill the network (or the host, if it was stopped with Ctrl-C and started again on the same
 * store and port) while it runs: the indices carry on without a gap.
 */
import { connect } from '../../src/client/node.js';

const url = process.argv[2];
if (!url) {
  console.error('usage: client.ts ws://127.0.0.1:PORT [periodMs] [count]');
  process.exit(2);
}
const periodMs = Number(process.argv[3] ?? 100);
const count = Number(process.argv[4] ?? 50);

const session = connect(url, { service: 'counter' });

// The session's reconnect timers never keep Node alive on their own (roam's clock unrefs them), so
// while the host is unreachable nothing else would: hold the process open until the session ends.
const keepAlive = setInterval(() => {}, 60_000);
session.on('closed', () => clearInterval(keepAlive));
session.on('lost', () => clearInterval(keepAlive));
const dec = new TextDecoder();
let expected = 1;
session.on('message', (data, channel) => {
  const text = dec.decode(data);
  if (channel !== 0) {
    console.log(`[${text}]`);
    return;
  }
  const i = Number(text);
  if (i !== expected) console.error(`gap: expected ${expected}, got ${i}`);
  expected = i + 1;
  console.log(i);
  if (i >= count) session.close('done');
});
session.on('suspended', () => console.log('[transport lost; resuming…]'));
session.on('resumed', () => console.log('[resumed]'));
session.on('lost', (e) => {
  console.error(`[session lost: ${e.code} ${e.message}]`);
  process.exitCode = 1;
});

await session.ready;
console.log(`[session ${session.id}]`);
session.send(`start ${periodMs}`);
