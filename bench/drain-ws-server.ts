/**
 * Server half of the `drain` suite's raw `ws` baseline, run as a child process by bench/drain.ts:
 *
 *   node --import tsx bench/drain-ws-server.ts
 *
 * A plain `ws` WebSocketServer (perMessageDeflate off) on 127.0.0.1:0 that answers a client's text
 * "hi" with "ok" — the one round trip a client needs to know its new server took it. Prints one
 * JSON line on stdout, `{"url":"ws://127.0.0.1:PORT","pid":N}`, then reads commands on stdin:
 *
 *   move N URL URL…  tell every connected client, in turn, to reconnect to the next URL of the
 *                    list (text "move URL"), at most N at a time: the next client is told when an
 *                    earlier one closed its connection here. The client opens the new connection,
 *                    says "hi", waits for "ok" and cuts this one. N plays the part of roam's
 *                    drain concurrency × batch size, and keeps both ends under their file limits.
 *
 * It exits by itself, every socket closed, when stdin closes.
 */
import type { AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { type WebSocket, WebSocketServer } from 'ws';

async function main(): Promise<void> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, clientTracking: true });
  wss.on('connection', (ws: WebSocket) => {
    ws.on('error', () => {});
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary && data.toString('utf8') === 'hi') ws.send('ok');
    });
  });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  const { port } = wss.address() as AddressInfo;
  process.stdout.write(`${JSON.stringify({ url: `ws://127.0.0.1:${port}`, pid: process.pid })}\n`);
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    const [cmd, window, ...urls] = line.trim().split(/\s+/);
    const max = Number(window);
    if (cmd !== 'move' || !(max >= 1) || urls.length === 0) {
      process.stderr.write(`drain-ws-server: unknown command ${JSON.stringify(line)}\n`);
      return;
    }
    const queue = [...wss.clients];
    let i = 0;
    const next = (): void => {
      const ws = queue.pop();
      if (!ws) return;
      ws.once('close', next);
      ws.send(`move ${urls[i++ % urls.length]}`);
    };
    for (let k = 0; k < max; k++) next();
  });
  lines.once('close', () => {
    for (const ws of wss.clients) ws.terminate();
    wss.close();
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`drain-ws-server: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
});
