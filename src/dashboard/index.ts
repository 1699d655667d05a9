import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import { RoamError } from '../wire/index.js';

/**
 * The dashboard: static files (plain ES modules, CSS, one HTML page; no build step) that the
 * directory serves at `/` and `/dashboard/*`. The page talks to the directory's JSON API with
 * relative URLs and follows `/api/events` for live updates; see docs/directory.md.
 *
 * Only the files listed in {@link DASHBOARD_FILES} are served, looked up by exact path: no part of
 * a request path ever becomes part of a file-system path, so traversal cannot reach anything
 * else. The files are read once, on the first request, and kept in memory with their ETag.
 *
 * @module
 */

/** Request path → file in `static/`. The whole of what the dashboard serves. */
export const DASHBOARD_FILES: Readonly<Record<string, string>> = Object.freeze({
  '/': 'index.html',
  '/dashboard/app.js': 'app.js',
  '/dashboard/api.js': 'api.js',
  '/dashboard/dom.js': 'dom.js',
  '/dashboard/format.js': 'format.js',
  '/dashboard/timeline.js': 'timeline.js',
  '/dashboard/style.css': 'style.css',
});

const TYPES: Readonly<Record<string, string>> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
};

/**
 * The page loads only its own scripts and styles and talks only to its own origin; it renders
 * host-supplied strings (labels, messages) as text, never as markup.
 */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  'img-src data:',
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

/** Whether the directory should hand this request path to {@link serveDashboard}. */
export function isDashboardPath(pathname: string): boolean {
  return pathname === '/' || pathname.startsWith('/dashboard/');
}

/**
 * `static/` next to this module when running from source; from a build (`dist/dashboard/`) the
 * files are not copied, so the published package's `src/dashboard/static/` is used.
 */
function staticDir(): URL {
  const here = new URL('./static/', import.meta.url);
  if (existsSync(fileURLToPath(new URL('index.html', here)))) return here;
  return new URL('../../src/dashboard/static/', import.meta.url);
}

let loading: Promise<Map<string, Asset>> | undefined;

async function load(): Promise<Map<string, Asset>> {
  const dir = staticDir();
  const out = new Map<string, Asset>();
  await Promise.all(
    Object.entries(DASHBOARD_FILES).map(async ([path, file]) => {
      const body = await readFile(new URL(file, dir));
      const ext = file.slice(file.lastIndexOf('.') + 1);
      const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
      out.set(path, { body, type: TYPES[ext] ?? 'application/octet-stream', etag });
    }),
  );
  return out;
}

function assets(): Promise<Map<string, Asset>> {
  loading ??= load().catch((err: unknown) => {
    loading = undefined; // try again on the next request
    throw new RoamError('INTERNAL', `dashboard files unreadable: ${(err as Error).message}`, { cause: err });
  });
  return loading;
}

/**
 * Answers a GET or HEAD for `pathname` (`/` or `/dashboard/…`): the file with its content type,
 * `Cache-Control: no-cache` and a strong ETag (a repeat visit costs a 304), or `NOT_FOUND` for
 * anything not in {@link DASHBOARD_FILES}.
 */
export async function serveDashboard(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
  const method = req.method ?? 'GET';
  const file = Object.hasOwn(DASHBOARD_FILES, pathname) ? (await assets()).get(pathname) : undefined;
  if (!file || (method !== 'GET' && method !== 'HEAD')) {
    throw new RoamError('NOT_FOUND', `no route ${method} ${pathname.slice(0, 200)}`);
  }
  const headers: Record<string, string | number> = {
    'content-type': file.type,
    'cache-control': 'no-cache',
    etag: file.etag,
    'x-content-type-options': 'nosniff',
  };
  if (file.type.startsWith('text/html')) {
    headers['content-security-policy'] = CSP;
    headers['referrer-policy'] = 'no-referrer';
    headers['x-frame-options'] = 'DENY';
  }
  const inm = req.headers['if-none-match'];
  if (typeof inm === 'string' && inm.split(',').some((t) => t.trim() === file.etag)) {
    res.writeHead(304, headers).end();
    return;
  }
  headers['content-length'] = file.body.length;
  res.writeHead(200, headers);
  res.end(method === 'HEAD' ? undefined : file.body);
}
