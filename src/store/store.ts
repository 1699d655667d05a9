/**
 * The directory's persistence interface. Every control-plane component (directory, hosts,
 * gateway) talks to durable state only through {@link Store}; the embedded SQLite backend and a
 * NATS JetStream backend implement it and pass the same conformance suite
 * (`test/store-conformance.ts`).
 *
 * Errors are `RoamError`s (`src/wire/errors.ts`) with these codes:
 * - `STORE_CONFLICT`: a compare-and-set or conditional delete saw a different revision;
 * - `STORE_INVALID_KEY`: a key, prefix or blob name breaks the key rules ({@link isValidKey});
 * - `STORE_LIMIT`: a value or blob is over the configured size, or a watcher fell behind;
 * - `STORE_CLOSED`: the store was closed;
 * - `STORE_CORRUPT`: stored bytes fail their integrity check.
 *
 * @module
 */

/** One key's current value. */
export interface StoreEntry {
  /** The key, as passed to {@link Store.put}. */
  key: string;
  /** The bytes last written. A fresh array the caller may keep or modify. */
  value: Uint8Array;
  /** The revision of the write that produced this value: a positive integer. */
  revision: number;
}

/**
 * One committed change, as delivered by {@link Store.watch}. `revision` is the revision the
 * write produced (for a delete: the revision of the delete itself, larger than the revision of
 * the value it removed).
 */
export type StoreEvent =
  | { type: 'put'; key: string; value: Uint8Array; revision: number }
  | { type: 'delete'; key: string; revision: number };

/** Options of {@link Store.watch}. */
export interface WatchOptions {
  /** Aborting it ends the iteration (the iterator returns `done`, it does not throw). */
  signal?: AbortSignal;
}

/**
 * A small key-value store with revisions, compare-and-set, prefix watches and a blob area.
 *
 * Revisions are positive integers that only grow: every write (put, successful compare-and-set,
 * delete) gets a revision larger than every revision handed out before it on the same backing
 * store, so a key deleted and created again still gets a larger revision than any it had.
 *
 * Keys and blob names: 1 to 1024 characters of `[A-Za-z0-9_=./-]`, not starting or ending with
 * `.` and without `..` (the rules of a NATS KV key), else `STORE_INVALID_KEY`.
 */
/** One compare-and-set of a {@link Store.compareAndSetMany} batch. */
export interface CasOp {
  key: string;
  expectedRevision: number;
  value: Uint8Array;
}

export interface Store {
  /**
   * Reads one key.
   * @returns the entry, or `undefined` when the key does not exist.
   * @throws {RoamError} `STORE_INVALID_KEY`, `STORE_CORRUPT`, `STORE_CLOSED`.
   */
  get(key: string): Promise<StoreEntry | undefined>;

  /**
   * Writes a key unconditionally.
   * @returns the new revision.
   * @throws {RoamError} `STORE_INVALID_KEY`, `STORE_LIMIT` (value over `maxValueBytes`),
   * `STORE_CLOSED`.
   */
  put(key: string, value: Uint8Array): Promise<number>;

  /**
   * Writes a key only if its current revision is `expectedRevision`; `0` means the key must not
   * exist (create-only). Atomic across every instance and process sharing the backing store.
   * @returns the new revision.
   * @throws {RoamError} `STORE_CONFLICT` when the current revision differs, `STORE_INVALID_KEY`,
   * `STORE_LIMIT`, `INVALID_ARGUMENT` (expectedRevision not a non-negative integer),
   * `STORE_CLOSED`.
   */
  compareAndSet(key: string, expectedRevision: number, value: Uint8Array): Promise<number>;

  /**
   * Several compare-and-sets that succeed or fail together: if any key's revision differs from its
   * `expectedRevision`, nothing is written. One durable commit for the whole batch, which is what
   * lets a drain move thousands of instances without thousands of fsyncs.
   * @returns the new revision of each key, in order.
   * @throws {RoamError} `STORE_CONFLICT` (naming the first key that differed), `INVALID_ARGUMENT`
   * (a key twice in the batch, bad revision), `STORE_INVALID_KEY`, `STORE_LIMIT`, `STORE_CLOSED`.
   */
  compareAndSetMany(ops: ReadonlyArray<CasOp>): Promise<number[]>;

  /**
   * Deletes a key; with `expectedRevision`, only if the key's current revision is that one.
   * @returns `true` when a value was deleted, `false` when the key did not exist (whatever
   * `expectedRevision` says).
   * @throws {RoamError} `STORE_CONFLICT` when `expectedRevision` is given and the key exists with
   * another revision, `STORE_INVALID_KEY`, `STORE_CLOSED`.
   */
  delete(key: string, expectedRevision?: number): Promise<boolean>;

  /**
   * Every entry whose key starts with `prefix` (`''` lists everything), sorted by key (byte
   * order). A snapshot: one consistent point in time.
   * @throws {RoamError} `STORE_INVALID_KEY` (prefix with characters outside the key alphabet),
   * `STORE_CORRUPT`, `STORE_CLOSED`.
   */
  list(prefix: string): Promise<StoreEntry[]>;

  /**
   * Every change to a key starting with `prefix` committed after this call, in commit order,
   * including changes made through other instances and processes sharing the backing store.
   * The position is taken when `watch` is called, not when iteration starts.
   *
   * Iteration ends (`done`) when `opts.signal` aborts, when the consumer breaks out of the loop,
   * or when the store is closed. It ends with a `STORE_LIMIT` error when the consumer falls so far
   * behind that events would be lost (bounded queue overflow, or the change log was pruned past
   * its position): re-`list` then, and watch again. Each call returns a new single-consumer
   * iterable.
   * @throws {RoamError} `STORE_INVALID_KEY`, `STORE_CLOSED` (from the call or from iteration).
   */
  watch(prefix: string, opts?: WatchOptions): AsyncIterable<StoreEvent>;

  /**
   * Stores a blob (bundle files, continuation snapshots) under `name`, replacing any blob of that
   * name. Blobs live apart from keys: they have no revisions and produce no watch events.
   * @throws {RoamError} `STORE_INVALID_KEY` (name breaks the key rules), `STORE_LIMIT` (over
   * `maxBlobBytes`), `STORE_CLOSED`.
   */
  putBlob(name: string, bytes: Uint8Array): Promise<void>;

  /**
   * Reads a blob.
   * @returns its bytes, or `undefined` when there is no blob of that name.
   * @throws {RoamError} `STORE_INVALID_KEY`, `STORE_CORRUPT`, `STORE_CLOSED`.
   */
  getBlob(name: string): Promise<Uint8Array | undefined>;

  /**
   * Deletes a blob.
   * @returns `true` when it existed.
   * @throws {RoamError} `STORE_INVALID_KEY`, `STORE_CLOSED`.
   */
  deleteBlob(name: string): Promise<boolean>;

  /**
   * Ends every watch and releases the backing store. Idempotent: a second `close()` resolves;
   * every other method called afterwards throws `STORE_CLOSED`.
   */
  close(): Promise<void>;
}

/** Longest key, prefix or blob name, in characters (= bytes: the alphabet is ASCII). */
export const MAX_KEY_LENGTH = 1024;

const KEY_ALPHABET = /^[A-Za-z0-9_=./-]*$/;

/**
 * Whether `key` is a valid store key or blob name: 1..{@link MAX_KEY_LENGTH} characters of
 * `[A-Za-z0-9_=./-]`, not starting or ending with `.`, no `..` (NATS KV key rules: dots separate
 * subject tokens, which may not be empty).
 */
export function isValidKey(key: unknown): key is string {
  return (
    typeof key === 'string' &&
    key.length >= 1 &&
    key.length <= MAX_KEY_LENGTH &&
    KEY_ALPHABET.test(key) &&
    !key.startsWith('.') &&
    !key.endsWith('.') &&
    !key.includes('..')
  );
}

/**
 * Whether `prefix` is a valid `list`/`watch` prefix: `''`, or up to {@link MAX_KEY_LENGTH}
 * characters of the key alphabet (it may end with `.`, as in `'hosts.'`).
 */
export function isValidPrefix(prefix: unknown): prefix is string {
  return typeof prefix === 'string' && prefix.length <= MAX_KEY_LENGTH && KEY_ALPHABET.test(prefix);
}
