/**
 * An interactive client of the chat example: type lines, `/nick name`, `/who`; Ctrl-D leaves.
 *   npx tsx examples/chat/client.ts ws://127.0.0.1:PORT [room] [nick]
 */
import { createInterface } from 'node:readline';
import { connect } from '../../src/client/node.js';

const [url, room = 'lobby', nick] = process.argv.slice(2);
if (!url) {
  console.error('usage: client.ts ws://127.0.0.1:PORT [room] [nick]');
  process.exit(2);
}

const dec = new TextDecoder();

const session = connect(url, { service: 'chat', key: room });

// The session's reconnect timers never keep Node alive on their own (roam's clock unrefs them), so
// while the host is unreachable nothing else would: hold the process open until the session ends.
const keepAlive = setInterval(() => {}, 60_000);
session.on('closed', () => clearInterval(keepAlive));
session.on('lost', () => clearInterval(keepAlive));
// After a suspension the runtime hands back the state the service exported: here, our nickname.
session.on('exported', (key, value) => console.log(`-- exported ${key} = ${JSON.stringify(value)}`));
session.on('message', (data, channel) => {
  const text = dec.decode(data);
  console.log(channel === 0 ? text : channel === 2 ? `  ${text}` : `-- ${text}`);
});
session.on('suspended', () => console.log('-- connection lost; resuming…'));
session.on('resumed', () => console.log('-- back online'));
session.on('lost', (e) => {
  console.error(`-- session lost: ${e.code} ${e.message}`);
  process.exit(1);
});

await session.ready;
if (nick) session.send(`/nick ${nick}`);
const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (line.trim()) session.send(line);
});
rl.on('close', () => {
  session.close('bye');
});
