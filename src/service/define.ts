import { RoamError } from '../wire/index.js';
import type { StateStore } from './state.js';
import type { CatchUp } from './timers.js';

/** What a host must offer to run a service; checked before an instance is placed or restored. */
export interface Requirements {
  /** Heap the service's worker may use, in MiB (becomes the worker's resourceLimits). */
  memoryMb?: number;
  /** Minimum Node.js major version. */
  nodeMajor?: number;
  /** Host labels that must match exactly, e.g. `{ region: 'eu' }`. */
  labels?: Record<string, string>;
}

/** Why a session's `resume` hook runs. */
export type ResumeHow =
  /** The transport came back; nothing was suspended. */
  | 'reconnected'
  /** Restored from a continuation (after suspension, or after the host restarted). */
  | 'restored'
  /** Arrived with its instance from another host. */
  | 'migrated';

/** Named timers that survive suspension, restarts and moves (stored as name, deadline, period). */
export interface InstanceTimers {
  setTimeout(name: string, ms: number): void;
  setInterval(name: string, periodMs: number, opts?: { catchUp?: CatchUp }): void;
  clear(name: string): boolean;
  has(name: string): boolean;
}

/** One client's session as service code sees it. */
export interface ServiceSession {
  /** 128-bit session id, hex. */
  readonly id: string;
  /**
   * False while the client's transport is down. Messages sent meanwhile wait in the replay window
   * (4 MiB by default; overflowing it loses the session), so a streaming service should pause.
   */
  readonly connected: boolean;
  /** Per-session attribute/value store; travels in the session's continuation. */
  readonly state: StateStore;
  /** Sends to this session's client: exactly once, in order, across drops and moves. */
  send(data: Uint8Array | string, channel?: number): void;
  /** Marks a state key as exported: the client receives its value when the session resumes. */
  export(key: string): void;
  /** Declares that this session depends on another: suspending that one suspends this one, and they resume together. */
  dependsOn(otherSessionId: string): void;
  /** Ends the session for good. */
  close(reason?: string): void;
}

/** What every hook receives: the instance the session belongs to. */
export interface InstanceContext {
  readonly service: string;
  /** Instance key (room, game, document); undefined for per-session instances. */
  readonly key: string | undefined;
  /** Instance attribute/value store, shared by all its sessions. */
  readonly state: StateStore;
  readonly timers: InstanceTimers;
  /** Sessions currently attached to this instance (suspended ones are not). */
  sessions(): ServiceSession[];
  /** Sends to every attached session except `except`. */
  broadcast(data: Uint8Array | string, opts?: { channel?: number; except?: ServiceSession }): void;
  log(msg: string, fields?: Record<string, unknown>): void;
  /**
   * Asks the host to migrate this instance, with its sessions, to another host: one named by id,
   * or any host carrying all the given labels (the least loaded). Returns at once; the move
   * happens between hooks and the sessions' `resume` hooks run on the destination with `how` =
   * 'migrated'. A host outside a cluster logs and ignores it.
   */
  moveTo(target: MoveTarget): void;
}

/** Where `ctx.moveTo` should take an instance. */
export type MoveTarget = { host: string } | { labels: Record<string, string> };

/**
 * A service: the code that serves sessions. Hooks may be async; each instance's hooks run one at
 * a time in arrival order.
 */
export interface ServiceDefinition {
  /** `[A-Za-z0-9_-]{1,64}` */
  name: string;
  version: string;
  requires?: Requirements;
  /** Compatibility tags: a continuation resumes only into a service with the same set. */
  compat?: string[];
  /** Normalises or validates the client's instance key; throw to refuse it. Default: as given. */
  key?: (key: string | undefined) => string | undefined;
  /** A keyed instance with no attached session for this long is suspended to the Store. Default 60 s. */
  idleMs?: number;
  /** A fresh instance starts (not one restored from a continuation). */
  init?(ctx: InstanceContext): void | Promise<void>;
  /** A new session joined the instance. */
  open?(ctx: InstanceContext, session: ServiceSession): void | Promise<void>;
  /** A message from the session's client. */
  message(ctx: InstanceContext, session: ServiceSession, data: Uint8Array, channel: number): void | Promise<void>;
  /** The session is about to be suspended into a continuation. */
  suspend?(ctx: InstanceContext, session: ServiceSession): void | Promise<void>;
  /** The session is back; `how` says from where. */
  resume?(ctx: InstanceContext, session: ServiceSession, how: ResumeHow): void | Promise<void>;
  /** A named timer fired. */
  timer?(ctx: InstanceContext, name: string): void | Promise<void>;
  /** The session ended (closed by either side, lost, or expired). */
  close?(ctx: InstanceContext, session: ServiceSession, reason: string): void | Promise<void>;
}

const NAME = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Declares a service. Export it as the module's default export; hosts load the module in a worker
 * thread.
 *
 * @example
 * export default defineService({
 *   name: 'counter', version: '1.0.0',
 *   open(ctx) { ctx.timers.setInterval('tick', 100); },
 *   timer(ctx) { const i = (ctx.state.get<number>('i') ?? 0) + 1; ctx.state.set('i', i); ctx.broadcast(String(i)); },
 *   message() {},
 * });
 */
export function defineService<T extends ServiceDefinition>(def: T): T {
  if (!def || typeof def !== 'object') throw new RoamError('INVALID_ARGUMENT', 'defineService needs an object');
  if (typeof def.name !== 'string' || !NAME.test(def.name)) {
    throw new RoamError('INVALID_ARGUMENT', `service name must match ${NAME}, got ${JSON.stringify(def.name)}`);
  }
  if (typeof def.version !== 'string' || def.version.length === 0 || def.version.length > 255) {
    throw new RoamError('INVALID_ARGUMENT', `service ${def.name}: version must be a non-empty string`);
  }
  if (typeof def.message !== 'function') {
    throw new RoamError('INVALID_ARGUMENT', `service ${def.name}: a message(ctx, session, data) hook is required`);
  }
  for (const tag of def.compat ?? []) {
    if (typeof tag !== 'string' || tag.length === 0 || tag.length > 128) {
      throw new RoamError('INVALID_ARGUMENT', `service ${def.name}: compat tags are non-empty strings`);
    }
  }
  if (def.idleMs !== undefined && !(def.idleMs >= 0)) {
    throw new RoamError('INVALID_ARGUMENT', `service ${def.name}: idleMs must be >= 0`);
  }
  return def;
}

/** Compat tags compare as sets. */
export function compatMatches(a: readonly string[], b: readonly string[]): boolean {
  const sa = new Set(a);
  const sb = new Set(b);
  if (sa.size !== sb.size) return false;
  for (const t of sa) if (!sb.has(t)) return false;
  return true;
}
