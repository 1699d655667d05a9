/**
 * The stable table of error and close codes. Numbers travel in CLOSE and ERROR frames; names are
 * what programs compare against (`err.code === 'SESSION_EXPIRED'`). Never renumber an entry:
 * add new ones. docs/protocol.md renders this table.
 */
export const CODES = {
  NORMAL: { n: 0, text: 'normal close' },
  GOING_AWAY: { n: 1, text: 'the endpoint is shutting down' },
  MALFORMED_FRAME: { n: 100, text: 'bytes do not form a valid frame' },
  UNSUPPORTED_VERSION: { n: 101, text: 'frame version not supported' },
  UNKNOWN_FRAME_TYPE: { n: 102, text: 'frame type not known' },
  FRAME_TOO_LARGE: { n: 103, text: 'frame length exceeds the configured maximum' },
  UNEXPECTED_FRAME: { n: 104, text: 'frame not allowed in the current state' },
  SEQUENCE_GAP: { n: 105, text: 'a DATA frame skipped a sequence number' },
  HANDSHAKE_TIMEOUT: { n: 106, text: 'the handshake did not finish in time' },
  TRANSPORT_DEAD: { n: 107, text: 'no frame from the peer within the dead-transport timeout' },
  TRANSPORT_CLOSED: { n: 108, text: 'the transport closed' },
  UNKNOWN_SERVICE: { n: 200, text: 'no such service on this server' },
  UNKNOWN_SESSION: { n: 201, text: 'no such session on this server' },
  SESSION_EXPIRED: { n: 202, text: 'the session expired while detached' },
  REPLAY_WINDOW_EXCEEDED: { n: 203, text: 'unacknowledged data exceeded the replay window' },
  RESUME_PROOF_INVALID: { n: 204, text: 'resume proof does not verify' },
  RESUME_REPLAYED: { n: 205, text: 'resume proof answers a challenge not issued on this transport' },
  RESUME_STALE: { n: 206, text: 'resume proof answers an expired challenge' },
  SESSION_REPLACED: { n: 207, text: 'another transport resumed this session' },
  MOVE_INVALID: { n: 208, text: 'MOVE frame failed authentication or is out of order' },
  HANDSHAKE_FAILED: { n: 209, text: 'key agreement or server confirmation failed' },
  RECONNECT_EXHAUSTED: { n: 210, text: 'gave up reconnecting' },
  CLOSED_BY_APPLICATION: { n: 211, text: 'the application closed the session' },
  RESUME_SEQ_INVALID: { n: 212, text: 'resume claims a sequence number the peer cannot have received' },
  INVALID_ARGUMENT: { n: 300, text: 'an API was called with an invalid argument' },
  INVALID_STATE: { n: 301, text: 'an API was called in a state that does not allow it' },
  MESSAGE_TOO_LARGE: { n: 302, text: 'message larger than the maximum frame size' },
  STORE_CONFLICT: { n: 400, text: 'compare-and-set lost: the revision changed' },
  STORE_INVALID_KEY: { n: 401, text: 'store key is empty, too long or has characters outside [A-Za-z0-9_=./-]' },
  STORE_LIMIT: { n: 402, text: 'value or blob larger than the store allows' },
  STORE_CLOSED: { n: 403, text: 'the store is closed' },
  STORE_CORRUPT: { n: 404, text: 'stored data failed its integrity check' },
  CONTINUATION_CORRUPT: { n: 410, text: 'continuation bytes are truncated or fail their checksum' },
  CONTINUATION_VERSION: { n: 411, text: 'continuation encoded with an unsupported format version' },
  INCOMPATIBLE: { n: 412, text: 'continuation compat tags do not match the service' },
  STATE_LIMIT: { n: 413, text: 'a state store grew past its configured size' },
  SERVICE_ERROR: { n: 414, text: 'service code threw' },
  UNAUTHORIZED: { n: 420, text: 'the caller could not prove cluster membership' },
  NOT_FOUND: { n: 421, text: 'no such host, instance or resource in the cluster' },
  MIGRATION_REFUSED: { n: 422, text: 'the destination refused the migration' },
  MIGRATION_ABORTED: { n: 423, text: 'the migration failed before commit; the source kept the instance' },
  FENCED: { n: 424, text: 'this host no longer owns the instance (stale epoch)' },
  NO_DESTINATION: { n: 425, text: 'no host satisfies the placement constraints' },
  PAYLOAD_TOO_LARGE: { n: 426, text: 'request body over the limit' },
  UNAVAILABLE: { n: 427, text: 'a cluster member could not be reached' },
  INSTANCE_ELSEWHERE: {
    n: 428,
    text: 'another host has the keyed instance or the moved session (message: its client URL)',
  },
  INTERNAL: { n: 500, text: 'internal error' },
  OVERLOADED: { n: 503, text: 'server is over a configured limit' },
} as const;

export type CodeName = keyof typeof CODES;

const byNumber = new Map<number, CodeName>(Object.entries(CODES).map(([name, v]) => [v.n, name as CodeName]));

/** Number for a code name. */
export function codeNumber(name: CodeName): number {
  return CODES[name].n;
}

/** Name for a code number; unknown numbers map to `INTERNAL` so a newer peer never crashes us. */
export function codeName(n: number): CodeName {
  return byNumber.get(n) ?? 'INTERNAL';
}

/** Human text for a code. */
export function codeText(name: CodeName): string {
  return CODES[name].text;
}
