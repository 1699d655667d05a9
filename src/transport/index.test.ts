import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { it } from 'node:test';
import type { Transport } from '../session/index.js';
import { connectTransport } from './index.js';

/**
 * A Node ws client transport connected to a bare TCP server that completes the upgrade by hand,
 * so the test sees the bytes of every frame the client sends, and when its connection ends.
 */
async function bareWsPeer(t: { after(fn: () => unknown): void }) {
  const server = createServer();
  let peer: Socket | undefined;
  t.after(async () => {
    // The bare server never answers a close handshake: cut the connection, then close.
    peer?.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const transport = connectTransport(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`);
  const [sock] = await accepted;
  peer = sock;
  // One listener for the whole test: a flowing socket drops chunks that arrive between two once()s.
  let buf = Buffer.alloc(0);
  let ended = false;
  let wake = (): void => {};
  sock.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    wake();
  });
  sock.on('end', () => {
    ended = true;
    wake();
  });
  const until = (done: () => boolean): Promise<void> =>
    new Promise((resolve) => {
      wake = () => done() && resolve();
      wake();
    });
  await until(() => buf.includes('\r\n\r\n'));
  const key = /sec-websocket-key: *(\S+)/i.exec(buf.toString('latin1'))?.[1];
  assert.ok(key);
  const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  buf = Buffer.alloc(0);
  sock.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  const tr: Transport = await transport;
  let closes = 0;
  tr.bind({ data: () => {}, close: () => closes++ });
  return { tr, until, bytes: () => buf, ended: () => ended, closes: () => closes };
}

it('the Node ws client masks its frames with an all-zero key (MASK bit set, as RFC 6455 requires)', async (t) => {
  const { tr, until, bytes } = await bareWsPeer(t);
  tr.send(new Uint8Array([1, 2, 3]));
  await until(() => bytes().length >= 2 + 4 + 3);
  const buf = bytes();
  assert.equal((buf[1] as number) & 0x80, 0x80, 'MASK bit set');
  assert.equal((buf[1] as number) & 0x7f, 3, 'payload length');
  assert.deepEqual([...buf.subarray(2, 6)], [0, 0, 0, 0], 'all-zero masking key');
  assert.deepEqual([...buf.subarray(6, 9)], [1, 2, 3], 'payload unchanged by the zero mask');
});

it('a ws transport closes with a close frame, and aborts with none: its connection just ends', async (t) => {
  const closing = await bareWsPeer(t);
  closing.tr.close();
  await closing.until(() => closing.bytes().length >= 2);
  assert.equal(closing.bytes()[0], 0x88, 'close() sends a close frame (FIN, opcode 8)');
  assert.equal(closing.ended(), false, 'and waits for the answer before it ends the connection');

  const aborting = await bareWsPeer(t);
  assert.ok(aborting.tr.abort, 'the Node ws transport can abort');
  aborting.tr.abort();
  await aborting.until(() => aborting.ended());
  assert.equal(aborting.bytes().length, 0, 'abort() sends nothing before the connection ends');
  // Either way the handler hears one close.
  assert.equal(aborting.closes(), 1);
  assert.equal(closing.closes(), 1);
});
