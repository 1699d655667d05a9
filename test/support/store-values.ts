/**
 * Self-validating values for the store crash and race tests: a header says which write made the
 * value and how its body was generated, so a reader can tell a complete value from a torn one
 * without any other record.
 */
import type { Store } from '../../src/store/index.js';
import { RoamError } from '../../src/wire/index.js';

/** Deterministic pseudo-random bytes (xorshift32). */
export function patternBytes(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

const MAGIC = 0x52564c31; // 'RVL1'
const HEADER = 16;

/** A value of `size` bytes (at least the 16-byte header) that records `index` and `seed`. */
export function makeValue(index: number, seed: number, size: number): Uint8Array {
  const body = patternBytes(Math.max(0, size - HEADER), seed);
  const out = new Uint8Array(HEADER + body.byteLength);
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC);
  view.setUint32(4, index);
  view.setUint32(8, seed);
  view.setUint32(12, body.byteLength);
  out.set(body, HEADER);
  return out;
}

/** The index a value was made with, or an error message when the value is torn or foreign. */
export function checkValue(bytes: Uint8Array): { index: number } | { error: string } {
  if (bytes.byteLength < HEADER) return { error: `only ${bytes.byteLength} bytes` };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0) !== MAGIC) return { error: 'bad magic' };
  const index = view.getUint32(4);
  const seed = view.getUint32(8);
  const length = view.getUint32(12);
  if (length !== bytes.byteLength - HEADER) return { error: `length ${length} != ${bytes.byteLength - HEADER}` };
  const expected = patternBytes(length, seed);
  if (!Buffer.from(bytes.buffer, bytes.byteOffset + HEADER, length).equals(expected)) return { error: 'body differs' };
  return { index };
}

/** What one {@link casIncrement} writer did. */
export interface CasResult {
  /** Each value this writer wrote and the revision it got. */
  wrote: Array<{ value: number; revision: number }>;
  /** How many of its compare-and-sets lost (and were retried). */
  conflicts: number;
}

/**
 * Increments the decimal counter at `key` `times` times with get + compareAndSet retry loops.
 * @param thinkMs up to this many ms (random) pass between the read and the write, as real work
 * would take: it widens the race window so concurrent writers really collide.
 */
export async function casIncrement(store: Store, key: string, times: number, thinkMs = 2): Promise<CasResult> {
  const result: CasResult = { wrote: [], conflicts: 0 };
  for (let i = 0; i < times; i++) {
    for (;;) {
      const cur = await store.get(key);
      const next = (cur ? Number(new TextDecoder().decode(cur.value)) : 0) + 1;
      await new Promise((r) => setTimeout(r, Math.random() * thinkMs));
      try {
        const revision = await store.compareAndSet(key, cur?.revision ?? 0, new TextEncoder().encode(String(next)));
        result.wrote.push({ value: next, revision });
        break;
      } catch (err) {
        if (!(err instanceof RoamError && err.code === 'STORE_CONFLICT')) throw err;
        result.conflicts++;
      }
    }
  }
  return result;
}
