/**
 * The embedded Store: one SQLite file (better-sqlite3), shareable by several processes.
 *
 * Layout (schema version 1, in `PRAGMA user_version`):
 * - `meta(k, v)`: `k = 'revision'` holds the global revision counter;
 * - `kv(key, value, revision, crc)`: current values;
 * - `changes(seq, key, op, value, crc, at)`: the change log watchers read; `seq` is the revision
 *   the change produced, so it is gap-free and in commit order; old rows are pruned;
 * - `blobs(name, size, crc, bytes)`.
 *
 * Every value, change-log value and blob carries a CRC-32 of its name and bytes, checked on each
 * read: a mismatch is `STORE_CORRUPT` for that key only.
 *
 * Watching across processes: each instance polls the change log every `pollIntervalMs` while it
 * has watchers (cheaply: `PRAGMA data_version` says whether another connection committed), and
 * wakes up at once after its own writes. That timer keeps the process alive while any watch is
 * open, as a socket would: end watches (abort, break) or close the store.
 *
 * Calls run synchronously on the calling thread (better-sqlite3). A write that finds another
 * process holding the write lock waits for it briefly in place (up to 20 ms), then retries on
 * timers until `busyTimeoutMs`, so the event loop (heartbeats, client handshakes) keeps running
 * meanwhile; this instance's writes still commit in the order they were made. Keep bulk work (big
 * blobs) off latency-sensitive processes: a commit itself blocks the thread.
 *
 * Needs Node.js >= 20.15 (`zlib.crc32`).
 *
 * @module
 */

import { crc32 } from 'node:zlib';
import Database from 'better-sqlite3';
import { RoamError } from '../wire/index.js';
import {
  type CasOp,
  isValidKey,
  isValidPrefix,
  type Store,
  type StoreEntry,
  type StoreEvent,
  type WatchOptions,
} from './store.js';
import { WatchStream } from './watch.js';

/** What the store logs through: pino's interface, or anything shaped like it. */
export interface StoreLogger {
  debug(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

/** Options of {@link openSqliteStore}. */
export interface SqliteStoreOptions {
  /** The database file; created if missing. `-wal` and `-shm` files appear beside it. */
  path: string;
  /** Largest value `put`/`compareAndSet` accept, in bytes; default 1 MiB. */
  maxValueBytes?: number;
  /** Largest blob `putBlob` accepts, in bytes; default 256 MiB. */
  maxBlobBytes?: number;
  /** How often watchers look for commits by other processes, in ms; default 50. */
  pollIntervalMs?: number;
  /** Gets warnings (corruption found, a watcher that fell behind) and debug lines. */
  logger?: StoreLogger;
  /**
   * How long a write waits for another process's write lock before failing with `UNAVAILABLE`, in
   * ms; default 5000. Past the first 20 ms the wait does not block the event loop.
   */
  busyTimeoutMs?: number;
  /**
   * `full` (default) fsyncs every commit. `normal` (WAL) survives any process crash — a commit is
   * in the OS page cache the moment it returns — but an OS crash or power cut may lose the last
   * commits. On one machine every process sharing the file dies in such a crash too, so no host
   * can act on a lost ownership change; hosts in a local cluster use `normal` so a migration's
   * commit costs microseconds instead of an fsync (docs/cluster.md).
   */
  synchronous?: 'full' | 'normal';
  /** Most events one watcher queues for a consumer that is not reading; default 10,000. */
  watchQueueLimit?: number;
  /** Change-log rows kept for watchers that lag: at most this many; default 10,000. */
  changeLogRows?: number;
  /** Change-log rows kept for watchers that lag: at most this old, in ms; default 10 minutes. */
  changeLogMs?: number;
}

/** Default of {@link SqliteStoreOptions.maxValueBytes}: 1 MiB (NATS's default max payload). */
export const DEFAULT_MAX_VALUE_BYTES = 1024 * 1024;
/** Default of {@link SqliteStoreOptions.maxBlobBytes}: 256 MiB. */
export const DEFAULT_MAX_BLOB_BYTES = 256 * 1024 * 1024;

const SCHEMA_VERSION = 1;
const OP_PUT = 1;
const OP_DELETE = 2;
/** Longest wait for another process's write lock that blocks the thread; longer waits retry on timers. */
const SYNC_BUSY_MS = 20;
/** Longest pause between two tries at the write lock. */
const MAX_BUSY_BACKOFF_MS = 50;
/** Prune the change log every this many writes made through one instance. */
const PRUNE_EVERY = 64;
/** Change-log rows read per query, and per poll before yielding to the event loop. */
const POLL_BATCH = 256;
const POLL_MAX_ROWS = 4096;
/** Greater than every character of the key alphabet: `[prefix, prefix + '~')` is the prefix range. */
const PREFIX_END = '~';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (k, v) VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY,
  value BLOB NOT NULL,
  revision INTEGER NOT NULL,
  crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
  seq INTEGER PRIMARY KEY,
  key TEXT NOT NULL,
  op INTEGER NOT NULL,
  value BLOB,
  crc INTEGER NOT NULL,
  at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_at ON changes (at);
CREATE TABLE IF NOT EXISTS blobs (
  name TEXT PRIMARY KEY,
  size INTEGER NOT NULL,
  crc INTEGER NOT NULL,
  bytes BLOB NOT NULL
);
`;

/** CRC-32 of a name followed by its bytes: catches flipped bytes and rows moved to another name. */
function checksum(name: string, bytes: Uint8Array): number {
  return crc32(bytes, crc32(name));
}

/** SQLITE_BUSY (and its extended codes): another connection holds the lock we need. */
function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_BUSY');
}

function closedError(): RoamError {
  return new RoamError('STORE_CLOSED', 'the store is closed');
}

function checkKey(key: unknown, what = 'key'): asserts key is string {
  if (!isValidKey(key)) {
    const shown = typeof key === 'string' ? JSON.stringify(key.length > 64 ? `${key.slice(0, 64)}…` : key) : typeof key;
    throw new RoamError('STORE_INVALID_KEY', `invalid store ${what} ${shown}`);
  }
}

function checkPrefix(prefix: unknown): asserts prefix is string {
  if (!isValidPrefix(prefix)) throw new RoamError('STORE_INVALID_KEY', 'invalid store prefix');
}

function checkBytes(bytes: unknown, limit: number, what: string): Buffer {
  if (!(bytes instanceof Uint8Array)) throw new RoamError('INVALID_ARGUMENT', `${what} must be a Uint8Array`);
  if (bytes.byteLength > limit) {
    throw new RoamError('STORE_LIMIT', `${what} of ${bytes.byteLength} bytes exceeds the limit of ${limit} bytes`);
  }
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function checkRevision(revision: unknown, what: string): asserts revision is number {
  if (typeof revision !== 'number' || !Number.isSafeInteger(revision) || revision < 0) {
    throw new RoamError('INVALID_ARGUMENT', `${what} must be a non-negative integer`);
  }
}

/** A fresh plain Uint8Array over the bytes SQLite returned (no copy: the Buffer is ours). */
function toBytes(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Maps SQLite failures that mean "not a usable database file" to STORE_CORRUPT. */
function wrapOpenError(err: unknown, path: string): unknown {
  const code = (err as { code?: unknown }).code;
  if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT') {
    return new RoamError('STORE_CORRUPT', `${path} is not a usable store database`, { cause: err });
  }
  return err;
}

interface KvRow {
  value: unknown;
  revision: unknown;
  crc: unknown;
}
interface KvListRow extends KvRow {
  key: unknown;
}
interface ChangeRow {
  seq: number;
  key: unknown;
  op: unknown;
  value: unknown;
  crc: unknown;
}
interface BlobRow {
  size: unknown;
  crc: unknown;
  bytes: unknown;
}

function prepareStatements(db: Database.Database) {
  return {
    bumpRevision: db.prepare("UPDATE meta SET v = v + 1 WHERE k = 'revision' RETURNING v"),
    headRevision: db.prepare("SELECT v FROM meta WHERE k = 'revision'").pluck(),
    get: db.prepare('SELECT value, revision, crc FROM kv WHERE key = ?'),
    revisionOf: db.prepare('SELECT revision FROM kv WHERE key = ?'),
    upsert: db.prepare(
      'INSERT INTO kv (key, value, revision, crc) VALUES (?, ?, ?, ?) ' +
        'ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision, crc = excluded.crc',
    ),
    deleteKey: db.prepare('DELETE FROM kv WHERE key = ?'),
    listRange: db.prepare('SELECT key, value, revision, crc FROM kv WHERE key >= ? AND key < ? ORDER BY key'),
    insertChange: db.prepare('INSERT INTO changes (seq, key, op, value, crc, at) VALUES (?, ?, ?, ?, ?, ?)'),
    changesAfter: db.prepare(
      'SELECT seq, key, op, value, crc FROM changes WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?',
    ),
    prune: db.prepare('DELETE FROM changes WHERE seq <= ? OR at < ?'),
    putBlob: db.prepare(
      'INSERT INTO blobs (name, size, crc, bytes) VALUES (?, ?, ?, ?) ' +
        'ON CONFLICT (name) DO UPDATE SET size = excluded.size, crc = excluded.crc, bytes = excluded.bytes',
    ),
    getBlob: db.prepare('SELECT size, crc, bytes FROM blobs WHERE name = ?'),
    deleteBlob: db.prepare('DELETE FROM blobs WHERE name = ?'),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

/**
 * Opens (creating if needed) the SQLite store at `opts.path`. Several instances, in this process
 * or others, may open the same file at once: writes are serialized by SQLite's write lock and
 * every instance's watchers see every instance's writes.
 * @throws {RoamError} `STORE_CORRUPT` when the file is not a store database (or one from a newer
 * schema); SQLite's own errors for I/O problems.
 */
export async function openSqliteStore(opts: SqliteStoreOptions): Promise<Store> {
  return SqliteStore.open(opts);
}

/** The SQLite implementation of {@link Store}; construct with {@link openSqliteStore}. */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly path: string;
  private readonly maxValueBytes: number;
  private readonly maxBlobBytes: number;
  private readonly pollIntervalMs: number;
  private readonly logger: StoreLogger | undefined;
  private readonly watchQueueLimit: number;
  private readonly changeLogRows: number;
  private readonly changeLogMs: number;
  private closed = false;
  private writesSincePrune = 0;
  private readonly busyTimeoutMs: number;
  /** Calls queued behind a write that waits for the lock, and the last of them: later calls go after it. */
  private queued = 0;
  private queueTail: Promise<unknown> = Promise.resolve();

  private readonly watchers = new Set<WatchStream>();
  /** Per watcher: the last change-log seq it has seen. */
  private readonly cursors = new Map<WatchStream, number>();
  private pollTimer: NodeJS.Timeout | undefined;
  private immediatePoll: NodeJS.Immediate | undefined;
  private lastDataVersion = -1;
  /** This instance committed since the last poll (its own commits don't move data_version). */
  private dirty = false;

  private readonly stmt: Statements;
  private readonly putTx: (key: string, value: Buffer, crc: number) => number;
  private readonly casTx: (key: string, expected: number, value: Buffer, crc: number) => number;
  private readonly casManyTx: (ops: Array<{ key: string; expected: number; value: Buffer; crc: number }>) => number[];
  private readonly deleteTx: (key: string, expected: number | undefined) => number;

  private constructor(db: Database.Database, opts: SqliteStoreOptions) {
    this.db = db;
    this.path = opts.path;
    this.maxValueBytes = opts.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES;
    this.maxBlobBytes = opts.maxBlobBytes ?? DEFAULT_MAX_BLOB_BYTES;
    this.pollIntervalMs = Math.max(1, opts.pollIntervalMs ?? 50);
    this.busyTimeoutMs = opts.busyTimeoutMs ?? 5000;
    this.logger = opts.logger;
    this.watchQueueLimit = opts.watchQueueLimit ?? 10_000;
    this.changeLogRows = Math.max(1, opts.changeLogRows ?? 10_000);
    this.changeLogMs = opts.changeLogMs ?? 10 * 60 * 1000;
    this.stmt = prepareStatements(db);
    const s = this.stmt;

    // Every write transaction runs as BEGIN IMMEDIATE: it takes SQLite's write lock before its
    // first read, so a compare-and-set's read and write are atomic across processes (a deferred
    // transaction could read, lose the lock race, and fail with SQLITE_BUSY_SNAPSHOT instead of
    // waiting out busy_timeout).
    const nextRevision = (): number => (s.bumpRevision.get() as { v: number }).v;
    const logChange = (rev: number, key: string, op: number, value: Buffer | null, crc: number): void => {
      s.insertChange.run(rev, key, op, value, crc, Date.now());
    };
    const put = this.db.transaction((key: string, value: Buffer, crc: number): number => {
      const rev = nextRevision();
      s.upsert.run(key, value, rev, crc);
      logChange(rev, key, OP_PUT, value, crc);
      return rev;
    });
    const cas = this.db.transaction((key: string, expected: number, value: Buffer, crc: number): number => {
      const current = (s.revisionOf.get(key) as { revision: number } | undefined)?.revision ?? 0;
      if (current !== expected) {
        throw new RoamError(
          'STORE_CONFLICT',
          `compare-and-set of ${key} expected revision ${expected}, found ${current === 0 ? 'no value' : current}`,
        );
      }
      const rev = nextRevision();
      s.upsert.run(key, value, rev, crc);
      logChange(rev, key, OP_PUT, value, crc);
      return rev;
    });
    const del = this.db.transaction((key: string, expected: number | undefined): number => {
      const current = (s.revisionOf.get(key) as { revision: number } | undefined)?.revision;
      if (current === undefined) return 0;
      if (expected !== undefined && current !== expected) {
        throw new RoamError('STORE_CONFLICT', `delete of ${key} expected revision ${expected}, found ${current}`);
      }
      s.deleteKey.run(key);
      const rev = nextRevision();
      logChange(rev, key, OP_DELETE, null, checksum(key, new Uint8Array(0)));
      return rev;
    });
    const casMany = this.db.transaction((ops: Array<{ key: string; expected: number; value: Buffer; crc: number }>) =>
      ops.map((o) => cas(o.key, o.expected, o.value, o.crc)),
    );
    this.casManyTx = casMany.immediate;
    this.putTx = put.immediate;
    this.casTx = cas.immediate;
    this.deleteTx = del.immediate;
  }

  /** Opens the database file, sets it up and returns the store (see {@link openSqliteStore}). */
  static open(opts: SqliteStoreOptions): SqliteStore {
    let db: Database.Database;
    try {
      db = new Database(opts.path, { timeout: opts.busyTimeoutMs ?? 5000 });
    } catch (err) {
      throw wrapOpenError(err, opts.path);
    }
    try {
      // WAL: readers never block the writer and the other way round, so several processes share
      // the file; a commit is one append to the -wal file, and a crash mid-write leaves a torn
      // frame that recovery ignores, so the database is always the last complete commit.
      db.pragma('journal_mode = WAL');
      // FULL by default, not NORMAL (the `synchronous` option opts out, see there): in WAL mode NORMAL already survives the process being killed (the
      // commit is in the OS page cache), but an OS crash or power cut could lose the last commits
      // after they were acknowledged. The directory acknowledges ownership changes (epochs) to
      // hosts on the strength of a commit; forgetting one could let two hosts serve the same
      // instance. So every commit fsyncs the WAL. Writes are control-plane rate: the cost is fine.
      db.pragma(`synchronous = ${opts.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
      // A big blob passes through the WAL; cut the file back after checkpoints instead of keeping
      // its high-water size forever.
      db.pragma(`journal_size_limit = ${64 * 1024 * 1024}`);
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        throw new RoamError(
          'STORE_CORRUPT',
          `${opts.path} has store schema version ${version}; this build knows up to ${SCHEMA_VERSION}`,
        );
      }
      db.transaction(() => {
        db.exec(SCHEMA);
        db.pragma(`user_version = ${SCHEMA_VERSION}`);
      }).immediate();
      const store = new SqliteStore(db, opts);
      store.prune();
      // From here on a long wait for the lock is taken on timers, not on this thread (`inOrder`).
      db.pragma(`busy_timeout = ${Math.min(SYNC_BUSY_MS, opts.busyTimeoutMs ?? 5000)}`);
      return store;
    } catch (err) {
      db.close();
      throw wrapOpenError(err, opts.path);
    }
  }

  async get(key: string): Promise<StoreEntry | undefined> {
    this.checkOpen();
    checkKey(key);
    return this.inOrder(() => {
      const row = this.stmt.get.get(key) as KvRow | undefined;
      return row === undefined ? undefined : this.entry(key, row);
    });
  }

  async put(key: string, value: Uint8Array): Promise<number> {
    this.checkOpen();
    checkKey(key);
    const buf = checkBytes(value, this.maxValueBytes, 'value');
    const crc = checksum(key, buf);
    return this.inOrder(() => this.wrote(this.putTx(key, buf, crc)));
  }

  async compareAndSet(key: string, expectedRevision: number, value: Uint8Array): Promise<number> {
    this.checkOpen();
    checkKey(key);
    checkRevision(expectedRevision, 'expectedRevision');
    const buf = checkBytes(value, this.maxValueBytes, 'value');
    const crc = checksum(key, buf);
    return this.inOrder(() => this.wrote(this.casTx(key, expectedRevision, buf, crc)));
  }

  async compareAndSetMany(ops: ReadonlyArray<CasOp>): Promise<number[]> {
    this.checkOpen();
    if (!Array.isArray(ops)) throw new RoamError('INVALID_ARGUMENT', 'compareAndSetMany takes an array');
    const seen = new Set<string>();
    const prepared = ops.map((o) => {
      checkKey(o.key);
      if (seen.has(o.key)) throw new RoamError('INVALID_ARGUMENT', `key ${o.key} appears twice in one batch`);
      seen.add(o.key);
      checkRevision(o.expectedRevision, 'expectedRevision');
      const value = checkBytes(o.value, this.maxValueBytes, 'value');
      return { key: o.key, expected: o.expectedRevision, value, crc: checksum(o.key, value) };
    });
    if (prepared.length === 0) return [];
    return this.inOrder(() => {
      const revs = this.casManyTx(prepared);
      this.wrote(revs[revs.length - 1] as number);
      return revs;
    });
  }

  async delete(key: string, expectedRevision?: number): Promise<boolean> {
    this.checkOpen();
    checkKey(key);
    if (expectedRevision !== undefined) checkRevision(expectedRevision, 'expectedRevision');
    return this.inOrder(() => {
      const rev = this.deleteTx(key, expectedRevision);
      if (rev === 0) return false;
      this.wrote(rev);
      return true;
    });
  }

  async list(prefix: string): Promise<StoreEntry[]> {
    this.checkOpen();
    checkPrefix(prefix);
    return this.inOrder(() =>
      (this.stmt.listRange.all(prefix, prefix + PREFIX_END) as KvListRow[]).map((row) =>
        this.entry(row.key as string, row),
      ),
    );
  }

  watch(prefix: string, opts?: WatchOptions): AsyncIterable<StoreEvent> {
    this.checkOpen();
    checkPrefix(prefix);
    const stream = new WatchStream(prefix, { signal: opts?.signal, limits: { maxEvents: this.watchQueueLimit } }, (s) =>
      this.unwatch(s),
    );
    if (stream.ended) return stream;
    // The position is taken now: every commit with a larger revision happened after this call.
    this.cursors.set(stream, this.headRevision());
    this.watchers.add(stream);
    if (this.pollTimer === undefined) {
      this.lastDataVersion = this.dataVersion();
      this.pollTimer = setInterval(() => this.poll(), this.pollIntervalMs);
    }
    return stream;
  }

  async putBlob(name: string, bytes: Uint8Array): Promise<void> {
    this.checkOpen();
    checkKey(name, 'blob name');
    const buf = checkBytes(bytes, this.maxBlobBytes, 'blob');
    const crc = checksum(name, buf);
    await this.inOrder(() => this.stmt.putBlob.run(name, buf.byteLength, crc, buf));
  }

  async getBlob(name: string): Promise<Uint8Array | undefined> {
    this.checkOpen();
    checkKey(name, 'blob name');
    const row = (await this.inOrder(() => this.stmt.getBlob.get(name))) as BlobRow | undefined;
    if (row === undefined) return undefined;
    const { bytes } = row;
    if (
      !Buffer.isBuffer(bytes) ||
      row.size !== bytes.byteLength ||
      typeof row.crc !== 'number' ||
      checksum(name, bytes) !== row.crc
    ) {
      throw this.corrupt(`blob ${name}`);
    }
    return toBytes(bytes);
  }

  async deleteBlob(name: string): Promise<boolean> {
    this.checkOpen();
    checkKey(name, 'blob name');
    return this.inOrder(() => this.stmt.deleteBlob.run(name).changes > 0);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopPolling();
    for (const w of [...this.watchers]) w.end();
    this.watchers.clear();
    this.cursors.clear();
    this.db.close();
  }

  private checkOpen(): void {
    if (this.closed) throw closedError();
  }

  /**
   * Runs `fn` (a write, or a read) now if no earlier write of ours is waiting for the lock; else
   * after those, so this instance's writes commit in the order they were made and a read sees
   * every write made before it. While another process holds the lock, tries again on timers
   * (1, 2, 4 … 50 ms apart) until `busyTimeoutMs`, then fails with `UNAVAILABLE`; the thread is
   * never blocked for more than one short SQLite busy wait.
   */
  private inOrder<T>(fn: () => T): Promise<T> {
    if (this.queued === 0) {
      try {
        return Promise.resolve(fn());
      } catch (err) {
        if (!isBusy(err)) return Promise.reject(err);
      }
      return this.enqueue(fn, performance.now());
    }
    return this.enqueue(fn, undefined);
  }

  /** Queues `fn` behind the calls already waiting; `firstTriedAt`: it already found the lock taken. */
  private enqueue<T>(fn: () => T, firstTriedAt: number | undefined): Promise<T> {
    this.queued++;
    const attempt = async (): Promise<T> => {
      const started = firstTriedAt ?? performance.now();
      let pause = 1;
      // A first try already failed busy: wait before the next.
      let tried = firstTriedAt !== undefined;
      for (;;) {
        if (tried) {
          if (performance.now() - started >= this.busyTimeoutMs) {
            throw new RoamError(
              'UNAVAILABLE',
              `${this.path} stayed locked by another process's write for ${this.busyTimeoutMs} ms; retry`,
            );
          }
          await new Promise((r) => setTimeout(r, pause));
          pause = Math.min(pause * 2, MAX_BUSY_BACKOFF_MS);
        }
        this.checkOpen();
        try {
          return fn();
        } catch (err) {
          if (!isBusy(err)) throw err;
          tried = true;
        }
      }
    };
    const run = this.queueTail.then(attempt, attempt);
    const done = run.finally(() => {
      this.queued--;
    });
    this.queueTail = done.catch(() => {});
    return done;
  }

  private entry(key: string, row: KvRow): StoreEntry {
    const { value, revision, crc } = row;
    if (
      !Buffer.isBuffer(value) ||
      typeof revision !== 'number' ||
      !Number.isSafeInteger(revision) ||
      revision < 1 ||
      typeof crc !== 'number' ||
      checksum(key, value) !== crc
    ) {
      throw this.corrupt(`key ${key}`);
    }
    return { key, value: toBytes(value), revision };
  }

  private corrupt(what: string): RoamError {
    this.logger?.warn({ path: this.path, what }, 'store: integrity check failed');
    return new RoamError('STORE_CORRUPT', `${what} failed its integrity check in ${this.path}`);
  }

  private headRevision(): number {
    return this.stmt.headRevision.get() as number;
  }

  private dataVersion(): number {
    return this.db.pragma('data_version', { simple: true }) as number;
  }

  /** After a commit of ours: prune now and then, and let local watchers see it at once. */
  private wrote(revision: number): number {
    if (++this.writesSincePrune >= PRUNE_EVERY) this.prune();
    if (this.watchers.size > 0) {
      this.dirty = true;
      this.immediatePoll ??= setImmediate(() => {
        this.immediatePoll = undefined;
        this.poll();
      });
    }
    return revision;
  }

  /** Drops change-log rows beyond the newest `changeLogRows` or older than `changeLogMs`. */
  private prune(): void {
    this.writesSincePrune = 0;
    try {
      const head = this.headRevision();
      const { changes } = this.stmt.prune.run(head - this.changeLogRows, Date.now() - this.changeLogMs);
      if (changes > 0) this.logger?.debug({ path: this.path, pruned: changes }, 'store: pruned change log');
    } catch (err) {
      // Another process is writing: pruning can wait for the next turn.
      if (isBusy(err)) this.logger?.debug({ path: this.path }, 'store: change-log prune skipped (locked)');
      else this.logger?.warn({ path: this.path, err }, 'store: change-log prune failed');
    }
  }

  private unwatch(stream: WatchStream): void {
    this.watchers.delete(stream);
    this.cursors.delete(stream);
    if (this.watchers.size === 0) this.stopPolling();
  }

  private stopPolling(): void {
    if (this.pollTimer !== undefined) clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    if (this.immediatePoll !== undefined) clearImmediate(this.immediatePoll);
    this.immediatePoll = undefined;
  }

  /** Reads new change-log rows and hands each watcher the ones after its cursor under its prefix. */
  private poll(): void {
    if (this.closed || this.watchers.size === 0) return;
    try {
      const version = this.dataVersion();
      if (!this.dirty && version === this.lastDataVersion) return;
      this.dirty = false;
      this.lastDataVersion = version;
      const head = this.headRevision();
      if (this.cursors.size === 0) return;
      let from = Math.min(...this.cursors.values());
      let read = 0;
      while (from < head && read < POLL_MAX_ROWS) {
        const rows = this.stmt.changesAfter.all(from, head, POLL_BATCH) as ChangeRow[];
        if (rows.length === 0) break;
        for (const row of rows) this.dispatch(row);
        from = (rows[rows.length - 1] as ChangeRow).seq;
        read += rows.length;
      }
      if (from < head && read >= POLL_MAX_ROWS) {
        // More to read: continue on the next turn of the event loop, not in one long block.
        this.dirty = true;
        this.immediatePoll ??= setImmediate(() => {
          this.immediatePoll = undefined;
          this.poll();
        });
        return;
      }
      // Whatever a watcher has not reached by now was pruned before it could read it.
      for (const [w, cursor] of this.cursors) {
        if (cursor < head) this.fellBehind(w, cursor);
      }
    } catch (err) {
      if (isBusy(err)) {
        // Locked for a moment (a reader can be, rarely, in WAL mode): the next poll reads it all.
        this.dirty = true;
        return;
      }
      this.logger?.warn({ path: this.path, err }, 'store: watch poll failed');
      for (const w of [...this.watchers]) w.fail(err);
    }
  }

  private dispatch(row: ChangeRow): void {
    let event: StoreEvent | undefined;
    let shared = false;
    for (const [w, cursor] of this.cursors) {
      if (row.seq <= cursor) continue;
      if (row.seq !== cursor + 1) {
        this.fellBehind(w, cursor);
        continue;
      }
      this.cursors.set(w, row.seq);
      if (typeof row.key !== 'string' || !w.matches(row.key)) continue;
      event ??= this.changeEvent(row);
      if (event === undefined) {
        w.fail(this.corrupt(`change-log entry ${row.seq}`));
        continue;
      }
      // Each consumer gets its own bytes: the first the ones SQLite returned, the others copies.
      w.push(event.type === 'put' && shared ? { ...event, value: event.value.slice() } : event);
      shared = true;
    }
  }

  /** The event a change-log row describes, or undefined when the row fails its checks. */
  private changeEvent(row: ChangeRow): StoreEvent | undefined {
    const { key, op, value, crc, seq } = row;
    if (typeof key !== 'string' || typeof crc !== 'number') return undefined;
    if (op === OP_PUT && Buffer.isBuffer(value) && checksum(key, value) === crc) {
      return { type: 'put', key, value: toBytes(value), revision: seq };
    }
    if (op === OP_DELETE && value === null && checksum(key, new Uint8Array(0)) === crc) {
      return { type: 'delete', key, revision: seq };
    }
    return undefined;
  }

  private fellBehind(w: WatchStream, cursor: number): void {
    this.logger?.warn({ path: this.path, prefix: w.prefix, cursor }, 'store: watcher fell behind the change log');
    w.fail(new RoamError('STORE_LIMIT', 'watch fell behind the pruned change log; re-list and watch again'));
  }
}
