import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Connector } from '../../src/client/index.js';
import { builtinServices, SessionServer, type SessionServerOptions, silentLogger } from '../../src/host/index.js';
import type { SessionEvent, Transport } from '../../src/session/index.js';
import { type ConnectTransportOptions, connectTransport, type ListenOptions } from '../../src/transport/index.js';
import { RoamError } from '../../src/wire/index.js';

export interface TestServer {
  server: SessionServer;
  /** ws:// and tcp:// URLs on 127.0.0.1 with ports picked by the OS. */
  ws: string;
  tcp: string;
  close(): Promise<void>;
}

/** A SessionServer with the built-in services, listening on ws and tcp on free ports. */
export async function startTestServer(
  opts: Partial<SessionServerOptions> = {},
  listen: { ws?: ListenOptions; tcp?: ListenOptions } = {},
): Promise<TestServer> {
  const server = new SessionServer({
    logger: silentLogger(),
    ...opts,
    services: opts.services ?? builtinServices(opts.clock),
  });
  const ws = await server.listen('ws://127.0.0.1:0', listen.ws);
  const tcp = await server.listen('tcp://127.0.0.1:0', listen.tcp);
  return { server, ws: ws.url, tcp: tcp.url, close: () => server.close() };
}

/**
 * A connector whose door can be shut: while shut, every attempt fails like an unreachable host.
 * Lets a test keep a client away for exactly as long as it wants, without timing guesses.
 */
export function gatedConnector(base: ConnectTransportOptions = {}): Connector & { open: boolean; attempts: number } {
  const c = Object.assign(
    async (url: string, o: { localAddress?: string | undefined }): Promise<Transport> => {
      c.attempts++;
      if (!c.open) throw new RoamError('TRANSPORT_CLOSED', 'gate shut (test)');
      return connectTransport(url, { ...base, localAddress: o.localAddress });
    },
    { open: true, attempts: 0 },
  );
  return c;
}

/** A connector that records every byte the client sends, per transport. */
export function recordingConnector(): Connector & { sent: Uint8Array[][] } {
  const sent: Uint8Array[][] = [];
  const c = Object.assign(
    async (url: string, o: { localAddress?: string | undefined }): Promise<Transport> => {
      const t = await connectTransport(url, { localAddress: o.localAddress });
      const log: Uint8Array[] = [];
      sent.push(log);
      const send = t.send.bind(t);
      t.send = (b: Uint8Array) => {
        log.push(b.slice());
        send(b);
      };
      return t;
    },
    { sent },
  );
  return c;
}

/** A temporary directory removed by the returned cleanup. */
export async function tempDir(prefix = 'roam-test-'): Promise<{ path: string; cleanup(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

/** A self-signed certificate for 127.0.0.1/localhost, made with the system's openssl. */
export async function selfSignedCert(dir: string): Promise<{ key: string; cert: string }> {
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  await promisify(execFile)('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '1',
    '-subj',
    '/CN=localhost',
    '-addext',
    'subjectAltName=IP:127.0.0.1,DNS:localhost',
    '-keyout',
    keyPath,
    '-out',
    certPath,
  ]);
  return { key: await readFile(keyPath, 'utf8'), cert: await readFile(certPath, 'utf8') };
}

/** Anything that emits session lifecycle events: a client Session or a ServerSession. */
export interface EventSource {
  on(ev: 'event', fn: (e: SessionEvent) => void): unknown;
  off(ev: 'event', fn: (e: SessionEvent) => void): unknown;
}

/** Resolves on the first lifecycle event of `type` that satisfies `pred`. */
export function nextEvent<T extends SessionEvent['type']>(
  emitter: EventSource,
  type: T,
  pred: (e: Extract<SessionEvent, { type: T }>) => boolean = () => true,
): Promise<Extract<SessionEvent, { type: T }>> {
  return new Promise((resolve) => {
    const fn = (e: SessionEvent): void => {
      if (e.type === type && pred(e as Extract<SessionEvent, { type: T }>)) {
        emitter.off('event', fn);
        resolve(e as Extract<SessionEvent, { type: T }>);
      }
    };
    emitter.on('event', fn);
  });
}
