import { C1, Packr } from 'msgpackr';
import { RoamError } from '../wire/index.js';

/** Largest key, in UTF-8 bytes, a {@link StateStore} accepts. */
export const MAX_STATE_KEY_BYTES = 1024;

/** Default {@link StateStoreOptions.maxBytes}: 64 MiB. */
export const DEFAULT_STATE_MAX_BYTES = 64 * 1024 * 1024;

/** Default {@link StateStoreOptions.maxTombstones}. */
export const DEFAULT_MAX_TOMBSTONES = 10_000;

/** Default {@link StateStoreOptions.maxExported}. */
export const DEFAULT_MAX_EXPORTED = 1024;

/** Limits of a {@link StateStore}. */
export interface StateStoreOptions {
  /** Ceiling on {@link StateStore.sizeBytes}; a `set` that would pass it throws `STATE_LIMIT`. Default 64 MiB. */
  maxBytes?: number;
  /**
   * How many deletions are remembered for {@link StateStore.dirtySince} before the oldest are
   * dropped (which raises {@link StateStore.trackedSince}). Default 10,000.
   */
  maxTombstones?: number;
  /** How many keys may be marked exported. Default 1024. */
  maxExported?: number;
}

/** Options of {@link StateStore.restore}. */
export interface StateRestoreOptions extends StateStoreOptions {
  /** Keys to mark exported, as carried next to the entries in a continuation. */
  exported?: readonly string[];
}

/** What changed in a store after some generation: the unit of one pre-copy round. */
export interface StateDelta {
  /** Keys written, with their encoded values. */
  set: Array<[string, Uint8Array]>;
  /** Keys removed. */
  deleted: string[];
}

// Records stay on (msgpackr's default) because they are what tells a plain object apart from a
// Map on the wire; with `useRecords: false` every Map would come back as an object, or every
// object as a Map. With no shared structures each encoding carries its own record definitions,
// so bytes decode identically on any host. `copyBuffers` keeps decoded binaries from aliasing
// the stored bytes, which are the source of truth.
const codec = new Packr({
  moreTypes: true,
  mapsAsObjects: false,
  copyBuffers: true,
  writeFunction: () => {
    throw new TypeError('functions cannot be stored');
  },
});

interface Entry {
  bytes: Uint8Array;
  gen: number;
}

/**
 * Why a key is unusable, or undefined if it is fine. Lone surrogates are refused because UTF-8
 * cannot carry them: the key would come back different after a migration.
 */
export function stateKeyProblem(key: unknown): string | undefined {
  if (typeof key !== 'string') return `state key must be a string, got ${typeof key}`;
  if (/\p{Cs}/u.test(key)) return 'state key contains a lone surrogate';
  const n = utf8ByteLength(key);
  if (n > MAX_STATE_KEY_BYTES) return `state key is ${n} bytes; the limit is ${MAX_STATE_KEY_BYTES}`;
  return undefined;
}

/** UTF-8 length of a well-formed string, without allocating the encoding. */
export function utf8ByteLength(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

function checkKey(key: unknown, code: 'INVALID_ARGUMENT' | 'CONTINUATION_CORRUPT'): asserts key is string {
  const problem = stateKeyProblem(key);
  if (problem) throw new RoamError(code, problem);
}

function nonNegativeInt(v: number | undefined, fallback: number, what: string): number {
  if (v === undefined) return fallback;
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new RoamError('INVALID_ARGUMENT', `${what} must be a non-negative integer`);
  }
  return v;
}

/** Encodes one value as the store does; functions, symbols and cycles throw `INVALID_ARGUMENT`. */
export function encodeStateValue(value: unknown): Uint8Array {
  let packed: Uint8Array;
  try {
    packed = codec.pack(value);
  } catch (err) {
    // Symbols, functions, and cycles or nesting deep enough to exhaust the stack end up here.
    const why = err instanceof RangeError ? 'value is cyclic or nested too deeply' : String(err);
    throw new RoamError('INVALID_ARGUMENT', `state value cannot be encoded: ${why}`, { cause: err });
  }
  // msgpackr returns a view into its shared scratch buffer; an exactly-sized copy of our own
  // does not keep that buffer alive for as long as the value is stored.
  return new Uint8Array(packed);
}

/** Decodes bytes produced by {@link encodeStateValue}; each call returns a fresh object graph. */
export function decodeStateValue(bytes: Uint8Array): unknown {
  return codec.unpack(bytes);
}

/**
 * msgpackr decodes the never-used byte 0xc1 to a marker object instead of failing; no encoder
 * writes it, so finding the marker anywhere in a decoded value means the bytes are damaged.
 */
function containsNeverUsed(root: unknown): boolean {
  const stack: unknown[] = [root];
  const seen = new Set<object>();
  while (stack.length > 0) {
    const v = stack.pop();
    if (v === C1) return true;
    if (typeof v !== 'object' || v === null || seen.has(v) || ArrayBuffer.isView(v)) continue;
    seen.add(v);
    // Element-wise pushes: spreading a large array into push() would overflow the call stack.
    if (v instanceof Map) for (const [k, x] of v) stack.push(k, x);
    else if (v instanceof Set || Array.isArray(v)) for (const x of v) stack.push(x);
    else for (const k in v) stack.push((v as Record<string, unknown>)[k]);
  }
  return false;
}

function checkBytes(key: string, bytes: unknown): Uint8Array {
  if (!(bytes instanceof Uint8Array)) {
    throw new RoamError('CONTINUATION_CORRUPT', `state value of ${JSON.stringify(key)} is not bytes`);
  }
  return bytes;
}

function checkDecodes(key: string, raw: unknown): Uint8Array {
  const bytes = checkBytes(key, raw);
  let decoded: unknown;
  try {
    decoded = codec.unpack(bytes);
  } catch (err) {
    throw new RoamError('CONTINUATION_CORRUPT', `state value of ${JSON.stringify(key)} does not decode`, {
      cause: err,
    });
  }
  if (containsNeverUsed(decoded)) {
    throw new RoamError('CONTINUATION_CORRUPT', `state value of ${JSON.stringify(key)} contains the byte 0xc1`);
  }
  // Own copy: the input is often a view into a larger received message that should not stay pinned.
  return new Uint8Array(bytes);
}

/**
 * An attribute/value store: the state of a session or an instance that survives suspension and
 * migration (Migrate's store()/retrieve()).
 *
 * Values are kept only in encoded form (msgpackr with Map, Set, Date, typed-array, bigint, RegExp
 * and Error support). The bytes are the source of truth, so:
 * - `get` decodes a fresh copy on every call; mutating what it returned changes nothing in the
 *   store until that object is passed to `set` again;
 * - what survives is what msgpackr encodes: class instances come back as plain objects, `-0` as
 *   `0`, Dates at whole-millisecond precision, an own `__proto__` key as `__proto_`;
 * - functions, symbols and cyclic graphs are refused with `INVALID_ARGUMENT`.
 *
 * Every change bumps {@link generation}; {@link dirtySince} lists what changed after a given
 * generation so migration can send the whole store once and then only what was dirtied.
 */
export class StateStore {
  private readonly entries = new Map<string, Entry>();
  /** Deleted key → generation of the deletion; insertion order is generation order. */
  private readonly tombstones = new Map<string, number>();
  private readonly exports = new Set<string>();
  private bytes = 0;
  private gen = 0;
  private floor = 0;
  private readonly maxBytes: number;
  private readonly maxTombstones: number;
  private readonly maxExported: number;

  /** Creates an empty store. */
  constructor(opts: StateStoreOptions = {}) {
    this.maxBytes = nonNegativeInt(opts.maxBytes, DEFAULT_STATE_MAX_BYTES, 'maxBytes');
    this.maxTombstones = nonNegativeInt(opts.maxTombstones, DEFAULT_MAX_TOMBSTONES, 'maxTombstones');
    this.maxExported = nonNegativeInt(opts.maxExported, DEFAULT_MAX_EXPORTED, 'maxExported');
  }

  /**
   * Rebuilds a store from {@link snapshot} output. The restored entries are the baseline:
   * {@link generation} starts at 0 and `dirtySince(0)` reports only later changes.
   *
   * @throws RoamError `CONTINUATION_CORRUPT` if an entry is not a [key, bytes] pair, a key is
   *   invalid or repeated, or a value does not decode; `STATE_LIMIT` if the entries exceed
   *   `maxBytes`. Never returns a partly restored store.
   */
  static restore(entries: ReadonlyArray<readonly [string, Uint8Array]>, opts: StateRestoreOptions = {}): StateStore {
    const store = new StateStore(opts);
    if (!Array.isArray(entries)) throw new RoamError('CONTINUATION_CORRUPT', 'state entries are not an array');
    for (const pair of entries) {
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw new RoamError('CONTINUATION_CORRUPT', 'state entry is not a [key, bytes] pair');
      }
      const [key, raw] = pair;
      checkKey(key, 'CONTINUATION_CORRUPT');
      if (store.entries.has(key)) {
        throw new RoamError('CONTINUATION_CORRUPT', `state key ${JSON.stringify(key)} repeats`);
      }
      const bytes = checkDecodes(key, raw);
      store.bytes += utf8ByteLength(key) + bytes.length;
      if (store.bytes > store.maxBytes) {
        throw new RoamError('STATE_LIMIT', `restored state exceeds ${store.maxBytes} bytes`);
      }
      store.entries.set(key, { bytes, gen: 0 });
    }
    for (const key of opts.exported ?? []) store.export(key);
    return store;
  }

  /** A fresh decoded copy of the value under `key`, or undefined if absent. */
  get<T = unknown>(key: string): T | undefined {
    const e = this.entries.get(key);
    return e === undefined ? undefined : (codec.unpack(e.bytes) as T);
  }

  /**
   * Stores `value` under `key`, replacing any previous value.
   *
   * @throws RoamError `INVALID_ARGUMENT` for a bad key or an unencodable value; `STATE_LIMIT` if
   *   the store would grow past `maxBytes`. Either way the store is unchanged.
   */
  set(key: string, value: unknown): void {
    checkKey(key, 'INVALID_ARGUMENT');
    this.put(key, encodeStateValue(value));
  }

  /** Removes `key`; returns whether it was present. Removing an absent key changes nothing. */
  delete(key: string): boolean {
    const e = this.entries.get(key);
    if (e === undefined) return false;
    this.entries.delete(key);
    this.bytes -= utf8ByteLength(key) + e.bytes.length;
    this.tombstones.set(key, ++this.gen);
    if (this.tombstones.size > this.maxTombstones) {
      // Forgetting the oldest deletion means a delta from before it can no longer be exact.
      const [oldKey, oldGen] = this.tombstones.entries().next().value as [string, number];
      this.tombstones.delete(oldKey);
      this.floor = Math.max(this.floor, oldGen);
    }
    return true;
  }

  /** Whether `key` is present (also when its value is `undefined`). */
  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** Present keys, in first-insertion order. */
  keys(): string[] {
    return [...this.entries.keys()];
  }

  /** Number of present keys. */
  get size(): number {
    return this.entries.size;
  }

  /** UTF-8 bytes of all keys plus encoded bytes of all values; the figure `maxBytes` limits. */
  get sizeBytes(): number {
    return this.bytes;
  }

  /** Counter bumped by every change; each key remembers the generation that last wrote it. */
  get generation(): number {
    return this.gen;
  }

  /**
   * Oldest generation {@link dirtySince} still answers exactly. Raised by {@link forgetBefore}
   * and when more than `maxTombstones` deletions are pending.
   */
  get trackedSince(): number {
    return this.floor;
  }

  /**
   * Everything changed after generation `gen`: applying it to a copy taken at `gen` yields the
   * current contents. Returned byte arrays are the store's own; treat them as read-only.
   *
   * @throws RoamError `INVALID_ARGUMENT` if `gen` is below {@link trackedSince} (deletions from
   *   then are forgotten; send a full {@link snapshot} instead) or above {@link generation}.
   */
  dirtySince(gen: number): StateDelta {
    this.checkGen(gen);
    if (gen < this.floor) {
      throw new RoamError(
        'INVALID_ARGUMENT',
        `deletions before generation ${this.floor} are forgotten; cannot diff from ${gen}`,
      );
    }
    const set: Array<[string, Uint8Array]> = [];
    for (const [k, e] of this.entries) if (e.gen > gen) set.push([k, e.bytes]);
    const deleted: string[] = [];
    for (const [k, g] of this.tombstones) if (g > gen) deleted.push(k);
    return { set, deleted };
  }

  /**
   * Declares that {@link dirtySince} will not be asked about generations below `gen`, so the
   * deletions recorded at or before it can be dropped. Call after each completed pre-copy round.
   *
   * @throws RoamError `INVALID_ARGUMENT` if `gen` is not an integer in 0..{@link generation}.
   */
  forgetBefore(gen: number): void {
    this.checkGen(gen);
    if (gen <= this.floor) return;
    this.floor = gen;
    for (const [k, g] of this.tombstones) {
      if (g > gen) break;
      this.tombstones.delete(k);
    }
  }

  /** The encoded (msgpack) bytes under `key`, without decoding; the store's own array, read-only. */
  encoded(key: string): Uint8Array | undefined {
    return this.entries.get(key)?.bytes;
  }

  /**
   * All entries with their encoded values, for round 0 of a migration or a continuation.
   * Returned byte arrays are the store's own; treat them as read-only.
   */
  snapshot(): Array<[string, Uint8Array]> {
    return [...this.entries].map(([k, e]) => [k, e.bytes]);
  }

  /**
   * Applies a delta from another store's {@link dirtySince}: deletions first, then writes. All or
   * nothing: every value is checked and the final size computed before anything changes.
   *
   * With `trusted` (a delta from a cluster member's own store, see precopy.ts) values are adopted
   * as given, without decoding each one to check it or copying it.
   *
   * @throws RoamError `CONTINUATION_CORRUPT` for malformed input or a value that does not
   *   decode; `STATE_LIMIT` if the result would exceed `maxBytes`.
   */
  applyDelta(delta: StateDelta, opts: { trusted?: boolean } = {}): void {
    if (typeof delta !== 'object' || delta === null || !Array.isArray(delta.set) || !Array.isArray(delta.deleted)) {
      throw new RoamError('CONTINUATION_CORRUPT', 'state delta is not { set, deleted }');
    }
    const sizeOf = (k: string): number => {
      const e = this.entries.get(k);
      return e === undefined ? 0 : utf8ByteLength(k) + e.bytes.length;
    };
    // Simulate on a key → size map so that repeated keys in the delta are costed once, last wins.
    const after = new Map<string, number>();
    const gone = new Set<string>();
    for (const k of delta.deleted) {
      checkKey(k, 'CONTINUATION_CORRUPT');
      gone.add(k);
      after.set(k, 0);
    }
    const writes: Array<[string, Uint8Array]> = [];
    for (const pair of delta.set) {
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw new RoamError('CONTINUATION_CORRUPT', 'state entry is not a [key, bytes] pair');
      }
      const [k, raw] = pair as [unknown, unknown];
      checkKey(k, 'CONTINUATION_CORRUPT');
      const bytes = opts.trusted ? checkBytes(k, raw) : checkDecodes(k, raw);
      writes.push([k, bytes]);
      after.set(k, utf8ByteLength(k) + bytes.length);
    }
    let total = this.bytes;
    for (const [k, n] of after) total += n - sizeOf(k);
    if (total > this.maxBytes) {
      throw new RoamError('STATE_LIMIT', `state would grow to ${total} bytes; limit ${this.maxBytes}`);
    }
    for (const k of gone) this.delete(k);
    // The final size was checked above; an intermediate write may briefly pass the limit when a
    // later one shrinks, which must not abort a delta halfway.
    for (const [k, bytes] of writes) this.put(k, bytes, false);
  }

  /**
   * Marks `key` exported (Migrate's export()): its value is handed to the client when the
   * session resumes. The mark is independent of the key being present, so it survives deletes.
   *
   * @throws RoamError `INVALID_ARGUMENT` for a bad key; `STATE_LIMIT` past `maxExported` marks.
   */
  export(key: string): void {
    checkKey(key, 'INVALID_ARGUMENT');
    if (this.exports.has(key)) return;
    if (this.exports.size >= this.maxExported) {
      throw new RoamError('STATE_LIMIT', `more than ${this.maxExported} exported keys`);
    }
    this.exports.add(key);
  }

  /** Removes the export mark from `key`; returns whether it was marked. */
  unexport(key: string): boolean {
    return this.exports.delete(key);
  }

  /** Keys marked exported, in marking order. */
  exported(): string[] {
    return [...this.exports];
  }

  private put(key: string, bytes: Uint8Array, enforceLimit = true): void {
    const old = this.entries.get(key);
    const keyBytes = utf8ByteLength(key);
    const next = this.bytes - (old === undefined ? 0 : keyBytes + old.bytes.length) + keyBytes + bytes.length;
    if (enforceLimit && next > this.maxBytes) {
      throw new RoamError('STATE_LIMIT', `state would grow to ${next} bytes; limit ${this.maxBytes}`);
    }
    this.bytes = next;
    // A write supersedes the deletion: dirtySince reports it as set, which overwrites anyway.
    this.tombstones.delete(key);
    if (old === undefined) this.entries.set(key, { bytes, gen: ++this.gen });
    else {
      old.bytes = bytes;
      old.gen = ++this.gen;
    }
  }

  private checkGen(gen: number): void {
    if (!Number.isSafeInteger(gen) || gen < 0 || gen > this.gen) {
      throw new RoamError('INVALID_ARGUMENT', `generation ${gen} is not in 0..${this.gen}`);
    }
  }
}
