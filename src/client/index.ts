/**
 * roam/client — browser-safe client. Imports nothing from Node; transports come from the
 * platform WebSocket unless a `connector` is given. Under Node, the package's `roam/client`
 * export resolves to ./node.ts, which adds ws/wss/tcp/tls connectors.
 */
import { type ConnectOptions, type Connector, Session } from './session.js';
import { connectPlatformWebSocket } from './websocket.js';

export type { LostReason, SessionEvent } from '../session/events.js';
export type { CodeName } from '../wire/codes.js';
export { ProtocolError, RoamError } from '../wire/errors.js';
export type { ConnectOptions, Connector, ReconnectOptions, SessionState } from './session.js';
export { Session } from './session.js';
export { connectPlatformWebSocket, PlatformWebSocketTransport } from './websocket.js';

const platformConnector: Connector = (url) => connectPlatformWebSocket(url);

/**
 * Opens a session to `service` at `url` and returns it at once; `await session.ready` for the
 * handshake. The session reconnects and resumes by itself until it is closed or lost.
 */
export function connect(url: string, opts: ConnectOptions): Session {
  return new Session(url, { ...opts, connector: opts.connector ?? platformConnector });
}
