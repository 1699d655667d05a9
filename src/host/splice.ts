import type { IncomingMessage } from 'node:http';
import type { WebSocket } from 'ws';
import type { Clock } from '../session/index.js';
import type { PeerLink } from '../transport/peer.js';
import { WsTransport } from '../transport/ws.js';
import { NONCE_BYTES } from '../wire/index.js';
import type { SessionServer } from './server.js';

/** Path of the splice link on a host's peer endpoint. */
export const SPLICE_PATH = '/peer/splice';

/** Longest `remote` query value kept (it only labels logs and `remoteAddress`). */
const MAX_REMOTE_CHARS = 200;

/**
 * The host side of a gateway splice: `peerServer.link(SPLICE_PATH, spliceLink(server))`.
 *
 * A gateway that accepted a client sent CHALLENGE(nonce) itself, read the client's first frame
 * (HELLO or RESUME) to pick this host, and opens an authenticated peer link to
 * `/peer/splice?nonce=<base64url nonce>&remote=<client address>`. The link then carries the
 * client's frames verbatim, so it is handed to the session server as an ordinary client
 * transport, with the gateway's challenge: the server sends no CHALLENGE of its own and checks a
 * RESUME against that nonce.
 *
 * Trust: only cluster members can open the link (PeerServer checks the request signature, which
 * covers the query string, and remembers its nonce, so a captured link request cannot be
 * replayed). The gateway guarantees the nonce is fresh and handed to one host at a time: to a
 * second only when the first answered the RESUME with MIGRATION_ABORTED (the session stayed on the
 * host that sent the tentative MOVE), so a proof resumes a session at most once. The session key
 * never reaches the gateway: it only relays a proof the client computed.
 */
export function spliceLink(server: SessionServer, opts: { clock?: Clock } = {}): PeerLink {
  return (ws: WebSocket, req: IncomingMessage): void => {
    const url = new URL(req.url ?? '/', 'http://peer');
    if (url.searchParams.get('pooled') === '1') {
      awaitClient(ws, req, server, opts);
      return;
    }
    const nonce = decodeNonce(url.searchParams.get('nonce'));
    if (!nonce) {
      ws.close(1008, 'splice link needs a 16-byte base64url nonce');
      return;
    }
    const remote = url.searchParams.get('remote')?.slice(0, MAX_REMOTE_CHARS) || req.socket.remoteAddress;
    server.accept(new WsTransport(ws, remote), {
      challenge: { nonce, ...(opts.clock ? { issuedAt: opts.clock.now() } : {}) },
    });
  };
}

/**
 * A pooled link (`?pooled=1`): the gateway opened it ahead of need, so opening a splice costs no
 * connection, upgrade or membership proof when a client arrives or a session moves. Its first
 * message names the client it now carries — the 16-byte nonce the gateway issued, then the
 * client's address in UTF-8 — and from then on it is an ordinary splice link. A link that names
 * no client within {@link POOLED_IDLE_MS} is closed (the gateway opens another).
 */
function awaitClient(ws: WebSocket, req: IncomingMessage, server: SessionServer, opts: { clock?: Clock }): void {
  const idle = setTimeout(() => ws.close(1000, 'pooled splice link idle'), POOLED_IDLE_MS);
  idle.unref();
  ws.once('close', () => clearTimeout(idle));
  ws.once('message', (data: Buffer, isBinary: boolean) => {
    clearTimeout(idle);
    if (!isBinary || data.length < NONCE_BYTES || data.length > NONCE_BYTES + MAX_REMOTE_CHARS * 4) {
      ws.close(1008, 'pooled splice link: first message must be the 16-byte nonce, then the client address');
      return;
    }
    const nonce = new Uint8Array(data.subarray(0, NONCE_BYTES));
    const remote = data.subarray(NONCE_BYTES).toString('utf8').slice(0, MAX_REMOTE_CHARS) || req.socket.remoteAddress;
    // The challenge counts from now, when the client's frames can start to arrive.
    server.accept(new WsTransport(ws, remote), {
      challenge: { nonce, ...(opts.clock ? { issuedAt: opts.clock.now() } : {}) },
    });
  });
}

/** How long a pooled splice link may wait for its client. */
export const POOLED_IDLE_MS = 5 * 60_000;

function decodeNonce(text: string | null): Uint8Array | undefined {
  if (!text || !/^[A-Za-z0-9_-]{22}$/.test(text)) return undefined;
  const bytes = new Uint8Array(Buffer.from(text, 'base64url'));
  return bytes.length === NONCE_BYTES ? bytes : undefined;
}
