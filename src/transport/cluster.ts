import {
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
  timingSafeEqual,
  verify,
} from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { CODES, type CodeName, RoamError } from '../wire/index.js';

const isCodeName = (c: unknown): c is CodeName => typeof c === 'string' && Object.hasOwn(CODES, c);

/**
 * What the members of a roam cluster (directory, hosts, gateways) say to each other, and how they
 * prove membership.
 *
 * Threat model: the cluster secret is the root of trust. Whoever holds it is a member; every
 * request between members carries an HMAC-SHA256 over method, path, timestamp, nonce and body
 * digest, checked within a 30 s window with the nonce remembered so a captured request cannot be
 * replayed. A host also holds an Ed25519 identity: its id is the key's fingerprint and its
 * registration is signed, so one member cannot register under another's id. The secret does not
 * encrypt anything: run cluster links over a private network or TLS. A leaked secret admits an
 * attacker as a member (it can register hosts and receive migrations); rotate it by restarting
 * the cluster with a new one.
 */

/** Load and capacity a host reports with every heartbeat. */
export interface HostMetrics {
  /** Process CPU use over the last interval, 0..1 per core. */
  cpu: number;
  loopDelayP99Ms: number;
  rssBytes: number;
  instances: number;
  sessions: number;
  /** Client bytes in+out per second over the last interval. */
  bytesPerS: number;
}

/** A service as a host offers it to the cluster. */
export interface HostedService {
  name: string;
  version: string;
  compat: string[];
  requires: { memoryMb?: number; nodeMajor?: number; labels?: Record<string, string> };
}

export type HostStatus = 'up' | 'suspect' | 'leaving';

/** One row of the host table, as the directory keeps it in the Store. */
export interface HostRecord {
  /** Fingerprint of the Ed25519 public key (hex, 16 bytes of SHA-256). */
  id: string;
  /** Ed25519 public key, SPKI DER, base64. */
  publicKey: string;
  /** Where clients connect (ws:// or tcp://). */
  clientUrl: string;
  /** Where members reach the host's peer API (http://). */
  peerUrl: string;
  labels: Record<string, string>;
  /** Sessions the host accepts at most (placement avoids full hosts). */
  capacity: number;
  services: HostedService[];
  nodeMajor: number;
  status: HostStatus;
  registeredAt: number;
  lastSeenAt: number;
  metrics: HostMetrics;
}

/** Who owns an instance. Every change of owner is a compare-and-set that raises `epoch`. */
export interface LocationRecord {
  instance: string;
  service: string;
  host: string;
  epoch: number;
}

export type MigrationReason = 'operator' | 'drain' | 'shutdown' | 'self' | 'policy';
export type MigrationOutcome = 'committed' | 'aborted' | 'refused';

/** Per-round figures of a pre-copy. */
export interface RoundRecord {
  bytes: number;
  keys: number;
  ms: number;
}

/** What every migration reports, committed or not. */
export interface MigrationRecord {
  id: string;
  instances: string[];
  service: string;
  from: string;
  to: string;
  reason: MigrationReason;
  outcome: MigrationOutcome;
  code?: string;
  message?: string;
  startedAt: number;
  endedAt: number;
  sessions: number;
  stateBytes: number;
  bytesSent: number;
  rounds: RoundRecord[];
  finalDirtyBytes: number;
  /** Highest throttle step applied to converge (0 = none). */
  throttleSteps: number;
  phases: {
    negotiateMs: number;
    precopyMs: number;
    freezeMs: number;
    commitMs: number;
    /**
     * Longest time a client of the instance waited: freeze until it resumed at the destination.
     * With `clientsLate`, some had not resumed when it was reported: for them, the time so far.
     */
    clientGapMs?: number;
    /** Clients that had not resumed at the destination when the gap was reported (10 s). */
    clientsLate?: number;
    /** Where the freeze went, step by step (absent when the migration did not get that far). */
    freezeSteps?: FreezeSteps;
  };
  epoch?: number;
}

/**
 * The freeze of one migration, step by step. The source measures the first three (they add up to
 * `freezeMs`, which ends when the source hears the verdict), the destination the next four on its
 * own clock and reports them with its verdict: `waitMs - destinationMs` is what the link and the
 * two event loops' wake-ups cost.
 */
export interface FreezeSteps {
  /** Source: the freeze posted to the service worker → its frozen copy back. */
  workerMs: number;
  /** Source: → the final copy, with timers and transport state, ready to write to the link. */
  sendMs: number;
  /** Source: → written, and the destination's verdict received. */
  waitMs: number;
  /** Destination: the final copy received → installed by its service worker. */
  installMs?: number;
  /** Destination: the final copy received → the location compare-and-set done (it overlaps the install). */
  casMs?: number;
  /**
   * Destination: the final copy received → its sessions serving there (resumes accepted; the
   * worker's install may still be on its way, and what clients send is held until it is done).
   */
  servingMs?: number;
  /** Destination: the final copy received → the verdict ready to send (just after `installMs`). */
  destinationMs?: number;
  /**
   * The instance ran nowhere for this long (the downtime): the source's freeze → serving at the
   * destination. Estimated without comparing the hosts' clocks: the source's steps up to the
   * final copy, plus half of the round trip the destination did not spend, plus `servingMs`.
   */
  downtimeMs?: number;
}

/** Progress of a drain, as the draining host reports it. */
export interface DrainStatus {
  id: string;
  host: string;
  state: 'running' | 'done' | 'failed';
  total: number;
  moved: number;
  failed: number;
  /** Left behind in the Store because they could not move (deadline, no destination). */
  suspended: number;
  startedAt: number;
  endedAt?: number;
  /** Seconds left at the current rate; undefined until something moved. */
  etaS?: number;
  message?: string;
}

/** Everything on the live event stream (`GET /api/events`). */
export type ClusterEvent =
  | { type: 'host.registered'; host: HostRecord }
  | { type: 'host.suspect'; host: string }
  | { type: 'host.left'; host: string; reason: 'leave' | 'purged' }
  | { type: 'migration'; migration: MigrationRecord }
  | { type: 'migration.progress'; id: string; instances: string[]; phase: string; round?: number; etaMs?: number }
  | { type: 'drain'; drain: DrainStatus }
  | { type: 'decision'; at: number; action: string; reason: string; instance?: string; host?: string };

/** Store keys of the cluster tables. */
/**
 * Instance id of a keyed instance, as hosts, the directory and gateways name it: 'k' +
 * base64url(UTF-8 key). (The service worker derives the same id for the key its `key` rule
 * returns; it cannot import this layer.)
 */
export function keyedInstanceId(key: string): string {
  return `k${Buffer.from(key, 'utf8').toString('base64url')}`;
}

export const ClusterKeys = {
  hostPrefix: 'roam.cluster.host.',
  host: (id: string) => `roam.cluster.host.${id}`,
  locationPrefix: 'roam.cluster.loc.',
  location: (instance: string) => `roam.cluster.loc.${instance}`,
  migrationPrefix: 'roam.cluster.mig.',
  migration: (id: string) => `roam.cluster.mig.${id}`,
} as const;

const utf8 = new TextEncoder();
const utf8dec = new TextDecoder();
export const encodeJson = (v: unknown): Uint8Array => utf8.encode(JSON.stringify(v));
export const decodeJson = <T>(b: Uint8Array): T => JSON.parse(utf8dec.decode(b)) as T;

// ---------------------------------------------------------------------------------------------
// Membership: HMAC-signed requests

/** The HTTP header that carries a member's request signature. */
export const AUTH_HEADER = 'x-roam-auth';
const WINDOW_MS = 30_000;

/** Parses a cluster secret given as hex, base64 or text; at least 16 bytes. */
export function parseClusterSecret(s: string): Uint8Array {
  const t = s.trim();
  const bytes = /^[0-9a-f]+$/i.test(t) && t.length % 2 === 0 ? Buffer.from(t, 'hex') : Buffer.from(t, 'utf8');
  if (bytes.length < 16) {
    throw new RoamError('INVALID_ARGUMENT', 'the cluster secret must be at least 16 bytes (32 hex digits)');
  }
  return new Uint8Array(bytes);
}

/** A fresh random cluster secret, hex. */
export function newClusterSecret(): string {
  return randomBytes(32).toString('hex');
}

function requestMac(secret: Uint8Array, method: string, path: string, ts: number, nonce: string, body: Uint8Array) {
  const digest = createHash('sha256').update(body).digest('hex');
  return createHmac('sha256', secret)
    .update(`roam-cluster-v1\n${method.toUpperCase()}\n${path}\n${ts}\n${nonce}\n${digest}`)
    .digest('base64url');
}

/** The value of {@link AUTH_HEADER} for one request. */
export function signRequest(
  secret: Uint8Array,
  method: string,
  path: string,
  body: Uint8Array = new Uint8Array(0),
  now = Date.now(),
): string {
  const nonce = randomBytes(12).toString('base64url');
  return `${now}.${nonce}.${requestMac(secret, method, path, now, nonce, body)}`;
}

/**
 * Checks request signatures: fresh (30 s window), not replayed (nonces remembered for the
 * window, bounded), and made with the cluster secret.
 */
export class RequestVerifier {
  private readonly seen = new Map<string, number>();
  constructor(
    private readonly secret: Uint8Array,
    private readonly maxNonces = 100_000,
  ) {}

  /** @throws RoamError `UNAUTHORIZED` with the reason. */
  verify(header: string | undefined, method: string, path: string, body: Uint8Array, now = Date.now()): void {
    if (!header) throw new RoamError('UNAUTHORIZED', 'missing cluster signature');
    const [tsText, nonce, mac] = header.split('.');
    const ts = Number(tsText);
    if (!Number.isSafeInteger(ts) || !nonce || !mac || nonce.length > 64) {
      throw new RoamError('UNAUTHORIZED', 'malformed cluster signature');
    }
    if (Math.abs(now - ts) > WINDOW_MS) throw new RoamError('UNAUTHORIZED', 'cluster signature expired');
    const want = Buffer.from(requestMac(this.secret, method, path, ts, nonce, body));
    const got = Buffer.from(mac);
    if (want.length !== got.length || !timingSafeEqual(want, got)) {
      throw new RoamError('UNAUTHORIZED', 'not signed with the cluster secret');
    }
    if (this.seen.has(nonce)) throw new RoamError('UNAUTHORIZED', 'replayed cluster request');
    this.seen.set(nonce, ts);
    for (const [n, at] of this.seen) {
      if (this.seen.size <= this.maxNonces && now - at <= WINDOW_MS) break;
      this.seen.delete(n);
    }
  }
}

/** Proof a server gives back to a member that opened a link to it (over the member's nonce). */
export function linkProof(secret: Uint8Array, nonce: string): string {
  return createHmac('sha256', secret).update(`roam-link-v1\n${nonce}`).digest('base64url');
}

// ---------------------------------------------------------------------------------------------
// Host identity

/** A host's Ed25519 identity. */
export interface HostIdentity {
  id: string;
  publicKey: string;
  privateKey: KeyObject;
}

export function fingerprint(publicKeySpkiB64: string): string {
  return createHash('sha256').update(Buffer.from(publicKeySpkiB64, 'base64')).digest('hex').slice(0, 32);
}

function identityFrom(privateKey: KeyObject): HostIdentity {
  const publicKey = createPublicKey(privateKey).export({ type: 'spki', format: 'der' }).toString('base64');
  return { id: fingerprint(publicKey), publicKey, privateKey };
}

/** A new identity, or the one saved at `path` (created there, mode 0600, if absent). */
export function loadOrCreateIdentity(path?: string): HostIdentity {
  if (path) {
    try {
      return identityFrom(createPrivateKey(readFileSync(path, 'utf8')));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new RoamError('INVALID_ARGUMENT', `cannot read host identity ${path}: ${(err as Error).message}`);
      }
    }
  }
  const { privateKey } = generateKeyPairSync('ed25519');
  if (path) writeFileSync(path, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  return identityFrom(privateKey);
}

export function signWithIdentity(id: HostIdentity, data: Uint8Array): string {
  return sign(null, data, id.privateKey).toString('base64');
}

export function verifyIdentitySignature(publicKeySpkiB64: string, data: Uint8Array, signature: string): boolean {
  try {
    const key = createPublicKey({ key: Buffer.from(publicKeySpkiB64, 'base64'), format: 'der', type: 'spki' });
    return verify(null, data, key, Buffer.from(signature, 'base64'));
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP between members

/** Reads a request body up to `limit` bytes; `PAYLOAD_TOO_LARGE` beyond. */
export async function readBody(req: IncomingMessage, limit = 1 << 20): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > limit) throw new RoamError('PAYLOAD_TOO_LARGE', `request body over ${limit} bytes`);
    chunks.push(c);
  }
  return new Uint8Array(Buffer.concat(chunks));
}

/** A request body as JSON (undefined when empty); `INVALID_ARGUMENT` when it is not JSON. */
export function parseJsonBody(body: Uint8Array): unknown {
  if (body.length === 0) return undefined;
  try {
    return JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'));
  } catch (cause) {
    throw new RoamError('INVALID_ARGUMENT', 'request body is not JSON', { cause });
  }
}

/** One running instance as a host reports it (`GET /peer/instances`). */
export interface HostedInstance {
  instance: string;
  service: string;
  key: string | null;
  sessions: number;
  stateBytes: number;
  epoch: number;
}

export interface ClusterFetchOptions {
  method?: 'GET' | 'POST';
  body?: unknown;
  timeoutMs?: number;
  /** Cluster secret: signs the request. */
  secret?: Uint8Array;
  /** Operator token for the directory's public API. */
  token?: string;
}

/**
 * JSON over HTTP between members (and from the CLI). Errors come back typed: a response
 * `{ error: { code, message } }` becomes a RoamError with that code; a network failure is
 * `UNAVAILABLE`.
 */
export async function clusterFetch<T>(baseUrl: string, path: string, opts: ClusterFetchOptions = {}): Promise<T> {
  const method = opts.method ?? (opts.body === undefined ? 'GET' : 'POST');
  const bodyText = opts.body === undefined ? '' : JSON.stringify(opts.body);
  const body = utf8.encode(bodyText);
  const headers: Record<string, string> = {};
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  if (opts.secret) headers[AUTH_HEADER] = signRequest(opts.secret, method, path, body);
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let res: Response;
  try {
    res = await fetch(new URL(path, baseUrl), {
      method,
      headers,
      body: method === 'GET' ? undefined : bodyText,
      signal: AbortSignal.timeout(opts.timeoutMs ?? 10_000),
    });
  } catch (err) {
    throw new RoamError('UNAVAILABLE', `${baseUrl}${path}: ${(err as Error).message}`, { cause: err as Error });
  }
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    throw new RoamError('UNAVAILABLE', `${baseUrl}${path}: HTTP ${res.status}, not JSON`);
  }
  if (!res.ok) {
    const e = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new RoamError(isCodeName(e?.code) ? e.code : 'INTERNAL', e?.message ?? `HTTP ${res.status}`);
  }
  return parsed as T;
}
