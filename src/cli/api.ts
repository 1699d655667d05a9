import type { Command } from 'commander';
import { type DirectoryStreamEvent, readEvents } from '../directory/sse.js';
import { clusterFetch, type HostRecord, parseClusterSecret } from '../transport/cluster.js';
import { RoamError } from '../wire/index.js';

/**
 * How the operator commands reach the directory's API: base URL, credentials (operator token
 * and/or cluster secret), typed errors, host-id prefixes, and an event stream that reconnects.
 *
 * @module
 */

/** A mistake in the command line (bad option value, unknown or ambiguous host prefix): exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The options every operator command takes. */
export interface ApiCliOptions {
  directory: string;
  token?: string;
  secret?: string;
  json?: boolean;
}

export const DEFAULT_DIRECTORY = 'http://127.0.0.1:7070';

/** Adds `--directory`, `--token`, `--secret` and `--json` to an operator command. */
export function apiOptions(cmd: Command): Command {
  return cmd
    .option(
      '--directory <url>',
      "the directory's URL (env ROAM_DIRECTORY)",
      process.env.ROAM_DIRECTORY || DEFAULT_DIRECTORY,
    )
    .option('--token <token>', 'operator bearer token (env ROAM_TOKEN)')
    .option('--secret <hex>', 'cluster secret: sign requests as a member (env ROAM_CLUSTER_SECRET)')
    .option('--json', 'machine output: one JSON document on stdout');
}

/** The directory API as the CLI uses it. */
export class Api {
  readonly url: string;
  private readonly token: string | undefined;
  private readonly secret: Uint8Array | undefined;

  constructor(opts: ApiCliOptions) {
    let url: URL;
    try {
      url = new URL(opts.directory);
    } catch {
      throw new UsageError(`--directory wants a URL like ${DEFAULT_DIRECTORY}, got ${JSON.stringify(opts.directory)}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new UsageError(`--directory wants an http:// or https:// URL, got ${opts.directory}`);
    }
    this.url = url.origin;
    this.token = opts.token ?? (process.env.ROAM_TOKEN || undefined);
    const secretText = opts.secret ?? (process.env.ROAM_CLUSTER_SECRET || undefined);
    try {
      this.secret = secretText === undefined ? undefined : parseClusterSecret(secretText);
    } catch (err) {
      throw new UsageError(`--secret: ${(err as Error).message}`);
    }
  }

  private auth(): { token?: string; secret?: Uint8Array } {
    return { ...(this.token ? { token: this.token } : {}), ...(this.secret ? { secret: this.secret } : {}) };
  }

  get<T>(path: string, timeoutMs = 15_000): Promise<T> {
    return clusterFetch<T>(this.url, path, { ...this.auth(), timeoutMs });
  }

  post<T>(path: string, body: unknown, timeoutMs = 15_000): Promise<T> {
    return clusterFetch<T>(this.url, path, { ...this.auth(), body, timeoutMs });
  }

  async hosts(): Promise<HostRecord[]> {
    return (await this.get<{ hosts: HostRecord[] }>('/api/hosts')).hosts;
  }

  /**
   * The host a full id or a unique prefix names.
   * @throws {UsageError} when no host or more than one matches.
   */
  async resolveHost(prefix: string, what = 'host'): Promise<HostRecord> {
    const hosts = await this.hosts();
    return pickHost(hosts, prefix, what);
  }

  /** The live event stream, once (no reconnect); see {@link followEvents}. */
  events(types: readonly string[], signal: AbortSignal): AsyncGenerator<DirectoryStreamEvent> {
    return readEvents(this.url, { ...this.auth(), types, signal });
  }
}

/** The one host `prefix` names (exact id first, then unique prefix). */
export function pickHost(hosts: HostRecord[], prefix: string, what = 'host'): HostRecord {
  const p = prefix.trim().toLowerCase();
  const exact = hosts.find((h) => h.id === p);
  if (exact) return exact;
  const matches = p === '' ? [] : hosts.filter((h) => h.id.startsWith(p));
  if (matches.length === 1) return matches[0] as HostRecord;
  const known = hosts.map((h) => h.id.slice(0, 12)).join(', ') || 'none';
  if (matches.length === 0) throw new UsageError(`no ${what} matches ${JSON.stringify(prefix)} (hosts: ${known})`);
  throw new UsageError(
    `${what} prefix ${JSON.stringify(prefix)} is ambiguous: it matches ${matches.map((h) => h.id).join(', ')}; type more of the id`,
  );
}

/** What {@link followEvents} yields: the stream's events, `hello` again after each reconnect. */
export type FollowedEvent = DirectoryStreamEvent & { reconnected?: boolean };

/** Codes for which reconnecting cannot help. */
const FINAL: ReadonlySet<string> = new Set(['UNAUTHORIZED', 'INVALID_ARGUMENT', 'PAYLOAD_TOO_LARGE']);

/**
 * The directory's event stream, reconnecting with backoff (100 ms doubling to 2 s) when it drops
 * — a restarting directory — until `signal` aborts. Each `hello` after a reconnect comes with
 * `reconnected: true`: events may have been missed meanwhile, so the caller re-reads the state it
 * follows. Gives up with `UNAVAILABLE` after `giveUpMs` without a connection.
 */
export async function* followEvents(
  api: Api,
  types: readonly string[],
  signal: AbortSignal,
  giveUpMs = 60_000,
): AsyncGenerator<FollowedEvent> {
  let connectedOnce = false;
  let delay = 100;
  let downSince: number | undefined;
  while (!signal.aborted) {
    let fresh = true;
    try {
      for await (const ev of api.events(types, signal)) {
        if (ev.type === 'hello') {
          downSince = undefined;
          delay = 100;
          yield connectedOnce ? { ...ev, reconnected: true } : ev;
          connectedOnce = true;
          fresh = false;
          continue;
        }
        yield ev;
      }
    } catch (err) {
      if (signal.aborted) return;
      const code = (err as RoamError).code;
      if (!connectedOnce || FINAL.has(code)) throw err;
    }
    if (signal.aborted) return;
    if (fresh && !connectedOnce) throw new RoamError('UNAVAILABLE', `the event stream of ${api.url} ended at once`);
    downSince ??= Date.now();
    if (Date.now() - downSince > giveUpMs) {
      throw new RoamError('UNAVAILABLE', `lost the event stream of ${api.url} for over ${giveUpMs / 1000} s`);
    }
    await backoff(delay, signal);
    delay = Math.min(2000, delay * 2);
  }
}

function backoff(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
