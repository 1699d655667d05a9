import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { RoamError } from '../wire/index.js';
import type { Host } from './host.js';

/**
 * A host's admin API: JSON over HTTP, for `roam suspend` and friends. It listens on loopback by
 * default and, when given a token, requires `Authorization: Bearer <token>`; anyone who can reach
 * it can suspend sessions, so never expose it without one. `GET /metrics` serves the host's
 * Prometheus metrics under the same rule (Prometheus: `authorization: { credentials: <token> }`).
 */
export interface AdminServer {
  readonly url: string;
  close(): Promise<void>;
}

const MAX_BODY = 64 * 1024;

async function body(req: IncomingMessage): Promise<Record<string, unknown>> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new RoamError('INVALID_ARGUMENT', `request body over ${MAX_BODY} bytes`);
    chunks.push(c);
  }
  if (size === 0) return {};
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (cause) {
    throw new RoamError('INVALID_ARGUMENT', 'request body must be a JSON object', { cause });
  }
}

function send(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(value)}\n`);
}

export async function startAdmin(host: Host, opts: { listen?: string; token?: string } = {}): Promise<AdminServer> {
  const [h, p] = (opts.listen ?? '127.0.0.1:0').split(':');
  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      const e = err instanceof RoamError ? err : new RoamError('INTERNAL', (err as Error)?.message ?? String(err));
      const status = e.code === 'INVALID_ARGUMENT' ? 400 : e.code === 'UNKNOWN_SESSION' ? 404 : 500;
      send(res, status, { error: { code: e.code, message: e.message } });
    });
  });
  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (opts.token && req.headers.authorization !== `Bearer ${opts.token}`) {
      send(res, 401, { error: { code: 'RESUME_PROOF_INVALID', message: 'missing or wrong bearer token' } });
      return;
    }
    const url = new URL(req.url ?? '/', 'http://admin');
    if (req.method === 'GET' && url.pathname === '/metrics') {
      await host.metrics.serve(res);
      return;
    }
    if (req.method === 'GET' && url.pathname === '/api/sessions') {
      send(res, 200, { sessions: host.describeSessions() });
      return;
    }
    if (req.method === 'POST' && url.pathname === '/api/suspend') {
      const b = await body(req);
      if (typeof b.session === 'string') {
        if (!(await host.suspendSession(b.session))) {
          throw new RoamError('UNKNOWN_SESSION', `no live session ${b.session} on this host`);
        }
        send(res, 200, { suspended: { session: b.session } });
        return;
      }
      if (typeof b.instance === 'string') {
        if (!(await host.suspendInstance(b.instance))) {
          throw new RoamError('UNKNOWN_SESSION', `no live instance ${b.instance} on this host`);
        }
        send(res, 200, { suspended: { instance: b.instance } });
        return;
      }
      throw new RoamError('INVALID_ARGUMENT', 'POST /api/suspend needs {"session": id} or {"instance": id}');
    }
    send(res, 404, { error: { code: 'INVALID_ARGUMENT', message: `no route ${req.method} ${url.pathname}` } });
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(p ?? 0), h, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  return {
    url: `http://${h}:${addr.port}`,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
