import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { it } from 'node:test';
import { connectTransport } from './index.js';

it('the Node ws client masks its frames with an all-zero key (MASK bit set, as RFC 6455 requires)', async (t) => {
  // A bare TCP server that completes the upgrade by hand, so the test sees the frame's bytes.
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
  let wake = (): void => {};
  sock.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
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
  const tr = await transport;
  tr.bind({ data: () => {}, close: () => {} });
  tr.send(new Uint8Array([1, 2, 3]));
  await until(() => buf.length >= 2 + 4 + 3);
  assert.equal((buf[1] as number) & 0x80, 0x80, 'MASK bit set');
  assert.equal((buf[1] as number) & 0x7f, 3, 'payload length');
  assert.deepEqual([...buf.subarray(2, 6)], [0, 0, 0, 0], 'all-zero masking key');
  assert.deepEqual([...buf.subarray(6, 9)], [1, 2, 3], 'payload unchanged by the zero mask');
});
