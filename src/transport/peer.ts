import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { RoamError } from '../wire/index.js';
import { AUTH_HEADER, linkProof, parseJsonBody, RequestVerifier, readBody } from './cluster.js';
import { zeroMask } from './ws.js';

/** The little a peer endpoint logs; a pino logger fits. */
export interface PeerLog {
  warn(fields: Record<string, unknown>, msg: string): void;
}

/**
 * A cluster member's peer endpoint: JSON routes and WebSocket links that only members may use.
 * Every request and every link upgrade must carry a fresh cluster signature ({@link AUTH_HEADER}),
 * except the GET routes added with {@link PeerServer.openRoute} (`/metrics` on hosts).
 * A link's first message is the server's proof over the member's `x-roam-link-nonce`, so the
 * member knows it reached a member too.
 */
export type PeerRoute = (body: unknown, req: IncomingMessage) => Promise<unknown>;
export type PeerLink = (ws: WebSocket, req: IncomingMessage) => void;
/** A route that writes its own response (any content type). */
export type OpenRoute = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

/** Status code for a RoamError code on the peer and directory APIs. */
export function httpStatus(code: string): number {
  switch (code) {
    case 'INVALID_ARGUMENT':
      return 400;
    case 'UNAUTHORIZED':
      return 401;
    case 'NOT_FOUND':
    case 'UNKNOWN_SESSION':
    case 'UNKNOWN_SERVICE':
      return 404;
    case 'MIGRATION_REFUSED':
    case 'INCOMPATIBLE':
    case 'FENCED':
    case 'NO_DESTINATION':
    case 'INVALID_STATE':
      return 409;
    case 'PAYLOAD_TOO_LARGE':
      return 413;
    case 'OVERLOADED':
    case 'UNAVAILABLE':
      return 503;
    default:
      return 500;
  }
}

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(value)}\n`);
}

export function sendError(res: ServerResponse, err: unknown): void {
  const e = err instanceof RoamError ? err : new RoamError('INTERNAL', (err as Error)?.message ?? String(err));
  sendJson(res, httpStatus(e.code), { error: { code: e.code, message: e.message } });
}

export class PeerServer {
  private readonly routes = new Map<string, PeerRoute>();
  private readonly links = new Map<string, PeerLink>();
  private readonly open = new Map<string, OpenRoute>();
  private readonly verifier: RequestVerifier;
  private readonly wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 256 << 20 });
  private readonly http: Server;
  private readonly sockets = new Set<Socket>();
  url = '';

  constructor(
    private readonly secret: Uint8Array,
    private readonly log: PeerLog,
    private readonly maxBody = 16 << 20,
  ) {
    this.verifier = new RequestVerifier(secret);
    this.http = createServer((req, res) => {
      this.onRequest(req, res).catch((err: unknown) => sendError(res, err));
    });
    this.http.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    this.http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.onUpgrade(req, socket, head));
  }

  /** Adds a JSON route; the handler's return value is the response body. */
  route(method: 'GET' | 'POST', path: string, handler: PeerRoute): void {
    this.routes.set(`${method} ${path}`, handler);
  }

  /**
   * Adds a GET route that needs NO cluster signature, for callers that cannot sign — a Prometheus
   * scraper on `/metrics`. Whoever reaches the peer port can read what it returns, so only add
   * read-only figures that are safe to show (no ids of sessions, no secrets). Its request body is
   * never read. Every other route and link still requires a signature.
   */
  openRoute(path: string, handler: OpenRoute): void {
    this.open.set(path, handler);
  }

  /** Adds a WebSocket link endpoint. */
  link(path: string, handler: PeerLink): void {
    this.links.set(path, handler);
  }

  async listen(host: string, port: number): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(port, host, () => resolve());
    });
    const addr = this.http.address() as AddressInfo;
    this.url = `http://${host.includes(':') ? `[${host}]` : host}:${addr.port}`;
    return this.url;
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://peer');
    const open = req.method === 'GET' ? this.open.get(url.pathname) : undefined;
    if (open) return open(req, res);
    const handler = this.routes.get(`${req.method} ${url.pathname}`);
    const body = await readBody(req, this.maxBody);
    this.verifier.verify(req.headers[AUTH_HEADER] as string | undefined, req.method ?? 'GET', req.url ?? '/', body);
    if (!handler) throw new RoamError('NOT_FOUND', `no route ${req.method} ${url.pathname}`);
    const parsed = parseJsonBody(body);
    sendJson(res, 200, await handler(parsed, req));
  }

  private onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://peer');
    const handler = this.links.get(url.pathname);
    const nonce = req.headers['x-roam-link-nonce'];
    try {
      this.verifier.verify(req.headers[AUTH_HEADER] as string | undefined, 'GET', req.url ?? '/', new Uint8Array(0));
      if (!handler) throw new RoamError('NOT_FOUND', `no link ${url.pathname}`);
      if (typeof nonce !== 'string' || nonce.length < 16 || nonce.length > 64) {
        throw new RoamError('UNAUTHORIZED', 'missing link nonce');
      }
    } catch (err) {
      const e = err as RoamError;
      this.log.warn({ path: url.pathname, remote: socket.remoteAddress, code: e.code }, 'peer link refused');
      socket.end(`HTTP/1.1 ${httpStatus(e.code)} Refused\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send(JSON.stringify({ proof: linkProof(this.secret, nonce) }));
      handler(ws, req);
    });
  }

  async close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    const closed = new Promise<void>((r) => this.http.close(() => r()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }
}

/**
 * Opens an authenticated link to a member's peer endpoint. Resolves once the server proved
 * membership; the returned socket then carries only binary messages of the link's protocol.
 */
export function openPeerLink(
  peerUrl: string,
  path: string,
  secret: Uint8Array,
  sign: (method: string, path: string) => string,
  timeoutMs = 10_000,
): Promise<WebSocket> {
  const nonce = randomBytes(18).toString('base64url');
  const url = new URL(path, peerUrl.replace(/^http/, 'ws'));
  return new Promise<WebSocket>((resolve, reject) => {
    const ws = new WebSocket(url, {
      perMessageDeflate: false,
      handshakeTimeout: timeoutMs,
      maxPayload: 256 << 20,
      // Megabytes per migration, and all client traffic through a gateway: no XOR at either end.
      generateMask: zeroMask,
      headers: { [AUTH_HEADER]: sign('GET', `${url.pathname}${url.search}`), 'x-roam-link-nonce': nonce },
    });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new RoamError('UNAVAILABLE', `peer link to ${peerUrl} timed out`));
    }, timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      reject(err instanceof RoamError ? err : new RoamError('UNAVAILABLE', `peer link to ${peerUrl}: ${err.message}`));
    };
    ws.once('error', fail);
    ws.once('unexpected-response', (_req, res) => {
      ws.terminate();
      fail(
        new RoamError(
          res.statusCode === 401 ? 'UNAUTHORIZED' : 'UNAVAILABLE',
          `peer ${peerUrl} refused the link: HTTP ${res.statusCode}`,
        ),
      );
    });
    ws.once('message', (data: Buffer, isBinary: boolean) => {
      clearTimeout(timer);
      ws.off('error', fail);
      let proof: unknown;
      try {
        proof = isBinary ? undefined : (JSON.parse(data.toString('utf8')) as { proof?: unknown }).proof;
      } catch {
        proof = undefined;
      }
      if (proof !== linkProof(secret, nonce)) {
        ws.terminate();
        reject(new RoamError('UNAUTHORIZED', `peer ${peerUrl} could not prove cluster membership`));
        return;
      }
      resolve(ws);
    });
  });
}
