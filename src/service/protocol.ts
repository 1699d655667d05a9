import type { Requirements, ResumeHow } from './define.js';
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

export type ToWorker =
  /** A new session; replies with the instance id (the worker applies the service's key rules). */
  | { op: 'open'; id: number; key: string | undefined; sid: string }
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
  | { op: 'stats'; id: number };

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
  | { t: 'send'; sid: string; ch: number; data: ArrayBuffer }
  | { t: 'close'; sid: string; reason: string }
  | { t: 'depends'; sid: string; on: string }
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
