import { AUTH_HEADER, type ClusterEvent, type HostRecord, signRequest } from '../transport/cluster.js';
import { CODES, type CodeName, RoamError } from '../wire/index.js';

/**
 * Reading the directory's live event stream (`GET /api/events`, Server-Sent Events) from the CLI,
 * a gateway, a test. {@link parseSse} is a plain SSE parser; {@link readEvents} connects and
 * yields typed events.
 *
 * @module
 */

/** One message of an SSE stream. */
export interface SseMessage {
  /** The `event:` field; `message` when the server gave none. */
  event: string;
  /** The `data:` lines, joined with `\n`. */
  data: string;
  /** The last `id:` field seen, if any. */
  id?: string;
}

/** Largest SSE message {@link parseSse} accepts by default: 4 MiB. */
export const DEFAULT_MAX_EVENT_BYTES = 4 << 20;

/**
 * Parses an SSE byte stream (chunks split anywhere, `\n`, `\r\n` or `\r` line ends) into
 * messages, per the WHATWG EventSource rules: comments (`:`) and messages without data are
 * skipped, `retry:` is ignored.
 * @throws {RoamError} `PAYLOAD_TOO_LARGE` when one message (or one line) grows past
 * `maxEventBytes`, so a broken or hostile server cannot make the reader buffer without bound.
 */
export async function* parseSse(
  chunks: AsyncIterable<Uint8Array>,
  maxEventBytes = DEFAULT_MAX_EVENT_BYTES,
): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  let buf = '';
  let event = '';
  let data: string[] = [];
  let size = 0;
  let id: string | undefined;
  let skipLf = false;

  function* line(text: string): Generator<SseMessage> {
    if (text === '') {
      if (data.length > 0) {
        const m: SseMessage = { event: event || 'message', data: data.join('\n') };
        if (id !== undefined) m.id = id;
        yield m;
      }
      event = '';
      data = [];
      size = 0;
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') {
      size += value.length + 1;
      if (size > maxEventBytes) throw new RoamError('PAYLOAD_TOO_LARGE', `SSE message over ${maxEventBytes} bytes`);
      data.push(value);
    } else if (field === 'id' && !value.includes('\0')) id = value;
  }

  const feed = function* (text: string): Generator<SseMessage> {
    buf += text;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf.charCodeAt(i);
      if (c === 10 && skipLf && i === start) {
        // The \n of a \r\n split across chunks.
        start = i + 1;
        skipLf = false;
        continue;
      }
      skipLf = false;
      if (c !== 10 && c !== 13) continue;
      yield* line(buf.slice(start, i));
      if (c === 13) {
        if (i + 1 < buf.length) {
          if (buf.charCodeAt(i + 1) === 10) i++;
        } else skipLf = true;
      }
      start = i + 1;
    }
    buf = buf.slice(start);
    if (buf.length > maxEventBytes) throw new RoamError('PAYLOAD_TOO_LARGE', `SSE line over ${maxEventBytes} bytes`);
  };

  for await (const chunk of chunks) yield* feed(decoder.decode(chunk, { stream: true }));
  // An unterminated last message is dropped, as EventSource does.
}

/** What {@link readEvents} yields: the cluster events, and the `hello` snapshot sent first. */
export type DirectoryStreamEvent = ClusterEvent | { type: 'hello'; hosts: HostRecord[] };

export interface ReadEventsOptions {
  /** Operator token: sent as `Authorization: Bearer`. */
  token?: string;
  /** Cluster secret: signs the request as a member (instead of, or as well as, the token). */
  secret?: Uint8Array;
  /** Aborting ends the iteration quietly. */
  signal?: AbortSignal;
  /** Only these event types (the `hello` snapshot always comes). */
  types?: readonly string[];
  /** See {@link parseSse}. */
  maxEventBytes?: number;
}

const isCodeName = (c: unknown): c is CodeName => typeof c === 'string' && Object.hasOwn(CODES, c);

/**
 * Connects to a directory's event stream and yields its events, `hello` first.
 *
 * `url` is the directory's base URL (`http://127.0.0.1:7070`) or the full `…/api/events` URL.
 * The iteration ends (`done`) when `signal` aborts or the directory ends the stream (it closed,
 * or dropped this reader for falling behind): reconnect and take the new `hello` snapshot as the
 * truth. Messages that are not JSON objects are skipped.
 * @throws {RoamError} `UNAVAILABLE` when the directory cannot be reached; the directory's own
 * code (`UNAUTHORIZED`, `INVALID_ARGUMENT`, …) when it refuses the request; `PAYLOAD_TOO_LARGE`
 * from {@link parseSse}.
 */
export async function* readEvents(url: string, opts: ReadEventsOptions = {}): AsyncGenerator<DirectoryStreamEvent> {
  const given = new URL(url);
  const u = given.pathname === '/api/events' ? given : new URL('/api/events', given);
  if (opts.types) u.searchParams.set('types', opts.types.join(','));
  const path = `${u.pathname}${u.search}`;
  const headers: Record<string, string> = { accept: 'text/event-stream' };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.secret) headers[AUTH_HEADER] = signRequest(opts.secret, 'GET', path);
  let res: Response;
  try {
    res = await fetch(u, { headers, ...(opts.signal ? { signal: opts.signal } : {}) });
  } catch (err) {
    if (opts.signal?.aborted) return;
    throw new RoamError('UNAVAILABLE', `${u.origin}${path}: ${(err as Error).message}`, { cause: err });
  }
  if (!res.ok || !res.body) {
    const text = await res.text().catch(() => '');
    let e: { code?: unknown; message?: unknown } | undefined;
    try {
      e = (JSON.parse(text) as { error?: { code?: unknown; message?: unknown } }).error;
    } catch {
      e = undefined;
    }
    throw new RoamError(
      isCodeName(e?.code) ? e.code : 'UNAVAILABLE',
      typeof e?.message === 'string' ? e.message : `${u.origin}${path}: HTTP ${res.status}`,
    );
  }
  const body = res.body;
  try {
    for await (const m of parseSse(body as unknown as AsyncIterable<Uint8Array>, opts.maxEventBytes)) {
      let data: unknown;
      try {
        data = JSON.parse(m.data);
      } catch {
        continue;
      }
      if (typeof data !== 'object' || data === null || Array.isArray(data)) continue;
      yield { ...(data as object), type: m.event } as DirectoryStreamEvent;
    }
  } catch (err) {
    if (opts.signal?.aborted) return;
    if (err instanceof RoamError) throw err;
    // The directory went away mid-stream: the stream simply ends.
    return;
  } finally {
    await body.cancel().catch(() => {});
  }
}
