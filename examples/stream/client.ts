/**
 * A listener for the stream example: plays a file from the host's media root and saves it.
 *   npx tsx examples/stream/client.ts ws://127.0.0.1:PORT <path> [bytesPerSecond] [outFile]
 *
 * Prints progress and, at the end, the byte count and SHA-256 of what arrived: compare it with
 * `sha256sum <path>` on the host, however often the connection dropped meanwhile.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { connect } from '../../src/client/node.js';

const [url, path, rate = '65536', outFile] = process.argv.slice(2);
if (!url || !path) {
  console.error('usage: client.ts ws://127.0.0.1:PORT <path> [bytesPerSecond] [outFile]');
  process.exit(2);
}

const session = connect(url, { service: 'stream' });

// The session's reconnect timers never keep Node alive on their own (roam's clock unrefs them), so
// while the host is unreachable nothing else would: hold the process open until the session ends.
const keepAlive = setInterval(() => {}, 60_000);
session.on('closed', () => clearInterval(keepAlive));
session.on('lost', () => clearInterval(keepAlive));
const hash = createHash('sha256');
const out = outFile ? createWriteStream(outFile) : undefined;
const dec = new TextDecoder();
let bytes = 0;

session.on('message', (data, channel) => {
  if (channel === 0) {
    hash.update(data);
    out?.write(data);
    bytes += data.length;
    if (bytes % (64 * 1024) === 0) console.log(`${bytes >> 10} KiB`);
    return;
  }
  const text = dec.decode(data);
  console.log(`[${text}]`);
  if (text.startsWith('end ') || text.startsWith('error: ')) {
    console.log(`${bytes} bytes, sha256 ${hash.digest('hex')}`);
    out?.end();
    session.close('done');
    if (text.startsWith('error: ')) process.exitCode = 1;
  }
});
session.on('suspended', () => console.log('[transport lost; resuming…]'));
session.on('resumed', () => console.log('[resumed]'));
session.on('lost', (e) => {
  console.error(`[session lost: ${e.code} ${e.message}]`);
  process.exitCode = 1;
});

await session.ready;
session.send(`play ${path} ${rate}`);
