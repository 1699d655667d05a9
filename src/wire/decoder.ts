import { ProtocolError } from './errors.js';
import { DEFAULT_MAX_FRAME_BYTES, decodePayload, type Frame, HEADER_BYTES, readHeader } from './frame.js';

/**
 * Incremental frame decoder for byte streams. Accepts any split of the input (a frame across many
 * chunks, many frames in one chunk). Frames that sit whole inside a chunk are decoded in place
 * (DATA payloads are views into the chunk); only a frame split across chunks is copied, into a
 * buffer allocated after its header passed the size check.
 *
 * After the first error the decoder is poisoned: every later `push` throws the same error,
 * because a byte stream cannot be resynchronised once framing is lost.
 */
export class FrameDecoder {
  readonly maxFrameBytes: number;
  private readonly header = new Uint8Array(HEADER_BYTES);
  private headerFill = 0;
  private partial: Uint8Array | undefined;
  private partialFill = 0;
  private partialType = 0;
  private partialFlags = 0;
  private failed: ProtocolError | undefined;

  constructor(opts: { maxFrameBytes?: number } = {}) {
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  }

  /** Bytes held for an incomplete frame. */
  get bufferedBytes(): number {
    return this.headerFill + this.partialFill;
  }

  /** Feeds bytes; returns the frames they completed, in order. Throws `ProtocolError` only. */
  push(chunk: Uint8Array): Frame[] {
    const out: Frame[] = [];
    this.pushTo(chunk, out);
    return out;
  }

  /** Like `push`, appending to `out` (lets callers reuse one array). */
  pushTo(chunk: Uint8Array, out: Frame[]): void {
    if (this.failed) throw this.failed;
    try {
      this.consume(chunk, out);
    } catch (err) {
      this.failed =
        err instanceof ProtocolError
          ? err
          : new ProtocolError('MALFORMED_FRAME', 'frame could not be decoded', { cause: err });
      throw this.failed;
    }
  }

  private consume(chunk: Uint8Array, out: Frame[]): void {
    let off = 0;
    const n = chunk.length;
    while (off < n) {
      if (this.partial) {
        const take = Math.min(this.partial.length - this.partialFill, n - off);
        this.partial.set(chunk.subarray(off, off + take), this.partialFill);
        this.partialFill += take;
        off += take;
        if (this.partialFill === this.partial.length) {
          const payload = this.partial;
          this.partial = undefined;
          this.partialFill = 0;
          out.push(decodePayload(this.partialType, this.partialFlags, payload));
        }
        continue;
      }
      if (this.headerFill > 0 || n - off < HEADER_BYTES) {
        const take = Math.min(HEADER_BYTES - this.headerFill, n - off);
        this.header.set(chunk.subarray(off, off + take), this.headerFill);
        this.headerFill += take;
        off += take;
        if (this.headerFill < HEADER_BYTES) continue;
        this.headerFill = 0;
        const h = readHeader(this.header, 0, this.maxFrameBytes);
        this.startPartial(h.type, h.flags, h.length, out);
        continue;
      }
      const h = readHeader(chunk, off, this.maxFrameBytes);
      const start = off + HEADER_BYTES;
      if (n - start >= h.length) {
        out.push(decodePayload(h.type, h.flags, chunk.subarray(start, start + h.length)));
        off = start + h.length;
      } else {
        off = start;
        this.startPartial(h.type, h.flags, h.length, out);
      }
    }
  }

  private startPartial(type: number, flags: number, length: number, out: Frame[]): void {
    if (length === 0) {
      out.push(decodePayload(type, flags, new Uint8Array(0)));
      return;
    }
    this.partial = new Uint8Array(length);
    this.partialFill = 0;
    this.partialType = type;
    this.partialFlags = flags;
  }
}
