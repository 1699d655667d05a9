export type { Continuation, SessionContinuation } from './continuation.js';
export { decodeContinuation, encodeContinuation } from './continuation.js';
export type {
  InstanceContext,
  InstanceTimers,
  MoveTarget,
  Requirements,
  ResumeHow,
  ServiceDefinition,
  ServiceSession,
} from './define.js';
export { compatMatches, defineService } from './define.js';
export { StateStore } from './state.js';
export type { CatchUp, TimerRecord } from './timers.js';
