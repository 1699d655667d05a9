import { pack, Unpackr } from 'msgpackr';
import { RoamError } from '../wire/index.js';
import type { FrozenInstance, InstanceDelta } from './protocol.js';

/**
 * Pre-copy rounds travel packed. The source's worker packs each part of a round into one buffer
 * and transfers it to the main thread, which sends it on the migration link as it is; the
 * destination's main thread transfers it to its worker, which unpacks it and stages the values as
 * views into that one buffer. So neither main thread touches individual values, and a 1 MiB part
 * costs two allocations instead of a few thousand (per-value structured clones and copies were
 * most of the CPU time of a round).
 */

/**
 * Target size of one part of a pre-copy round. A part is packed between two turns of the
 * instance's event loop, so this bounds how long pre-copy holds up the instance's timers.
 */
export const ROUND_PART_BYTES = 256 * 1024;

/** Decodes parts with values as views into the part's own buffer (which the caller owns). */
const viewUnpackr = new Unpackr({ mapsAsObjects: true });

/** Packs into a buffer of its own, which can be transferred without detaching msgpackr's. */
export function packOwned(value: unknown): Uint8Array {
  return new Uint8Array(pack(value));
}

/** A part of a round, as {@link packOwned} made it. */
export function unpackPart(bytes: Uint8Array): InstanceDelta[] {
  return unpackList(bytes, 'pre-copy part') as InstanceDelta[];
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
