import { type CodeName, codeName, codeNumber } from './codes.js';

/**
 * Base class of every error roam throws or reports. `code` is a stable string from the code
 * table in `codes.ts` (and docs/protocol.md); programs branch on it, never on `message`.
 */
export class RoamError extends Error {
  readonly code: CodeName;
  constructor(code: CodeName, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RoamError';
    this.code = code;
  }

  /** The numeric code carried in CLOSE and ERROR frames. */
  get wireCode(): number {
    return codeNumber(this.code);
  }

  /** Rebuilds an error received in an ERROR or CLOSE frame, keeping its code typed. */
  static fromWire(code: number, message: string): RoamError {
    return new RoamError(codeName(code), message);
  }
}

/** The peer sent bytes that are not a valid roam frame, or a frame that breaks the protocol. */
export class ProtocolError extends RoamError {
  constructor(code: CodeName, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ProtocolError';
  }
}
