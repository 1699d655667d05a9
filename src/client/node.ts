/**
 * roam/client under Node: the browser-safe client plus connectors for ws://, wss://, tcp:// and
 * tls:// (with `localAddress`, so a test or a multi-homed device can pick its source address).
 */
import type { ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import { nodeSessionCrypto } from '../transport/crypto-node.js';
import { connectTransport } from '../transport/index.js';
import { type ConnectOptions, Session } from './session.js';

export * from './index.js';

export interface NodeConnectOptions extends ConnectOptions {
  /** TLS client options for wss:// and tls:// (ca, rejectUnauthorized, servername, …). */
  tls?: TlsConnectionOptions;
}

/** Like the browser `connect`, with Node transports. See {@link Session}. */
export function connect(url: string, opts: NodeConnectOptions): Session {
  const tls = opts.tls;
  return new Session(url, {
    crypto: nodeSessionCrypto,
    ...opts,
    connector:
      opts.connector ?? ((u, o) => connectTransport(u, { localAddress: o.localAddress, ...(tls ? { tls } : {}) })),
  });
}
