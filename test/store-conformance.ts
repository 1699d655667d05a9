/**
 * The conformance suite every {@link Store} implementation must pass. A backend's test file calls
 * {@link storeConformance} with a factory that opens a fresh, empty backing store per test.
 *
 * Prefixes used here end with `.` so that a subject-based backend (NATS KV: `prefix.>`) can
 * serve them natively.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Store, StoreEvent } from '../src/store/index.js';
import { RoamError } from '../src/wire/index.js';
import { casIncrement, patternBytes } from './support/store-values.js';

/** What a backend's factory hands the suite for one test. */
export interface StoreFixture {
  /** A store on a fresh, empty backing store. */
  store: Store;
  /** Closes `store` (if still open) and opens a new instance on the same backing store. */
  reopen(): Promise<Store>;
  /** Opens another, independent instance on the same backing store (as another process would). */
  openAnother(): Promise<Store>;
  /** Closes every instance this fixture opened and deletes the backing store. */
  cleanup(): Promise<void>;
  /** The value size limit the store was opened with; default 1 MiB. */
  maxValueBytes?: number;
  /** The blob size limit the store was opened with; default 256 MiB. */
  maxBlobBytes?: number;
}

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

/** Asserts that `fn` rejects (or throws) a RoamError with `code`. */
export async function rejectsWith(fn: () => Promise<unknown> | unknown, code: string, msg?: string): Promise<void> {
  await assert.rejects(
    async () => {
      await fn();
    },
    (err: unknown) => {
      assert.ok(err instanceof RoamError, `expected a RoamError ${code}, got ${String(err)}`);
      assert.equal(err.code, code, msg);
      return true;
    },
    msg,
  );
}

function sameBytes(a: Uint8Array | undefined, b: Uint8Array, msg?: string): void {
  assert.ok(a instanceof Uint8Array, msg ?? 'expected bytes');
  assert.equal(a.byteLength, b.byteLength, msg);
  assert.ok(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b), msg ?? 'bytes differ');
}

/** Reads `n` events from a watch, failing after `timeoutMs`. Leaves the iterator open. */
export async function take(it: AsyncIterator<StoreEvent>, n: number, timeoutMs = 5000): Promise<StoreEvent[]> {
  const out: StoreEvent[] = [];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${out.length}/${n} events`)), timeoutMs);
  });
  try {
    while (out.length < n) {
      const r = await Promise.race([it.next(), timeout]);
      if (r.done) throw new Error(`watch ended after ${out.length}/${n} events`);
      out.push(r.value);
    }
    return out;
  } finally {
    clearTimeout(timer);
  }
}

/** A watch event without its value bytes (decoded to text), for deepEqual. */
function show(e: StoreEvent): { type: string; key: string; revision: number; value?: string } {
  return e.type === 'put'
    ? { type: e.type, key: e.key, revision: e.revision, value: dec(e.value) }
    : { type: e.type, key: e.key, revision: e.revision };
}

const INVALID_KEYS = ['', 'a'.repeat(1025), 'a b', 'ä', 'a*', 'a>', 'a\n', '.a', 'a.', 'a..b', 'a:b'];

/**
 * Registers the conformance tests for one Store backend.
 * @param name shown in the test report.
 * @param open opens a fresh, empty backing store; called once per test.
 */
export function storeConformance(name: string, open: () => Promise<StoreFixture>): void {
  const withStore = async (fn: (f: StoreFixture) => Promise<void>): Promise<void> => {
    const f = await open();
    try {
      await fn(f);
    } finally {
      await f.cleanup();
    }
  };

  describe(`Store conformance: ${name}`, { timeout: 30_000 }, () => {
    it('get, put, list and delete', () =>
      withStore(async ({ store }) => {
        assert.equal(await store.get('a.missing'), undefined);
        const input = enc('one');
        const r1 = await store.put('a.1', input);
        assert.ok(Number.isSafeInteger(r1) && r1 > 0, 'revision is a positive integer');
        input[0] = 0; // the store must have taken its own copy
        const e = await store.get('a.1');
        assert.ok(e);
        assert.equal(e.key, 'a.1');
        assert.equal(e.revision, r1);
        assert.equal(dec(e.value), 'one');
        e.value[0] = 0; // and hand out copies
        assert.equal(dec((await store.get('a.1'))?.value ?? new Uint8Array()), 'one');

        await store.put('a.3', enc('three'));
        await store.put('a.2', enc('two'));
        await store.put('b.1', enc('other'));
        await store.put('a', enc('no dot'));
        await store.put('empty', new Uint8Array(0));
        assert.equal((await store.get('empty'))?.value.byteLength, 0);

        const listed = await store.list('a.');
        assert.deepEqual(
          listed.map((x) => [x.key, dec(x.value)]),
          [
            ['a.1', 'one'],
            ['a.2', 'two'],
            ['a.3', 'three'],
          ],
        );
        for (const x of listed) assert.equal(x.revision, (await store.get(x.key))?.revision);
        assert.deepEqual(
          (await store.list('')).map((x) => x.key),
          ['a', 'a.1', 'a.2', 'a.3', 'b.1', 'empty'],
        );
        assert.deepEqual(await store.list('zzz.'), []);

        assert.equal(await store.delete('a.2'), true);
        assert.equal(await store.delete('a.2'), false);
        assert.equal(await store.get('a.2'), undefined);
        assert.deepEqual(
          (await store.list('a.')).map((x) => x.key),
          ['a.1', 'a.3'],
        );
      }));

    it('list sorts by key in byte order, and keys may use the whole alphabet', () =>
      withStore(async ({ store }) => {
        const keys = ['s.b', 's.a', 's.B', 's.A', 's.0', 's.=', 's._', 's.-', 's./', 's.z.9', 's.a-b_c=d/e.f'];
        for (const k of keys) await store.put(k, enc(k));
        const sorted = [...keys].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        assert.deepEqual(
          (await store.list('s.')).map((x) => x.key),
          sorted,
        );
        for (const k of keys) assert.equal(dec((await store.get(k))?.value ?? new Uint8Array()), k);
      }));

    it('revisions grow strictly, across keys and through delete + re-create', () =>
      withStore(async ({ store }) => {
        const r1 = await store.put('r.a', enc('1'));
        const r2 = await store.put('r.a', enc('2'));
        const r3 = await store.put('r.b', enc('1'));
        assert.ok(r1 < r2 && r2 < r3, `${r1} < ${r2} < ${r3}`);
        assert.equal((await store.get('r.a'))?.revision, r2);
        assert.equal(await store.delete('r.a'), true);
        const r4 = await store.put('r.a', enc('3'));
        assert.ok(r4 > r3, 'a re-created key gets a larger revision than any it had');
        const r5 = await store.compareAndSet('r.b', r3, enc('2'));
        assert.ok(r5 > r4);
        await store.delete('r.b');
        const r6 = await store.compareAndSet('r.b', 0, enc('3'));
        assert.ok(r6 > r5, 'create-only after delete gets a larger revision');
      }));

    it('compareAndSet: success, conflict, create-only', () =>
      withStore(async ({ store }) => {
        const r1 = await store.compareAndSet('c.k', 0, enc('v1'));
        assert.ok(r1 > 0);
        await rejectsWith(
          () => store.compareAndSet('c.k', 0, enc('again')),
          'STORE_CONFLICT',
          'create-only on existing',
        );
        const r2 = await store.compareAndSet('c.k', r1, enc('v2'));
        assert.ok(r2 > r1);
        await rejectsWith(() => store.compareAndSet('c.k', r1, enc('stale')), 'STORE_CONFLICT', 'stale revision');
        await rejectsWith(() => store.compareAndSet('c.k', r2 + 1000, enc('future')), 'STORE_CONFLICT');
        await rejectsWith(() => store.compareAndSet('c.none', r2, enc('x')), 'STORE_CONFLICT', 'absent key, rev > 0');
        const e = await store.get('c.k');
        assert.equal(e?.revision, r2);
        assert.equal(dec(e?.value ?? new Uint8Array()), 'v2', 'a lost CAS changes nothing');
        assert.equal(await store.get('c.none'), undefined);
        await rejectsWith(() => store.compareAndSet('c.k', -1, enc('x')), 'INVALID_ARGUMENT');
        await rejectsWith(() => store.compareAndSet('c.k', 1.5, enc('x')), 'INVALID_ARGUMENT');
      }));

    it('compareAndSetMany: all or nothing, one revision per key', () =>
      withStore(async ({ store }) => {
        assert.deepEqual(await store.compareAndSetMany([]), []);
        const [a1, b1] = await store.compareAndSetMany([
          { key: 'm.a', expectedRevision: 0, value: enc('a1') },
          { key: 'm.b', expectedRevision: 0, value: enc('b1') },
        ]);
        assert.ok(a1 !== undefined && b1 !== undefined && b1 > a1);
        // One stale expectation sinks the whole batch.
        await rejectsWith(
          () =>
            store.compareAndSetMany([
              { key: 'm.a', expectedRevision: a1, value: enc('a2') },
              { key: 'm.b', expectedRevision: a1, value: enc('b2') },
            ]),
          'STORE_CONFLICT',
          'second key stale',
        );
        assert.equal(dec((await store.get('m.a'))?.value ?? new Uint8Array()), 'a1', 'first write rolled back');
        assert.equal((await store.get('m.a'))?.revision, a1);
        await rejectsWith(
          () =>
            store.compareAndSetMany([
              { key: 'm.a', expectedRevision: a1, value: enc('x') },
              { key: 'm.a', expectedRevision: a1, value: enc('y') },
            ]),
          'INVALID_ARGUMENT',
          'same key twice',
        );
        await rejectsWith(
          () => store.compareAndSetMany([{ key: 'bad key', expectedRevision: 0, value: enc('x') }]),
          'STORE_INVALID_KEY',
        );
        const [a2, b2] = await store.compareAndSetMany([
          { key: 'm.a', expectedRevision: a1, value: enc('a2') },
          { key: 'm.b', expectedRevision: b1, value: enc('b2') },
        ]);
        assert.equal((await store.get('m.a'))?.revision, a2);
        assert.equal(dec((await store.get('m.b'))?.value ?? new Uint8Array()), 'b2');
        assert.equal((await store.get('m.b'))?.revision, b2);
      }));

    it('delete with an expected revision', () =>
      withStore(async ({ store }) => {
        const r1 = await store.put('d.k', enc('v'));
        await rejectsWith(() => store.delete('d.k', r1 + 1), 'STORE_CONFLICT');
        await rejectsWith(() => store.delete('d.k', 0), 'STORE_CONFLICT', '0 means "must not exist"');
        assert.equal((await store.get('d.k'))?.revision, r1, 'a lost delete changes nothing');
        assert.equal(await store.delete('d.k', r1), true);
        assert.equal(await store.get('d.k'), undefined);
        assert.equal(await store.delete('d.k', r1), false, 'absent: false, whatever the expected revision');
        assert.equal(await store.delete('d.never'), false);
      }));

    it('rejects invalid keys, prefixes and blob names with STORE_INVALID_KEY', () =>
      withStore(async ({ store }) => {
        for (const k of INVALID_KEYS) {
          const m = `key ${JSON.stringify(k.slice(0, 20))}`;
          await rejectsWith(() => store.get(k), 'STORE_INVALID_KEY', m);
          await rejectsWith(() => store.put(k, enc('x')), 'STORE_INVALID_KEY', m);
          await rejectsWith(() => store.compareAndSet(k, 0, enc('x')), 'STORE_INVALID_KEY', m);
          await rejectsWith(() => store.delete(k), 'STORE_INVALID_KEY', m);
          await rejectsWith(() => store.putBlob(k, enc('x')), 'STORE_INVALID_KEY', m);
          await rejectsWith(() => store.getBlob(k), 'STORE_INVALID_KEY', m);
          await rejectsWith(() => store.deleteBlob(k), 'STORE_INVALID_KEY', m);
        }
        for (const p of ['a b', 'a*', 'ä', 'a>', 'x'.repeat(1025)]) {
          await rejectsWith(() => store.list(p), 'STORE_INVALID_KEY', `prefix ${p.slice(0, 20)}`);
          await rejectsWith(async () => {
            for await (const _ of store.watch(p)) break;
          }, 'STORE_INVALID_KEY');
        }
        assert.deepEqual(await store.list(''), [], 'nothing was written');
        const longest = `k${'x'.repeat(1023)}`;
        await store.put(longest, enc('ok'));
        assert.equal(dec((await store.get(longest))?.value ?? new Uint8Array()), 'ok');
      }));

    it('enforces the value and blob size limits with STORE_LIMIT', () =>
      withStore(async (f) => {
        const { store } = f;
        const maxValue = f.maxValueBytes ?? 1024 * 1024;
        const maxBlob = f.maxBlobBytes ?? 256 * 1024 * 1024;
        const big = patternBytes(maxValue, 7);
        const rev = await store.put('l.max', big);
        sameBytes((await store.get('l.max'))?.value, big, 'a value of exactly the limit round-trips');
        await rejectsWith(() => store.put('l.over', new Uint8Array(maxValue + 1)), 'STORE_LIMIT');
        await rejectsWith(() => store.compareAndSet('l.max', rev, new Uint8Array(maxValue + 1)), 'STORE_LIMIT');
        assert.equal(await store.get('l.over'), undefined);
        assert.equal((await store.get('l.max'))?.revision, rev);
        await rejectsWith(() => store.putBlob('l.blob', new Uint8Array(maxBlob + 1)), 'STORE_LIMIT');
        assert.equal(await store.getBlob('l.blob'), undefined);
      }));

    it('blobs round-trip (empty, small, 10 MiB), are replaced, deleted, and apart from keys', () =>
      withStore(async ({ store }) => {
        assert.equal(await store.getBlob('b.none'), undefined);
        assert.equal(await store.deleteBlob('b.none'), false);
        await store.putBlob('b.empty', new Uint8Array(0));
        assert.equal((await store.getBlob('b.empty'))?.byteLength, 0);
        const input = enc('small blob');
        await store.putBlob('b.small', input);
        input[0] = 0;
        assert.equal(dec((await store.getBlob('b.small')) ?? new Uint8Array()), 'small blob');
        const big = patternBytes(10 * 1024 * 1024, 42);
        await store.putBlob('b.big', big);
        sameBytes(await store.getBlob('b.big'), big, '10 MiB blob');
        // A view into a larger buffer stores only the viewed bytes.
        const backing = patternBytes(1000, 3);
        await store.putBlob('b.view', backing.subarray(100, 200));
        sameBytes(await store.getBlob('b.view'), backing.subarray(100, 200));
        await store.putBlob('b.small', enc('replaced'));
        assert.equal(dec((await store.getBlob('b.small')) ?? new Uint8Array()), 'replaced');
        // Blobs and keys are separate namespaces.
        assert.equal(await store.get('b.small'), undefined);
        assert.deepEqual(await store.list(''), []);
        await store.put('b.small', enc('a key'));
        assert.equal(dec((await store.getBlob('b.small')) ?? new Uint8Array()), 'replaced');
        assert.equal(await store.deleteBlob('b.big'), true);
        assert.equal(await store.getBlob('b.big'), undefined);
        assert.equal(await store.deleteBlob('b.big'), false);
      }));

    it('watch: puts and deletes under the prefix, in commit order, only after the call', () =>
      withStore(async ({ store }) => {
        await store.put('w.before', enc('old'));
        const ac = new AbortController();
        const it = store.watch('w.', { signal: ac.signal })[Symbol.asyncIterator]();
        const r1 = await store.put('w.a', enc('1'));
        await store.put('x.a', enc('other prefix'));
        await store.put('w', enc('not under "w."'));
        await store.put('wx.a', enc('not under "w."'));
        const r2 = await store.put('w.b', enc('2'));
        const r3 = await store.compareAndSet('w.a', r1, enc('3'));
        await store.delete('w.before');
        const d = await store.list('w.');
        assert.equal(d.length, 2);
        await store.delete('w.b');
        await rejectsWith(() => store.compareAndSet('w.a', r1, enc('lost')), 'STORE_CONFLICT');
        const r6 = await store.put('w.a.deep', enc('6'));
        const events = (await take(it, 6)).map(show);
        assert.equal(events[0]?.revision, r1);
        assert.equal(events[1]?.revision, r2);
        assert.equal(events[2]?.revision, r3);
        assert.equal(events[5]?.revision, r6);
        assert.deepEqual(
          events.map(({ revision: _, ...rest }) => rest),
          [
            { type: 'put', key: 'w.a', value: '1' },
            { type: 'put', key: 'w.b', value: '2' },
            { type: 'put', key: 'w.a', value: '3' },
            { type: 'delete', key: 'w.before' },
            { type: 'delete', key: 'w.b' },
            { type: 'put', key: 'w.a.deep', value: '6' },
          ],
        );
        for (let i = 1; i < events.length; i++) {
          assert.ok((events[i]?.revision ?? 0) > (events[i - 1]?.revision ?? 0), 'revisions grow in event order');
        }
        // A delete's revision is newer than the value it removed.
        assert.ok((events[4]?.revision ?? 0) > r2);
        ac.abort();
        assert.equal((await it.next()).done, true);
      }));

    it('watch: several watchers each get every event; prefix "" sees everything', () =>
      withStore(async ({ store }) => {
        const ac = new AbortController();
        const all = store.watch('', { signal: ac.signal })[Symbol.asyncIterator]();
        const m1 = store.watch('m.', { signal: ac.signal })[Symbol.asyncIterator]();
        const m2 = store.watch('m.', { signal: ac.signal })[Symbol.asyncIterator]();
        await store.put('m.1', enc('a'));
        await store.put('n.1', enc('b'));
        await store.put('m.2', enc('c'));
        assert.deepEqual(
          (await take(all, 3)).map((e) => e.key),
          ['m.1', 'n.1', 'm.2'],
        );
        const e1 = await take(m1, 2);
        const e2 = await take(m2, 2);
        assert.deepEqual(e1.map(show), e2.map(show));
        assert.deepEqual(
          e1.map((e) => e.key),
          ['m.1', 'm.2'],
        );
        ac.abort();
      }));

    it('watch sees writes made through another instance', () =>
      withStore(async ({ store, openAnother }) => {
        const other = await openAnother();
        const ac = new AbortController();
        const it = store.watch('o.', { signal: ac.signal })[Symbol.asyncIterator]();
        const r1 = await other.put('o.1', enc('from other'));
        await other.put('p.1', enc('other prefix'));
        const r2 = await store.put('o.2', enc('from self'));
        const r3 = await other.compareAndSet('o.1', r1, enc('cas'));
        await other.delete('o.2');
        const events = (await take(it, 4)).map(show);
        assert.deepEqual(events.slice(0, 3), [
          { type: 'put', key: 'o.1', revision: r1, value: 'from other' },
          { type: 'put', key: 'o.2', revision: r2, value: 'from self' },
          { type: 'put', key: 'o.1', revision: r3, value: 'cas' },
        ]);
        assert.equal(events[3]?.type, 'delete');
        assert.equal(events[3]?.key, 'o.2');
        // And the other way round: a watcher on the other instance sees this one's writes.
        const it2 = other.watch('o.', { signal: ac.signal })[Symbol.asyncIterator]();
        await store.put('o.3', enc('to other'));
        assert.deepEqual(
          (await take(it2, 1)).map((e) => e.key),
          ['o.3'],
        );
        ac.abort();
      }));

    it('watch ends on abort, on break, with an aborted signal, and on close', () =>
      withStore(async ({ store }) => {
        const ac = new AbortController();
        const it = store.watch('e.', { signal: ac.signal })[Symbol.asyncIterator]();
        const pending = it.next();
        setTimeout(() => ac.abort(), 20);
        assert.equal((await pending).done, true, 'a pending next() ends when the signal aborts');
        assert.equal((await it.next()).done, true);

        const aborted = AbortSignal.abort();
        for await (const _ of store.watch('e.', { signal: aborted })) assert.fail('no events after abort');

        let seen = 0;
        const loop = (async () => {
          for await (const e of store.watch('e.')) {
            seen++;
            if (e.key === 'e.stop') break;
          }
        })();
        await store.put('e.1', enc('1'));
        await store.put('e.stop', enc('2'));
        await loop;
        assert.equal(seen, 2);

        const onClose = store.watch('e.')[Symbol.asyncIterator]();
        const next = onClose.next();
        await store.close();
        assert.equal((await next).done, true, 'close ends a pending next()');
      }));

    it('concurrent CAS increments from two instances: exactly 20, no revision handed out twice', () =>
      withStore(async ({ store, openAnother }) => {
        const other = await openAnother();
        const key = 'race.counter';
        const results = await Promise.all([
          casIncrement(store, key, 5),
          casIncrement(other, key, 5),
          casIncrement(store, key, 5),
          casIncrement(other, key, 5),
        ]);
        const all = results.flatMap((r) => r.wrote);
        assert.equal(all.length, 20);
        assert.ok(
          results.reduce((n, r) => n + r.conflicts, 0) > 0,
          'the writers really raced (some compare-and-sets lost)',
        );
        const final = await store.get(key);
        assert.equal(dec(final?.value ?? new Uint8Array()), '20');
        assert.equal(new Set(all.map((w) => w.revision)).size, 20, 'no two writers got the same revision');
        assert.deepEqual(
          all.map((w) => w.value).sort((a, b) => a - b),
          Array.from({ length: 20 }, (_, i) => i + 1),
          'each count was written by exactly one writer',
        );
        assert.equal(final?.revision, Math.max(...all.map((w) => w.revision)));
      }));

    it('values, blobs and revisions persist across reopen', () =>
      withStore(async ({ store, reopen }) => {
        const r1 = await store.put('p.a', enc('alpha'));
        await store.put('p.b', enc('beta'));
        await store.delete('p.b');
        const big = patternBytes(200_000, 9);
        await store.putBlob('p.blob', big);
        const r2 = await store.put('p.c', enc('gamma'));
        const again = await reopen();
        const a = await again.get('p.a');
        assert.equal(a?.revision, r1);
        assert.equal(dec(a?.value ?? new Uint8Array()), 'alpha');
        assert.equal(await again.get('p.b'), undefined);
        sameBytes(await again.getBlob('p.blob'), big);
        assert.deepEqual(
          (await again.list('p.')).map((e) => e.key),
          ['p.a', 'p.c'],
        );
        const r3 = await again.put('p.b', enc('beta again'));
        assert.ok(r3 > r2, 'revisions keep growing after a reopen');
      }));

    it('after close(), every call throws STORE_CLOSED; close() is idempotent', () =>
      withStore(async ({ store }) => {
        await store.put('z.k', enc('v'));
        await store.close();
        await store.close();
        await rejectsWith(() => store.get('z.k'), 'STORE_CLOSED');
        await rejectsWith(() => store.put('z.k', enc('v')), 'STORE_CLOSED');
        await rejectsWith(() => store.compareAndSet('z.k', 1, enc('v')), 'STORE_CLOSED');
        await rejectsWith(() => store.delete('z.k'), 'STORE_CLOSED');
        await rejectsWith(() => store.list(''), 'STORE_CLOSED');
        await rejectsWith(async () => {
          for await (const _ of store.watch('')) break;
        }, 'STORE_CLOSED');
        await rejectsWith(() => store.putBlob('z.b', enc('v')), 'STORE_CLOSED');
        await rejectsWith(() => store.getBlob('z.b'), 'STORE_CLOSED');
        await rejectsWith(() => store.deleteBlob('z.b'), 'STORE_CLOSED');
      }));
  });
}
