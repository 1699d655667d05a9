import type {
  ClusterEvent,
  DrainStatus,
  FreezeSteps,
  HostedService,
  HostMetrics,
  HostRecord,
  MigrationRecord,
  RoundRecord,
} from '../transport/cluster.js';
import { RoamError } from '../wire/index.js';

/**
 * Checks of everything a member sends the directory. Each check returns a fresh value built from
 * the fields it knows (unknown fields are dropped, so a newer member can add fields without an
 * older directory refusing it) or throws `INVALID_ARGUMENT` naming the field and what is wrong.
 *
 * @module
 */

/** Limits on what one registration may carry. */
export const LIMITS = {
  labels: 64,
  labelKey: 128,
  labelValue: 256,
  services: 256,
  compat: 64,
  name: 128,
  version: 64,
  url: 2048,
  instances: 1000,
  rounds: 10_000,
  text: 4096,
  events: 1000,
} as const;

const bad = (path: string, what: string): RoamError => new RoamError('INVALID_ARGUMENT', `${path} ${what}`);

const describe = (v: unknown): string =>
  v === undefined
    ? 'nothing'
    : v === null
      ? 'null'
      : Array.isArray(v)
        ? 'an array'
        : typeof v === 'string'
          ? 'a string'
          : `a ${typeof v}`;

/** A plain JSON object (not null, not an array). */
export function object(v: unknown, path: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(path, `must be an object, got ${describe(v)}`);
  return v as Record<string, unknown>;
}

export function string(v: unknown, path: string, max: number = LIMITS.text, min = 1): string {
  if (typeof v !== 'string') throw bad(path, `must be a string, got ${describe(v)}`);
  if (v.length < min) throw bad(path, min === 1 ? 'must not be empty' : `must have at least ${min} characters`);
  if (v.length > max) throw bad(path, `must have at most ${max} characters, got ${v.length}`);
  return v;
}

export function number(v: unknown, path: string, opts: { min?: number; max?: number; int?: boolean } = {}): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw bad(path, `must be a finite number, got ${describe(v)}`);
  if (opts.int && !Number.isSafeInteger(v)) throw bad(path, `must be an integer, got ${v}`);
  const min = opts.min ?? 0;
  if (v < min) throw bad(path, `must be at least ${min}, got ${v}`);
  if (opts.max !== undefined && v > opts.max) throw bad(path, `must be at most ${opts.max}, got ${v}`);
  return v;
}

function optional<T>(o: Record<string, unknown>, key: string, check: (v: unknown) => T): T | undefined {
  return o[key] === undefined ? undefined : check(o[key]);
}

function oneOf<T extends string>(v: unknown, path: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !allowed.includes(v as T)) {
    throw bad(path, `must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${JSON.stringify(v) ?? 'nothing'}`);
  }
  return v as T;
}

function array<T>(v: unknown, path: string, max: number, item: (v: unknown, path: string) => T): T[] {
  if (!Array.isArray(v)) throw bad(path, `must be an array, got ${describe(v)}`);
  if (v.length > max) throw bad(path, `must have at most ${max} items, got ${v.length}`);
  return v.map((x, i) => item(x, `${path}[${i}]`));
}

/** A map of strings to strings, like host labels. */
export function labels(v: unknown, path: string): Record<string, string> {
  const o = object(v, path);
  const keys = Object.keys(o);
  if (keys.length > LIMITS.labels) throw bad(path, `must have at most ${LIMITS.labels} entries, got ${keys.length}`);
  const out: Record<string, string> = {};
  for (const k of keys) {
    string(k, `${path} key ${JSON.stringify(k.slice(0, 40))}`, LIMITS.labelKey);
    Object.defineProperty(out, k, {
      value: string(o[k], `${path}.${k}`, LIMITS.labelValue, 0),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

/**
 * A URL string with one of `schemes` (without the colon), a host name and no credentials; `tcp://`
 * and `tls://` (which have no default port) with a port.
 */
export function url(v: unknown, path: string, schemes: readonly string[]): string {
  const s = string(v, path, LIMITS.url);
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw bad(path, `must be a URL, got ${JSON.stringify(s.slice(0, 80))}`);
  }
  const scheme = u.protocol.slice(0, -1);
  if (!schemes.includes(scheme)) {
    throw bad(path, `must be a ${schemes.map((x) => `${x}://`).join(' or ')} URL, got ${u.protocol}//`);
  }
  if (!u.hostname) throw bad(path, 'must name a host');
  if (u.username || u.password) throw bad(path, 'must not carry credentials');
  if ((scheme === 'tcp' || scheme === 'tls') && !u.port)
    throw bad(path, `must have a port (${scheme}:// has no default)`);
  return s;
}

export function metrics(v: unknown, path: string): HostMetrics {
  const o = object(v, path);
  return {
    cpu: number(o.cpu, `${path}.cpu`),
    loopDelayP99Ms: number(o.loopDelayP99Ms, `${path}.loopDelayP99Ms`),
    rssBytes: number(o.rssBytes, `${path}.rssBytes`),
    instances: number(o.instances, `${path}.instances`, { int: true }),
    sessions: number(o.sessions, `${path}.sessions`, { int: true }),
    bytesPerS: number(o.bytesPerS, `${path}.bytesPerS`),
  };
}

export const ZERO_METRICS: HostMetrics = Object.freeze({
  cpu: 0,
  loopDelayP99Ms: 0,
  rssBytes: 0,
  instances: 0,
  sessions: 0,
  bytesPerS: 0,
});

function service(v: unknown, path: string): HostedService {
  const o = object(v, path);
  const r = object(o.requires ?? {}, `${path}.requires`);
  const requires: HostedService['requires'] = {};
  const memoryMb = optional(r, 'memoryMb', (x) => number(x, `${path}.requires.memoryMb`));
  const nodeMajor = optional(r, 'nodeMajor', (x) => number(x, `${path}.requires.nodeMajor`, { int: true }));
  const lbl = optional(r, 'labels', (x) => labels(x, `${path}.requires.labels`));
  if (memoryMb !== undefined) requires.memoryMb = memoryMb;
  if (nodeMajor !== undefined) requires.nodeMajor = nodeMajor;
  if (lbl !== undefined) requires.labels = lbl;
  return {
    name: string(o.name, `${path}.name`, LIMITS.name),
    version: string(o.version, `${path}.version`, LIMITS.version),
    compat: array(o.compat ?? [], `${path}.compat`, LIMITS.compat, (x, p) => string(x, p, LIMITS.name)),
    requires,
  };
}

const HOST_ID = /^[0-9a-f]{32}$/;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** A host id: the fingerprint of its key, 32 lowercase hex digits. */
export function hostId(v: unknown, path: string): string {
  const s = string(v, path, 32);
  if (!HOST_ID.test(s)) throw bad(path, 'must be a host id (32 lowercase hex digits)');
  return s;
}

function base64(v: unknown, path: string, max: number): string {
  const s = string(v, path, max);
  if (!BASE64.test(s)) throw bad(path, 'must be base64');
  return s;
}

/** What `POST /cluster/register` carries, before the signature check. */
export interface Registration {
  record: Record<string, unknown>;
  signature: string;
  id: string;
  publicKey: string;
}

/** First pass over a registration: enough to check the signature. */
export function registration(body: unknown): Registration {
  const o = object(body, 'body');
  const record = object(o.record, 'record');
  return {
    record,
    signature: base64(o.signature, 'signature', 256),
    id: hostId(record.id, 'record.id'),
    publicKey: base64(record.publicKey, 'record.publicKey', 512),
  };
}

/** Second pass: every field of the registered record. */
export function hostRecord(value: Record<string, unknown>, now: number): HostRecord {
  const record = object(value, 'record');
  return {
    id: hostId(record.id, 'record.id'),
    publicKey: base64(record.publicKey, 'record.publicKey', 512),
    clientUrl: url(record.clientUrl, 'record.clientUrl', ['ws', 'wss', 'tcp', 'tls']),
    peerUrl: url(record.peerUrl, 'record.peerUrl', ['http', 'https']),
    labels: labels(record.labels ?? {}, 'record.labels'),
    capacity: number(record.capacity, 'record.capacity', { int: true }),
    services: array(record.services ?? [], 'record.services', LIMITS.services, service),
    nodeMajor: number(record.nodeMajor, 'record.nodeMajor', { int: true, max: 10_000 }),
    status: 'up',
    registeredAt: now,
    lastSeenAt: now,
    metrics: record.metrics === undefined ? { ...ZERO_METRICS } : metrics(record.metrics, 'record.metrics'),
  };
}

export interface Heartbeat {
  host: string;
  metrics: HostMetrics;
  status?: 'up' | 'leaving';
}

export function heartbeat(body: unknown): Heartbeat {
  const o = object(body, 'body');
  const hb: Heartbeat = { host: hostId(o.host, 'host'), metrics: metrics(o.metrics, 'metrics') };
  // A host does not suspect itself: 'suspect' from it means it is up.
  const status = optional(o, 'status', (x) => oneOf(x, 'status', ['up', 'leaving', 'suspect'] as const));
  if (status) hb.status = status === 'suspect' ? 'up' : status;
  return hb;
}

export function leave(body: unknown): { host: string } {
  return { host: hostId(object(body, 'body').host, 'host') };
}

/** Migration ids become Store keys: a safe alphabet, no dots. */
const RECORD_ID = /^[A-Za-z0-9_=-]{1,128}$/;

function recordId(v: unknown, path: string): string {
  const s = string(v, path, 128);
  if (!RECORD_ID.test(s)) throw bad(path, 'must be 1..128 characters of [A-Za-z0-9_=-]');
  return s;
}

function round(v: unknown, path: string): RoundRecord {
  const o = object(v, path);
  return {
    bytes: number(o.bytes, `${path}.bytes`),
    keys: number(o.keys, `${path}.keys`, { int: true }),
    ms: number(o.ms, `${path}.ms`),
  };
}

const instanceList = (v: unknown, path: string): string[] =>
  array(v, path, LIMITS.instances, (x, p) => string(x, p, 1024));

function freezeSteps(v: unknown, path: string): FreezeSteps {
  const o = object(v, path);
  const steps: FreezeSteps = {
    workerMs: number(o.workerMs, `${path}.workerMs`),
    sendMs: number(o.sendMs, `${path}.sendMs`),
    waitMs: number(o.waitMs, `${path}.waitMs`),
  };
  for (const k of ['installMs', 'casMs', 'servingMs', 'destinationMs', 'downtimeMs'] as const) {
    const x = optional(o, k, (y) => number(y, `${path}.${k}`));
    if (x !== undefined) steps[k] = x;
  }
  return steps;
}

export function migration(v: unknown, path: string): MigrationRecord {
  const o = object(v, path);
  const ph = object(o.phases, `${path}.phases`);
  const phases: MigrationRecord['phases'] = {
    negotiateMs: number(ph.negotiateMs, `${path}.phases.negotiateMs`),
    precopyMs: number(ph.precopyMs, `${path}.phases.precopyMs`),
    freezeMs: number(ph.freezeMs, `${path}.phases.freezeMs`),
    commitMs: number(ph.commitMs, `${path}.phases.commitMs`),
  };
  const gap = optional(ph, 'clientGapMs', (x) => number(x, `${path}.phases.clientGapMs`));
  if (gap !== undefined) phases.clientGapMs = gap;
  const late = optional(ph, 'clientsLate', (x) => number(x, `${path}.phases.clientsLate`, { int: true }));
  if (late !== undefined) phases.clientsLate = late;
  const steps = optional(ph, 'freezeSteps', (x) => freezeSteps(x, `${path}.phases.freezeSteps`));
  if (steps !== undefined) phases.freezeSteps = steps;
  const m: MigrationRecord = {
    id: recordId(o.id, `${path}.id`),
    instances: instanceList(o.instances, `${path}.instances`),
    service: string(o.service, `${path}.service`, LIMITS.name),
    from: string(o.from, `${path}.from`, LIMITS.name),
    to: string(o.to, `${path}.to`, LIMITS.name, 0),
    reason: oneOf(o.reason, `${path}.reason`, ['operator', 'drain', 'shutdown', 'self', 'policy'] as const),
    outcome: oneOf(o.outcome, `${path}.outcome`, ['committed', 'aborted', 'refused'] as const),
    startedAt: number(o.startedAt, `${path}.startedAt`),
    endedAt: number(o.endedAt, `${path}.endedAt`),
    sessions: number(o.sessions, `${path}.sessions`, { int: true }),
    stateBytes: number(o.stateBytes, `${path}.stateBytes`),
    bytesSent: number(o.bytesSent, `${path}.bytesSent`),
    rounds: array(o.rounds, `${path}.rounds`, LIMITS.rounds, round),
    finalDirtyBytes: number(o.finalDirtyBytes, `${path}.finalDirtyBytes`),
    throttleSteps: number(o.throttleSteps, `${path}.throttleSteps`, { int: true }),
    phases,
  };
  const code = optional(o, 'code', (x) => string(x, `${path}.code`, LIMITS.name));
  const message = optional(o, 'message', (x) => string(x, `${path}.message`, LIMITS.text, 0));
  const epoch = optional(o, 'epoch', (x) => number(x, `${path}.epoch`, { int: true }));
  if (code !== undefined) m.code = code;
  if (message !== undefined) m.message = message;
  if (epoch !== undefined) m.epoch = epoch;
  return m;
}

export function drain(v: unknown, path: string): DrainStatus {
  const o = object(v, path);
  const d: DrainStatus = {
    id: string(o.id, `${path}.id`, LIMITS.name),
    host: string(o.host, `${path}.host`, LIMITS.name),
    state: oneOf(o.state, `${path}.state`, ['running', 'done', 'failed'] as const),
    total: number(o.total, `${path}.total`, { int: true }),
    moved: number(o.moved, `${path}.moved`, { int: true }),
    failed: number(o.failed, `${path}.failed`, { int: true }),
    suspended: number(o.suspended, `${path}.suspended`, { int: true }),
    startedAt: number(o.startedAt, `${path}.startedAt`),
  };
  const endedAt = optional(o, 'endedAt', (x) => number(x, `${path}.endedAt`));
  const etaS = optional(o, 'etaS', (x) => number(x, `${path}.etaS`));
  const message = optional(o, 'message', (x) => string(x, `${path}.message`, LIMITS.text, 0));
  if (endedAt !== undefined) d.endedAt = endedAt;
  if (etaS !== undefined) d.etaS = etaS;
  if (message !== undefined) d.message = message;
  return d;
}

/** The event types hosts may push; the `host.*` ones only the directory raises. */
export const PUSHED_EVENT_TYPES = ['migration', 'migration.progress', 'drain', 'decision'] as const;

/** Every event type on the stream (for `?types=`). */
export const EVENT_TYPES: readonly ClusterEvent['type'][] = [
  'host.registered',
  'host.suspect',
  'host.left',
  ...PUSHED_EVENT_TYPES,
];

export function clusterEvent(v: unknown, path: string): ClusterEvent {
  const o = object(v, path);
  const type = oneOf(o.type, `${path}.type`, PUSHED_EVENT_TYPES);
  switch (type) {
    case 'migration':
      return { type, migration: migration(o.migration, `${path}.migration`) };
    case 'drain':
      return { type, drain: drain(o.drain, `${path}.drain`) };
    case 'migration.progress': {
      const e: Extract<ClusterEvent, { type: 'migration.progress' }> = {
        type,
        id: recordId(o.id, `${path}.id`),
        instances: instanceList(o.instances, `${path}.instances`),
        phase: string(o.phase, `${path}.phase`, LIMITS.name),
      };
      const r = optional(o, 'round', (x) => number(x, `${path}.round`, { int: true }));
      const eta = optional(o, 'etaMs', (x) => number(x, `${path}.etaMs`));
      if (r !== undefined) e.round = r;
      if (eta !== undefined) e.etaMs = eta;
      return e;
    }
    case 'decision': {
      const e: Extract<ClusterEvent, { type: 'decision' }> = {
        type,
        at: number(o.at, `${path}.at`),
        action: string(o.action, `${path}.action`, LIMITS.name),
        reason: string(o.reason, `${path}.reason`, LIMITS.text),
      };
      const instance = optional(o, 'instance', (x) => string(x, `${path}.instance`, 1024));
      const host = optional(o, 'host', (x) => string(x, `${path}.host`, LIMITS.name));
      if (instance !== undefined) e.instance = instance;
      if (host !== undefined) e.host = host;
      return e;
    }
  }
}

export function events(body: unknown): ClusterEvent[] {
  const o = object(body, 'body');
  return array(o.events, 'events', LIMITS.events, clusterEvent);
}
