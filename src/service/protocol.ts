import type { MoveTarget, Requirements, ResumeHow } from './define.js';
import type { TimerRecord } from './timers.js';

/**
 * Messages between a host's main thread (transports, sessions) and a service worker (instances).
 * One MessagePort carries both directions in order, which is what makes suspension safe: a
 * suspend request is handled after every message queued before it, and every `send` the service
 * made before replying reaches the main thread before the reply.
 */
export type StateEntries = Array<[string, Uint8Array]>;

export interface SessionSnapshot {
  state: StateEntries;
  exported: string[];
  dependsOn: string[];
}

export interface InstanceSnapshot {
  state: StateEntries;
  timers: TimerRecord[];
}

/** A state store's changes since a generation, or (`full`) its whole content. */
export interface StateDeltaMsg {
  set: StateEntries;
  deleted: string[];
  /** The receiver replaces its copy instead of applying a diff. */
  full: boolean;
}

/** Where pre-copy got to: the generation of each store that the last round covered. */
export interface PrecopyMark {
  inst: number;
  sessions: Record<string, number>;
}

/** One pre-copy round for one instance. */
export interface InstanceDelta {
  inst: string;
  key: string | undefined;
  instance: StateDeltaMsg;
  sessions: Array<[sid: string, delta: StateDeltaMsg]>;
  mark: PrecopyMark;
  /** Encoded bytes in this delta (keys and values). */
  bytes: number;
}

/** The stop-and-copy remainder: the last delta plus what only exists once frozen. */
export interface FrozenInstance extends InstanceDelta {
  timers: TimerRecord[];
  members: Array<{ sid: string; exported: string[]; dependsOn: string[] }>;
}

/** What a host lists about each running instance. */
export interface InstanceInfo {
  inst: string;
  key: string | undefined;
  sessions: number;
  stateBytes: number;
}

export type ToWorker =
  /** A new session; replies with the instance id (the worker applies the service's key rules). */
  | { op: 'open'; id: number; key: string | undefined; sid: string }
  /** Which instance a new session would join (the service's key rules), and whether it runs. */
  | { op: 'resolve'; id: number; key: string | undefined; sid: string }
  | { op: 'msg'; sid: string; ch: number; data: ArrayBuffer }
  | { op: 'reconnected'; sid: string }
  /** The session's transport is down; the session is kept (grace period). */
  | { op: 'away'; sid: string }
  | { op: 'suspendSession'; id: number; sid: string }
  | {
      op: 'restoreSession';
      id: number;
      inst: string;
      sid: string;
      snapshot: SessionSnapshot;
      how: ResumeHow;
    }
  | { op: 'closeSession'; id: number; sid: string; reason: string }
  | { op: 'suspendInstance'; id: number; inst: string }
  /** Stops an instance for good (its last per-session client closed): nothing is kept. */
  | { op: 'endInstance'; id: number; inst: string }
  | { op: 'restoreInstance'; id: number; inst: string; key: string | undefined; snapshot: InstanceSnapshot }
  | { op: 'stats'; id: number }
  | { op: 'instances'; id: number }
  /**
   * Source side of a migration: one pre-copy round of every instance in `insts`, packed in parts
   * of about `partBytes` (see precopy.ts). `since[k]` undefined = round 0 (everything).
   */
  | {
      op: 'precopy';
      id: number;
      /** The round's number, which its frames carry. */
      n: number;
      insts: string[];
      since: Array<PrecopyMark | undefined>;
      partBytes: number;
      /** A round of at most this many bytes is not packed (`skipped`): the stop-and-copy takes it. */
      skipBelow?: number;
    }
  /** Stops timers and intake; replies with the packed remainder. The instances stay, frozen. */
  | { op: 'freeze'; id: number; insts: string[]; since: Array<PrecopyMark | undefined> }
  /** The migration aborted: the frozen instances run again. */
  | { op: 'thaw'; id: number; insts: string[] }
  /** The migration committed elsewhere: drop the frozen instances without calling any hook. */
  | { op: 'release'; id: number; insts: string[] }
  /** Slows the instance's hooks by `ms` each, so a state-dirtying instance lets pre-copy converge. */
  | { op: 'throttle'; inst: string; ms: number }
  /** Destination side: builds (or updates) inactive copies from one packed part of a round. */
  | { op: 'stage'; id: number; part: Uint8Array }
  /** Destination: the packed remainder; the staged copies become frozen instances with their sessions. */
  | { op: 'install'; id: number; frozen: Uint8Array }
  /** Destination: the migration committed; timers run and each session's resume hook runs. */
  | { op: 'activate'; id: number; insts: string[] }
  /** Destination: the migration failed; forget the staged or installed copies. */
  | { op: 'unstage'; id: number; insts: string[] };

/**
 * A pre-copy round as the source's worker reports it, after it posted each part (a round frame,
 * precopy.ts) as a `part` message of the request.
 */
export interface PrecopyRound {
  /** How many parts were posted; 0 when `skipped`. */
  parts: number;
  /** The round was small enough to leave to the stop-and-copy: nothing was packed. */
  skipped: boolean;
  /** Per instance, in request order. */
  marks: PrecopyMark[];
  /** Encoded bytes of the round (keys and values), all instances together. */
  bytes: number;
  keys: number;
}

/** The stop-and-copy remainder as the source's worker hands it over. */
export interface FrozenBatch {
  /** Packed FrozenInstance[] (transferred). */
  frozen: Uint8Array;
  bytes: number;
  instances: Array<{ inst: string; key: string | undefined; sids: string[] }>;
}

/** What the main thread needs to know about the service before routing sessions to it. */
export interface ServiceMeta {
  name: string;
  version: string;
  compat: string[];
  idleMs: number;
  requires: Requirements;
}

export type FromWorker =
  | { t: 'ready'; meta: ServiceMeta }
  | { t: 'reply'; id: number; ok: true; value: unknown }
  | { t: 'reply'; id: number; ok: false; code: string; message: string }
  /** One piece of a request's answer ahead of its reply (a pre-copy round's parts, transferred). */
  | { t: 'part'; id: number; part: Uint8Array }
  | { t: 'send'; sid: string; ch: number; data: ArrayBuffer }
  | { t: 'close'; sid: string; reason: string }
  | { t: 'depends'; sid: string; on: string }
  /** The service asked to move its own instance (`ctx.moveTo`). */
  | { t: 'moveTo'; inst: string; target: MoveTarget }
  | { t: 'log'; level: 'info' | 'warn' | 'error'; msg: string; fields: Record<string, unknown> };

export interface WorkerStats {
  instances: number;
  sessions: number;
  heapUsed: number;
}

/** Data handed to a worker at start. */
export interface WorkerInit {
  /** URL of the module whose default export is the ServiceDefinition. */
  module: string;
  service: string;
}
