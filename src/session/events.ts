import type { CodeName } from '../wire/index.js';

/** Why a session is gone for good. */
export type LostReason =
  | 'expired'
  | 'unknown_session'
  | 'replay_window_exceeded'
  | 'auth_failed'
  | 'reconnect_exhausted'
  /** The host that served the session lost ownership of its instance (split brain settled against it). */
  | 'fenced'
  /** The service refused the session (its key rules, or its open/init hook threw). */
  | 'refused'
  | 'protocol_error';

/**
 * Lifecycle of a session, as seen by the application on either side. Exactly one of `lost` or
 * `closed` ends every session.
 */
export type SessionEvent =
  | { type: 'open'; sessionId: string }
  /** The transport broke; the session is kept and is being resumed. */
  | { type: 'suspended'; code: CodeName; message: string }
  /** A new transport took over; `gapMs` since the old one broke, `replayed` messages retransmitted by this side. */
  | { type: 'resumed'; gapMs: number; replayed: number; remoteAddress: string | undefined }
  /** An authenticated MOVE redirected the client to another endpoint. */
  | { type: 'moved'; url: string }
  | { type: 'lost'; reason: LostReason; code: CodeName; message: string }
  | { type: 'closed'; code: CodeName; reason: string; byPeer: boolean };

const LOST_REASONS: Partial<Record<CodeName, LostReason>> = {
  SESSION_EXPIRED: 'expired',
  UNKNOWN_SESSION: 'unknown_session',
  REPLAY_WINDOW_EXCEEDED: 'replay_window_exceeded',
  RESUME_PROOF_INVALID: 'auth_failed',
  RESUME_REPLAYED: 'auth_failed',
  RESUME_STALE: 'auth_failed',
  RESUME_SEQ_INVALID: 'protocol_error',
  HANDSHAKE_FAILED: 'auth_failed',
  UNKNOWN_SERVICE: 'unknown_session',
  RECONNECT_EXHAUSTED: 'reconnect_exhausted',
  FENCED: 'fenced',
  INVALID_ARGUMENT: 'refused',
  SERVICE_ERROR: 'refused',
};

export function lostReasonFor(code: CodeName): LostReason {
  return LOST_REASONS[code] ?? 'protocol_error';
}

/** Codes after which a session cannot continue on any transport. */
export const SESSION_FATAL_CODES: ReadonlySet<CodeName> = new Set<CodeName>([
  'SESSION_EXPIRED',
  'UNKNOWN_SESSION',
  'REPLAY_WINDOW_EXCEEDED',
  'UNKNOWN_SERVICE',
  'FENCED',
  // The service refused to open the session: retrying the same session cannot succeed.
  'INVALID_ARGUMENT',
  'SERVICE_ERROR',
]);
