/**
 * Server half of the `session` bench, run as a child process by bench/session.ts:
 *
 *   node --import tsx bench/session-server.ts
 *
 * Starts (a) a roam SessionServer on ws://127.0.0.1:0 with the services `echo` and `sink` and
 * (b) a raw `ws` WebSocketServer (perMessageDeflate off) on 127.0.0.1:0 with the same semantics at
 * the paths /sink and /echo. Prints one JSON line on stdout:
 *
 *   {"roam":"ws://127.0.0.1:PORT","ws":"ws://127.0.0.1:PORT2","pid":N}
 *
 * and exits by itself (every socket and listener closed) when stdin closes or when it receives the
 * IPC message {"type":"shutdown"}. Extra node flags (e.g. --cpu-prof) are the parent's business.
 *
 * BENCH_DIAG=1 (latency breakdown): the roam server takes its WebSocket connections from a
 * WebSocketServer of ours, configured like roam's own listener, and hands them to
 * `SessionServer.accept`, so that a `message` listener registered before the roam transport's can
 * timestamp each WebSocket message's arrival before any roam code runs.
 */
import type { AddressInfo } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';
import { echoService, SessionServer, silentLogger } from '../src/host/index.js';
import { WsTransport } from '../src/transport/index.js';
import { Sink, sinkServiceWith } from './session-sink.js';

const DIAG = process.env.BENCH_DIAG === '1';

function listening(wss: WebSocketServer): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    wss.once('listening', () => resolve((wss.address() as AddressInfo).port));
    wss.once('error', reject);
  });
}

async function main(): Promise<void> {
  let lastArrival = 0n;
  const arrival = DIAG ? (): bigint => lastArrival : undefined;
  const roam = new SessionServer({
    services: { echo: echoService, sink: sinkServiceWith(arrival) },
    logger: silentLogger(),
  });
  let roamUrl: string;
  let diagWss: WebSocketServer | undefined;
  if (!DIAG) {
    roamUrl = (await roam.listen('ws://127.0.0.1:0')).url;
  } else {
    diagWss = new WebSocketServer({
      host: '127.0.0.1',
      port: 0,
      perMessageDeflate: false,
      maxPayload: 16 * 1024 * 1024,
    });
    diagWss.on('connection', (ws: WebSocket, req) => {
      ws.on('message', () => {
        lastArrival = process.hrtime.bigint();
      });
      roam.accept(new WsTransport(ws, req.socket.remoteAddress));
    });
    roamUrl = `ws://127.0.0.1:${await listening(diagWss)}`;
  }

  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  wss.on('connection', (ws: WebSocket, req) => {
    ws.on('error', () => {});
    if (DIAG) {
      ws.on('message', () => {
        lastArrival = process.hrtime.bigint();
      });
    }
    if (req.url === '/echo') {
      ws.on('message', (data: Buffer, isBinary: boolean) => ws.send(data, { binary: isBinary }));
      return;
    }
    const sink = new Sink((json) => {
      if (ws.readyState === ws.OPEN) ws.send(json);
    }, arrival);
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) sink.data(data);
      else sink.control(data.toString('utf8'));
    });
  });
  const wsPort = await listening(wss);

  let stopping = false;
  const shutdown = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    // A leak anywhere below must not leave an orphan; say so loudly if the fallback is needed.
    setTimeout(() => {
      process.stderr.write(`session-server: still alive 3 s after shutdown: ${process.getActiveResourcesInfo()}\n`);
      process.exit(1);
    }, 3000).unref();
    await roam.close();
    for (const server of diagWss ? [wss, diagWss] : [wss]) {
      for (const c of server.clients) c.terminate();
      await new Promise<void>((r) => server.close(() => r()));
    }
    process.stdin.destroy();
    if (process.connected) process.disconnect();
  };
  process.stdin.on('end', () => void shutdown());
  process.stdin.on('close', () => void shutdown());
  process.stdin.resume();
  process.on('message', (m: unknown) => {
    if ((m as { type?: unknown } | null)?.type === 'shutdown') void shutdown();
  });
  process.on('disconnect', () => void shutdown());

  process.stdout.write(`${JSON.stringify({ roam: roamUrl, ws: `ws://127.0.0.1:${wsPort}`, pid: process.pid })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`session-server: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
