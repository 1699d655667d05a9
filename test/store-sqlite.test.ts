import assert from 'node:assert/strict';
import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { openSqliteStore, type SqliteStoreOptions, type Store, type StoreEvent } from '../src/store/index.js';
import { rejectsWith, type StoreFixture, storeConformance, take } from './store-conformance.js';
import { type CasResult, casIncrement, checkValue, patternBytes } from './support/store-values.js';

const ROOT = resolve(import.meta.dirname, '..');
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

const dirs: string[] = [];
const children = new Set<ChildProcessByStdio<Writable | null, Readable, Readable>>();
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDb(): Promise<{ dir: string; path: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'roam-store-'));
  dirs.push(dir);
  return { dir, path: join(dir, 'directory.db') };
}

async function sqliteFixture(options: Partial<SqliteStoreOptions> = {}): Promise<StoreFixture & { path: string }> {
  const { dir, path } = await tempDb();
  const opened: Store[] = [];
  const openOne = async (): Promise<Store> => {
    const s = await openSqliteStore({ path, ...options });
    opened.push(s);
    return s;
  };
  const fixture: StoreFixture & { path: string } = {
    path,
    store: await openOne(),
    async reopen() {
      await fixture.store.close();
      fixture.store = await openOne();
      return fixture.store;
    },
    openAnother: openOne,
    async cleanup() {
      await Promise.all(opened.map((s) => s.close()));
      await rm(dir, { recursive: true, force: true });
    },
  };
  return fixture;
}

/** Runs `fn` with a raw better-sqlite3 connection to the file (another process's view). */
function raw<T>(path: string, fn: (db: Database.Database) => T): T {
  const db = new Database(path, { timeout: 5000 });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

function spawnChild(args: string[], stdin: 'pipe' | 'ignore') {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    cwd: ROOT,
    stdio: [stdin, 'pipe', 'pipe'],
  }) as ChildProcessByStdio<Writable | null, Readable, Readable>;
  children.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  const closed = once(child, 'close').then(() => children.delete(child));
  const lines = createInterface({ input: child.stdout });
  return { child, lines, closed, stderr: () => stderr };
}

storeConformance('SqliteStore', () => sqliteFixture());

describe('SqliteStore', { timeout: 30_000 }, () => {
  it('two processes and two in-process instances race CAS increments: exactly 20, revisions unique', async () => {
    const f = await sqliteFixture();
    try {
      const key = 'race.counter';
      const procs = [0, 1].map(() => spawnChild(['test/support/store-cas-child.ts', f.path, key, '5'], 'pipe'));
      const outputs = procs.map(
        (p) =>
          new Promise<string[]>((resolve) => {
            const got: string[] = [];
            p.lines.on('line', (l) => got.push(l));
            p.lines.on('close', () => resolve(got));
          }),
      );
      // Wait until both children have the store open, then start everyone at once.
      await Promise.all(
        procs.map(
          (p) =>
            new Promise<void>((resolve, reject) => {
              p.lines.once('line', (l) => (l === 'ready' ? resolve() : reject(new Error(l))));
              p.child.once('exit', (code) => reject(new Error(`child exited ${code}: ${p.stderr()}`)));
            }),
        ),
      );
      const ac = new AbortController();
      const watch = f.store.watch('race.', { signal: ac.signal })[Symbol.asyncIterator]();
      const other = await f.openAnother();
      const start = Date.now() + 100;
      for (const p of procs) p.child.stdin?.end(`go ${start}\n`);
      await new Promise((r) => setTimeout(r, start - Date.now()));
      const local = await Promise.all([casIncrement(f.store, key, 5), casIncrement(other, key, 5)]);
      await Promise.all(procs.map((p) => p.closed));
      for (const p of procs) assert.equal(p.child.exitCode, 0, p.stderr());
      const remote = (await Promise.all(outputs)).map((lines) => JSON.parse(lines.at(-1) ?? '{}') as CasResult);
      const results = [...local, ...remote];
      const all = results.flatMap((r) => r.wrote);
      const conflicts = results.map((r) => r.conflicts);
      assert.ok(
        conflicts.reduce((a, b) => a + b, 0) > 0,
        `the writers really raced: conflicts per writer ${conflicts.join(', ')}`,
      );
      assert.equal(all.length, 20);
      assert.equal(new Set(all.map((w) => w.revision)).size, 20, 'no two writers got the same revision');
      assert.deepEqual(
        all.map((w) => w.value).sort((a, b) => a - b),
        Array.from({ length: 20 }, (_, i) => i + 1),
      );
      const final = await f.store.get(key);
      assert.equal(dec(final?.value ?? new Uint8Array()), '20');
      // The watcher saw every increment, from every process, in commit order.
      const events = await take(watch, 20);
      assert.deepEqual(
        events.map((e) => (e.type === 'put' ? Number(dec(e.value)) : -1)),
        Array.from({ length: 20 }, (_, i) => i + 1),
      );
      const byValue = new Map(all.map((w) => [w.value, w.revision]));
      for (const e of events) if (e.type === 'put') assert.equal(e.revision, byValue.get(Number(dec(e.value))));
      ac.abort();
    } finally {
      await f.cleanup();
    }
  });

  it('crash safety: SIGKILL mid-write loses no reported commit and tears no value or blob', async () => {
    const { path } = await tempDb();
    const N = 150;
    const p = spawnChild(['test/support/store-crash-child.ts', path], 'ignore');
    let reported = -1;
    let killed = false;
    p.lines.on('line', (line) => {
      const m = /^committed (\d+)$/.exec(line);
      if (!m) return;
      reported = Math.max(reported, Number(m[1]));
      if (reported >= N && !killed) {
        killed = true;
        p.child.kill('SIGKILL');
      }
    });
    await p.closed;
    assert.equal(p.child.signalCode, 'SIGKILL', `child should have been killed, stderr: ${p.stderr()}`);
    assert.ok(reported >= N, `child reported ${reported} commits`);

    const store = await openSqliteStore({ path });
    try {
      const entries = await store.list('crash.v.');
      const seen = new Set<number>();
      for (const e of entries) {
        const r = checkValue(e.value);
        assert.ok('index' in r, `${e.key}: ${'error' in r ? r.error : ''}`);
        assert.equal(e.key, `crash.v.${r.index}`);
        seen.add(r.index);
      }
      for (let i = 0; i <= reported; i++) assert.ok(seen.has(i), `reported write ${i} is present`);
      const highest = Math.max(...seen);
      for (let i = 0; i <= highest; i += 8) {
        const blob = await store.getBlob(`crash.b.${i}`);
        if (blob === undefined) {
          assert.ok(i > reported, `reported blob ${i} is present`);
          continue;
        }
        const r = checkValue(blob);
        assert.ok('index' in r && r.index === i, `blob ${i}: ${'error' in r ? r.error : r.index}`);
      }
      const last = await store.get('crash.last');
      assert.ok(last);
      const r = checkValue(last.value);
      assert.ok('index' in r && r.index >= reported, 'the last reported CAS is present');
      // The store still works for writes after recovery.
      await store.put('crash.after', enc('ok'));
    } finally {
      await store.close();
    }
    assert.equal(
      raw(path, (db) => db.pragma('integrity_check', { simple: true })),
      'ok',
    );
  });

  it('tampered values and blobs read as STORE_CORRUPT; other keys stay readable', async () => {
    const f = await sqliteFixture();
    try {
      const { store, path } = f;
      await store.put('c.a', enc('alpha'));
      await store.put('c.b', enc('beta'));
      await store.put('c.t', enc('text'));
      await store.put('c.moved', enc('moved'));
      await store.putBlob('c.blob', patternBytes(100_000, 5));
      await store.putBlob('c.blob2', enc('fine'));
      raw(path, (db) => {
        const flip = (b: Buffer): Buffer => {
          const c = Buffer.from(b);
          c[c.length >> 1] = (c[c.length >> 1] ?? 0) ^ 0x01;
          return c;
        };
        const row = db.prepare("SELECT value FROM kv WHERE key = 'c.a'").get() as { value: Buffer };
        db.prepare("UPDATE kv SET value = ? WHERE key = 'c.a'").run(flip(row.value));
        db.prepare("UPDATE kv SET value = 'not a blob' WHERE key = 'c.t'").run();
        db.prepare("UPDATE kv SET key = 'c.renamed' WHERE key = 'c.moved'").run();
        const blob = db.prepare("SELECT bytes FROM blobs WHERE name = 'c.blob'").get() as { bytes: Buffer };
        db.prepare("UPDATE blobs SET bytes = ? WHERE name = 'c.blob'").run(flip(blob.bytes));
      });
      for (const phase of ['live', 'reopened']) {
        const s = phase === 'live' ? store : await f.reopen();
        await rejectsWith(() => s.get('c.a'), 'STORE_CORRUPT', 'flipped bit');
        await rejectsWith(() => s.get('c.t'), 'STORE_CORRUPT', 'wrong column type');
        await rejectsWith(() => s.get('c.renamed'), 'STORE_CORRUPT', 'value moved to another key');
        await rejectsWith(() => s.list('c.'), 'STORE_CORRUPT');
        await rejectsWith(() => s.getBlob('c.blob'), 'STORE_CORRUPT');
        assert.equal(dec((await s.get('c.b'))?.value ?? new Uint8Array()), 'beta');
        assert.equal(dec((await s.getBlob('c.blob2')) ?? new Uint8Array()), 'fine');
        // A corrupt value can be overwritten.
        await s.put('c.a', enc('fixed'));
        assert.equal(dec((await s.get('c.a'))?.value ?? new Uint8Array()), 'fixed');
        raw(path, (db) => db.prepare("UPDATE kv SET value = X'00' WHERE key = 'c.a'").run());
      }
    } finally {
      await f.cleanup();
    }
  });

  it('a tampered change-log entry fails only the watchers it concerns, with STORE_CORRUPT', async () => {
    const f = await sqliteFixture({ pollIntervalMs: 10 });
    try {
      const ac = new AbortController();
      const hit = f.store.watch('t.', { signal: ac.signal })[Symbol.asyncIterator]();
      const miss = f.store.watch('u.', { signal: ac.signal })[Symbol.asyncIterator]();
      raw(f.path, (db) =>
        db.transaction(() => {
          const seq = (db.prepare("UPDATE meta SET v = v + 1 WHERE k = 'revision' RETURNING v").get() as { v: number })
            .v;
          db.prepare('INSERT INTO changes (seq, key, op, value, crc, at) VALUES (?, ?, 1, ?, 12345, ?)').run(
            seq,
            't.evil',
            Buffer.from('evil'),
            Date.now(),
          );
        })(),
      );
      await rejectsWith(() => hit.next(), 'STORE_CORRUPT');
      await f.store.put('u.ok', enc('still here'));
      assert.deepEqual(
        (await take(miss, 1)).map((e) => e.key),
        ['u.ok'],
      );
      ac.abort();
    } finally {
      await f.cleanup();
    }
  });

  it('a file that is not a store database is STORE_CORRUPT; so is a newer schema', async () => {
    const { path } = await tempDb();
    await writeFile(path, patternBytes(16_384, 11));
    await rejectsWith(() => openSqliteStore({ path }), 'STORE_CORRUPT');
    const other = await tempDb();
    raw(other.path, (db) => db.pragma('user_version = 99'));
    await rejectsWith(() => openSqliteStore({ path: other.path }), 'STORE_CORRUPT');
  });

  it('a watcher that does not read is ended with STORE_LIMIT when its queue is full', async () => {
    const f = await sqliteFixture({ watchQueueLimit: 5 });
    try {
      const ac = new AbortController();
      const slow = f.store.watch('q.', { signal: ac.signal })[Symbol.asyncIterator]();
      const reader = f.store.watch('q.', { signal: ac.signal })[Symbol.asyncIterator]();
      // The reader takes each event as it comes (waiting on the event, not on a timer); `slow` never reads.
      const events: StoreEvent[] = [];
      for (let i = 0; i < 12; i++) {
        await f.store.put(`q.${i}`, enc(String(i)));
        const next = await reader.next();
        if (!next.done) events.push(next.value);
      }
      assert.equal(events.length, 12, 'a watcher that keeps reading is unaffected');
      await rejectsWith(() => slow.next(), 'STORE_LIMIT');
      assert.equal((await slow.next()).done, true, 'after the error the iterator is done');
      ac.abort();
    } finally {
      await f.cleanup();
    }
  });

  it('prunes the change log; a watcher behind the pruned part ends with STORE_LIMIT', async () => {
    const f = await sqliteFixture({ pollIntervalMs: 60_000, changeLogRows: 10 });
    try {
      const ac = new AbortController();
      const lagging = f.store.watch('g.', { signal: ac.signal })[Symbol.asyncIterator]();
      const writer = await f.openAnother();
      for (let i = 0; i < 150; i++) await writer.put(`g.${i % 3}`, enc(String(i)));
      const rows = raw(f.path, (db) => db.prepare('SELECT count(*) FROM changes').pluck().get() as number);
      assert.ok(rows <= 10 + 64, `change log holds ${rows} rows`);
      await f.store.put('g.wake', enc('x')); // its own write makes the lagging instance poll now
      await rejectsWith(() => lagging.next(), 'STORE_LIMIT');
      // A fresh watch works.
      const fresh = f.store.watch('g.', { signal: ac.signal })[Symbol.asyncIterator]();
      await f.store.put('g.new', enc('y'));
      assert.deepEqual(
        (await take(fresh, 1)).map((e) => e.key),
        ['g.new'],
      );
      ac.abort();
    } finally {
      await f.cleanup();
    }
  });

  it("a write that finds another process's write lock waits without blocking the event loop and commits in order", async () => {
    const f = await sqliteFixture();
    // Another connection (another process, as far as SQLite can tell) holds the write lock.
    const other = new Database(f.path, { timeout: 0 });
    let ticker: NodeJS.Timeout | undefined;
    try {
      await f.store.put('m.a', enc('0'));
      other.exec('BEGIN IMMEDIATE');
      // The lock stays taken for 40 ticks of a 5 ms timer on this thread: they only come if the
      // writes below do not block it. Then the other connection lets go.
      let ticks = 0;
      let held = (): void => {};
      const heldLongEnough = new Promise<void>((resolve) => {
        held = resolve;
      });
      ticker = setInterval(() => {
        if (++ticks === 40) held();
      }, 5);
      const p1 = f.store.put('m.a', enc('1'));
      const p2 = f.store.put('m.a', enc('2'));
      const p3 = f.store.compareAndSet('m.b', 0, enc('b'));
      // A read made after them sees them (reads wait behind this instance's waiting writes).
      const read = f.store.get('m.a');
      let settled = false;
      void Promise.allSettled([p1, p2, p3]).then(() => {
        settled = true;
      });
      await heldLongEnough;
      assert.equal(settled, false, 'the writes wait for the lock');
      other.exec('COMMIT');
      const [r1, r2, r3] = await Promise.all([p1, p2, p3]);
      assert.equal(dec((await read)?.value ?? new Uint8Array()), '2');
      assert.ok(r1 < r2 && r2 < r3, `revisions in the order the writes were made: ${r1}, ${r2}, ${r3}`);
      assert.equal(dec((await f.store.get('m.a'))?.value ?? new Uint8Array()), '2');
      assert.equal(dec((await f.store.get('m.b'))?.value ?? new Uint8Array()), 'b');
    } finally {
      clearInterval(ticker);
      if (other.inTransaction) other.exec('ROLLBACK');
      other.close();
      await f.cleanup();
    }
  });

  it('a write still locked out after busyTimeoutMs fails with UNAVAILABLE and changes nothing', async () => {
    const f = await sqliteFixture({ busyTimeoutMs: 150 });
    const other = new Database(f.path, { timeout: 0 });
    try {
      await f.store.put('m.a', enc('0'));
      other.exec('BEGIN IMMEDIATE');
      await rejectsWith(() => f.store.put('m.a', enc('1')), 'UNAVAILABLE');
      await rejectsWith(() => f.store.delete('m.a'), 'UNAVAILABLE');
      other.exec('ROLLBACK');
      assert.equal(dec((await f.store.get('m.a'))?.value ?? new Uint8Array()), '0');
      // The lock is free again: the next write goes through at once.
      await f.store.put('m.a', enc('2'));
      assert.equal(dec((await f.store.get('m.a'))?.value ?? new Uint8Array()), '2');
    } finally {
      if (other.inTransaction) other.exec('ROLLBACK');
      other.close();
      await f.cleanup();
    }
  });

  it('keeps the store in WAL mode', async () => {
    const f = await sqliteFixture();
    try {
      await f.store.put('m.k', enc('v'));
      raw(f.path, (db) => {
        assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
      });
      assert.equal((await f.store.list('')).length, 1);
    } finally {
      await f.cleanup();
    }
  });
});
