import { Packr, Unpackr } from 'msgpackr';
import { RoamError } from '../wire/index.js';
import type { FrozenInstance, InstanceDelta } from './protocol.js';

/**
 * Pre-copy rounds travel packed, as round frames. The source's worker packs each part of a round
 * into one buffer that is already the message the migration link carries (a small header, then
 * the msgpack body) and hands it to the main thread as it goes, which writes it to the link as
 * it is. The destination's main thread transfers the message it received to its worker, which
 * unpacks it and stages the values as views into that one buffer. So neither main thread packs,
 * unpacks or copies a part: they are the threads that carry every instance's messages to its
 * clients, and a part they spent milliseconds on would be a stall in every stream of the host.
 * Fresh memory is not free either: on the virtual machines this runs on, every page touched for
 * the first time costs ~10 µs (a 1 MiB copy: ~2.7 ms), which is why parts are packed through one
 * reused buffer and copied once.
 */

/**
 * Target size of one part of a pre-copy round. A part is packed between two turns of the
 * instance's event loop, so this bounds how long pre-copy holds up the instance's timers.
 */
export const ROUND_PART_BYTES = 64 * 1024;

/**
 * First byte of a round frame. 0xc1 is the one byte msgpack never uses, so a round frame cannot
 * be mistaken for a link message (a msgpack map) nor the other way round.
 */
export const ROUND_FRAME_MARK = 0xc1;
/** Round frame header: mark, flags (bit 0: last part of the round), round number (u32 BE). */
export const ROUND_FRAME_HEADER = 6;

/** The header of a round frame, or undefined when `bytes` is not one. */
export function roundFrameHeader(bytes: Uint8Array): { n: number; last: boolean } | undefined {
  if (bytes.byteLength < ROUND_FRAME_HEADER || bytes[0] !== ROUND_FRAME_MARK) return undefined;
  const flags = bytes[1] as number;
  if ((flags & ~1) !== 0) return undefined;
  const n = new DataView(bytes.buffer, bytes.byteOffset + 2, 4).getUint32(0);
  return { n, last: (flags & 1) === 1 };
}

/** Decodes parts with values as views into the part's own buffer (which the caller owns). */
const viewUnpackr = new Unpackr({ mapsAsObjects: true });

/**
 * Packs through one reused scratch buffer (its pages stay mapped), then copies the result once
 * into a buffer of its own that can be transferred. msgpackr's own target moves on with every
 * call, so packing with it would touch fresh memory for every byte.
 */
// Plain msgpack maps (no record extension), as msgpackr's own `pack` writes them.
const packr = new Packr({ useRecords: false });
let scratch: Uint8Array = new Uint8Array(4 * ROUND_PART_BYTES);

function packInto(value: unknown, header: number): Uint8Array {
  packr.useBuffer(scratch);
  const body = packr.pack(value);
  // A value bigger than the scratch made msgpackr allocate: keep that buffer for next time.
  if (body.buffer !== scratch.buffer && body.buffer.byteLength <= 64 * ROUND_PART_BYTES) {
    scratch = new Uint8Array(body.buffer);
  }
  const out = new Uint8Array(header + body.byteLength);
  out.set(body, header);
  return out;
}

/** Packs into a buffer of its own, exactly its size, which can be transferred. */
export function packOwned(value: unknown): Uint8Array {
  return packInto(value, 0);
}

/** Packs one part of pre-copy round `n` as a round frame, in a buffer of its own. */
export function packRoundFrame(part: InstanceDelta[], n: number, last: boolean): Uint8Array {
  const out = packInto(part, ROUND_FRAME_HEADER);
  out[0] = ROUND_FRAME_MARK;
  out[1] = last ? 1 : 0;
  new DataView(out.buffer).setUint32(2, n);
  return out;
}

/** The deltas of a round frame, as {@link packRoundFrame} made it. */
export function unpackRoundFrame(bytes: Uint8Array): InstanceDelta[] {
  if (!(bytes instanceof Uint8Array) || roundFrameHeader(bytes) === undefined) {
    throw new RoamError('CONTINUATION_CORRUPT', 'pre-copy part is not a round frame');
  }
  return unpackList(bytes.subarray(ROUND_FRAME_HEADER), 'pre-copy part') as InstanceDelta[];
}

/** The stop-and-copy remainder of every instance of a migration, as {@link packOwned} made it. */
export function unpackFrozen(bytes: Uint8Array): FrozenInstance[] {
  const list = unpackList(bytes, 'frozen instances') as FrozenInstance[];
  for (const f of list) {
    if (!Array.isArray(f.members) || !Array.isArray(f.timers)) {
      throw new RoamError('CONTINUATION_CORRUPT', 'frozen instance without members or timers');
    }
  }
  return list;
}

function unpackList(bytes: Uint8Array, what: string): unknown[] {
  if (!(bytes instanceof Uint8Array)) throw new RoamError('CONTINUATION_CORRUPT', `${what} is not bytes`);
  let v: unknown;
  try {
    v = viewUnpackr.unpack(bytes);
  } catch (err) {
    throw new RoamError('CONTINUATION_CORRUPT', `${what} does not decode: ${(err as Error).message}`, { cause: err });
  }
  if (!Array.isArray(v)) throw new RoamError('CONTINUATION_CORRUPT', `${what} is not a list`);
  for (const d of v as Array<Partial<InstanceDelta> | null>) {
    if (
      typeof d !== 'object' ||
      d === null ||
      typeof d.inst !== 'string' ||
      typeof d.instance !== 'object' ||
      d.instance === null ||
      !Array.isArray(d.sessions)
    ) {
      throw new RoamError('CONTINUATION_CORRUPT', `${what} holds a malformed instance delta`);
    }
  }
  return v as unknown[];
}

/**
 * Splits a round into parts of about `limit` bytes. An instance's writes may span parts: only
 * its first part carries `full` (replace the copy) and the deletions; sessions ride with its last.
 */
export function splitRound(deltas: InstanceDelta[], limit: number): InstanceDelta[][] {
  const parts: InstanceDelta[][] = [];
  let cur: InstanceDelta[] = [];
  let size = 0;
  const flush = () => {
    if (cur.length > 0) parts.push(cur);
    cur = [];
    size = 0;
  };
  for (const d of deltas) {
    const set = d.instance.set;
    let start = 0;
    let first = true;
    while (first || start < set.length) {
      let end = start;
      let bytes = 0;
      while (end < set.length && (end === start || size + bytes < limit)) {
        const [k, v] = set[end] as [string, Uint8Array];
        bytes += k.length + v.byteLength;
        end++;
      }
      const lastPiece = end >= set.length;
      cur.push({
        ...d,
        instance: {
          set: set.slice(start, end),
          deleted: first ? d.instance.deleted : [],
          full: first ? d.instance.full : false,
        },
        sessions: lastPiece ? d.sessions : [],
      });
      size += bytes;
      first = false;
      start = end;
      if (size >= limit) flush();
      if (lastPiece) break;
    }
  }
  flush();
  return parts.length > 0 ? parts : [[]];
}
