import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { type AddressInfo, createServer as createNetServer, connect as netConnect, type Socket } from 'node:net';
import {
  createServer as createTlsServer,
  type ConnectionOptions as TlsConnectionOptions,
  type TlsOptions,
  connect as tlsConnect,
} from 'node:tls';
import { WebSocket, WebSocketServer } from 'ws';
import type { Transport } from '../session/index.js';
import { RoamError } from '../wire/index.js';
import { TcpTransport } from './tcp.js';
import { WsTransport, zeroMask } from './ws.js';

export { nodeSessionCrypto } from './crypto-node.js';
export { TcpTransport } from './tcp.js';
export { WsTransport } from './ws.js';

/** Schemes roam speaks: WebSocket and raw TCP, each plain or over TLS. */
export type Scheme = 'ws' | 'wss' | 'tcp' | 'tls';

export interface ConnectTransportOptions {
  /** Local address to bind, e.g. '127.0.0.2' (a client that changed network). */
  localAddress?: string | undefined;
  /** TLS client options for wss:// and tls:// (ca, servername, rejectUnauthorized, …). */
  tls?: TlsConnectionOptions;
  /** Give up opening after this long. Default 10 s. */
  timeoutMs?: number;
}

function parse(url: string): { scheme: Scheme; host: string; port: number; u: URL } {
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new RoamError('INVALID_ARGUMENT', `not a URL: ${url}`, { cause });
  }
  const scheme = u.protocol.slice(0, -1);
  if (scheme !== 'ws' && scheme !== 'wss' && scheme !== 'tcp' && scheme !== 'tls') {
    throw new RoamError('INVALID_ARGUMENT', `unsupported scheme ${u.protocol} in ${url}: use ws, wss, tcp or tls`);
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = u.port ? Number(u.port) : scheme === 'wss' ? 443 : scheme === 'ws' ? 80 : Number.NaN;
  if (!Number.isInteger(port)) throw new RoamError('INVALID_ARGUMENT', `${url} needs a port`);
  return { scheme, host, port, u };
}

/** Opens a client transport for a ws://, wss://, tcp:// or tls:// URL. */
export function connectTransport(url: string, opts: ConnectTransportOptions = {}): Promise<Transport> {
  const { scheme, host, port } = parse(url);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  if (scheme === 'ws' || scheme === 'wss') {
    return new Promise<Transport>((resolve, reject) => {
      const ws = new WebSocket(url, {
        perMessageDeflate: false,
        handshakeTimeout: timeoutMs,
        generateMask: zeroMask,
        ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
        ...(scheme === 'wss' ? opts.tls : {}),
      });
      const fail = (err: Error): void => {
        ws.removeAllListeners();
        ws.on('error', () => {});
        ws.terminate();
        reject(new RoamError('TRANSPORT_CLOSED', `could not connect to ${url}: ${err.message}`, { cause: err }));
      };
      ws.once('error', fail);
      ws.once('unexpected-response', (_req, res) => fail(new Error(`HTTP ${res.statusCode}`)));
      ws.once('open', () => {
        ws.removeAllListeners();
        resolve(new WsTransport(ws, host));
      });
    });
  }
  return new Promise<Transport>((resolve, reject) => {
    const base = { host, port, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) };
    const socket: Socket = scheme === 'tls' ? tlsConnect({ ...base, servername: host, ...opts.tls }) : netConnect(base);
    const timer = setTimeout(() => fail(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(new RoamError('TRANSPORT_CLOSED', `could not connect to ${url}: ${err.message}`, { cause: err }));
    };
    socket.once('error', fail);
    socket.once(scheme === 'tls' ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      socket.off('error', fail);
      resolve(new TcpTransport(socket, scheme));
    });
  });
}

/** A listening endpoint. */
export interface Listener {
  /** The URL clients use, with the real port (useful after listening on port 0). */
  readonly url: string;
  readonly port: number;
  /** Stops accepting and destroys every transport it accepted. */
  close(): Promise<void>;
}

export interface ListenOptions {
  /** Key and certificate for wss:// and tls://. */
  tls?: TlsOptions;
  /** Largest WebSocket message accepted. Default 16 MiB (frames inside are limited separately). */
  maxWsMessageBytes?: number;
}

/**
 * Listens on a ws://, wss://, tcp:// or tls:// URL (port 0 picks a free port) and hands every
 * accepted connection to `onTransport`.
 */
export async function listenTransport(
  url: string,
  onTransport: (t: Transport) => void,
  opts: ListenOptions = {},
): Promise<Listener> {
  const { scheme, host, port, u } = parse(url);
  if ((scheme === 'wss' || scheme === 'tls') && !opts.tls) {
    throw new RoamError('INVALID_ARGUMENT', `${scheme}:// needs tls options (key and cert)`);
  }
  const sockets = new Set<Socket>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  };

  if (scheme === 'ws' || scheme === 'wss') {
    const server = scheme === 'wss' ? createHttpsServer(opts.tls ?? {}) : createHttpServer();
    server.on('connection', track);
    server.on('request', (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('roam: WebSocket upgrade required\n');
    });
    const wss = new WebSocketServer({
      server,
      perMessageDeflate: false,
      maxPayload: opts.maxWsMessageBytes ?? 16 * 1024 * 1024,
    });
    wss.on('connection', (ws, req) => onTransport(new WsTransport(ws, req.socket.remoteAddress)));
    wss.on('error', () => {});
    await listenOn(server, host, port);
    const real = (server.address() as AddressInfo).port;
    return {
      url: `${scheme}://${u.hostname}:${real}${u.pathname === '/' ? '' : u.pathname}`,
      port: real,
      close: async () => {
        for (const c of wss.clients) c.terminate();
        wss.close();
        for (const s of sockets) s.destroy();
        await new Promise<void>((r) => server.close(() => r()));
      },
    };
  }

  const server =
    scheme === 'tls'
      ? createTlsServer(opts.tls ?? {}, (s) => onTransport(new TcpTransport(s, 'tls')))
      : createNetServer((s) => onTransport(new TcpTransport(s, 'tcp')));
  server.on(scheme === 'tls' ? 'secureConnection' : 'connection', track);
  if (scheme === 'tls') server.on('connection', track);
  server.on('tlsClientError', () => {});
  await listenOn(server, host, port);
  const real = (server.address() as AddressInfo).port;
  return {
    url: `${scheme}://${u.hostname}:${real}`,
    port: real,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function listenOn(
  server: { listen(port: number, host: string): unknown; once(ev: string, fn: (e?: Error) => void): unknown },
  host: string,
  port: number,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', (e) =>
      reject(new RoamError('INVALID_ARGUMENT', `cannot listen on ${host}:${port}: ${e?.message}`, { cause: e })),
    );
    server.once('listening', () => resolve());
    server.listen(port, host);
  });
}
