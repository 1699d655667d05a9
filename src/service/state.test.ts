import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { RoamError } from '../wire/index.js';
import { encodeStateValue, MAX_STATE_KEY_BYTES, StateStore, utf8ByteLength } from './state.js';

function rejects(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: unknown) => err instanceof RoamError && err.code === code);
}

/** Everything observable about a store, to show that a failed call changed nothing. */
function observe(s: StateStore): unknown {
  return {
    snapshot: s.snapshot().map(([k, v]) => [k, Uint8Array.from(v)]),
    size: s.size,
    sizeBytes: s.sizeBytes,
    generation: s.generation,
    exported: s.exported(),
  };
}

function recomputedBytes(s: StateStore): number {
  return s.snapshot().reduce((n, [k, v]) => n + new TextEncoder().encode(k).length + v.length, 0);
}

/** Keys without lone surrogates or `__proto__` (which msgpackr renames, as documented). */
const keyArb = fc.string({ unit: 'grapheme', maxLength: 12 }).filter((k) => k !== '__proto__');
const valueArb = fc.oneof(
  // Through JSON to turn -0 into 0: msgpack has no negative integer zero. Own `__proto__` keys
  // are renamed by msgpackr. Both are documented and tested separately below.
  fc
    .jsonValue()
    .filter((v) => !JSON.stringify(v).includes('"__proto__"'))
    .map((v) => JSON.parse(JSON.stringify(v)) as unknown),
  fc.uint8Array({ maxLength: 40 }),
  fc.integer().map((n) => new Date(n)),
  fc.array(fc.integer()).map((a) => new Set(a)),
  fc.array(fc.tuple(fc.integer(), fc.string())).map((a) => new Map(a)),
);

describe('StateStore values', () => {
  it('round-trips structured values: Map, Set, Date, typed arrays, bigint, undefined', () => {
    const s = new StateStore();
    const v = {
      m: new Map<unknown, unknown>([
        [1, 'one'],
        ['k', { deep: [1, 2, { x: null }] }],
      ]),
      set: new Set(['a', 'b']),
      when: new Date(1_700_000_000_123),
      bytes: new Uint8Array([1, 2, 3]),
      floats: new Float64Array([1.5, -2.25]),
      big: 2n ** 70n,
      nothing: undefined,
      list: [1, 'two', true, null],
      plain: { a: { b: 'c' } },
    };
    s.set('v', v);
    assert.deepEqual(s.get('v'), v);
    s.set('map', new Map([['only', 1]]));
    assert.ok(s.get('map') instanceof Map);
    s.set('obj', { only: 1 });
    const o = s.get<object>('obj');
    assert.ok(o !== undefined && !(o instanceof Map));
  });

  it('round-trips arbitrary values (property)', () => {
    fc.assert(
      fc.property(valueArb, (v) => {
        const s = new StateStore();
        s.set('k', v);
        assert.deepEqual(s.get('k'), v);
      }),
    );
  });

  it('stores -0 as 0 and renames an own __proto__ key, as documented, without polluting prototypes', () => {
    const s = new StateStore();
    s.set('z', -0);
    assert.ok(Object.is(s.get('z'), 0));
    s.set('p', JSON.parse('{"__proto__": {"polluted": true}, "a": 1}'));
    assert.deepEqual(s.get('p'), { __proto_: { polluted: true }, a: 1 });
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  it('get returns a fresh copy each time; mutating it changes nothing until set', () => {
    const s = new StateStore();
    s.set('o', { n: 1, list: [1], bytes: new Uint8Array([7]) });
    const a = s.get<{ n: number; list: number[]; bytes: Uint8Array }>('o')!;
    a.n = 2;
    a.list.push(2);
    a.bytes[0] = 9;
    assert.deepEqual(s.get('o'), { n: 1, list: [1], bytes: new Uint8Array([7]) });
    assert.notEqual(s.get('o'), s.get('o'));
    s.set('o', a);
    assert.deepEqual(s.get('o'), { n: 2, list: [1, 2], bytes: new Uint8Array([9]) });
  });

  it('refuses functions, symbols and cycles with INVALID_ARGUMENT and stays unchanged', () => {
    const s = new StateStore();
    s.set('keep', 1);
    const before = observe(s);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    for (const bad of [() => 1, { nested: { f() {} } }, Symbol('x'), { s: Symbol('y') }, cyclic]) {
      rejects(() => s.set('k', bad), 'INVALID_ARGUMENT');
      assert.deepEqual(observe(s), before);
    }
    // The shared encoder must be usable again after a failed encode.
    s.set('after', { a: 'x'.repeat(100), b: [1, 2] });
    assert.deepEqual(s.get('after'), { a: 'x'.repeat(100), b: [1, 2] });
  });

  it('has() tells a stored undefined from an absent key', () => {
    const s = new StateStore();
    s.set('u', undefined);
    assert.equal(s.has('u'), true);
    assert.equal(s.get('u'), undefined);
    assert.equal(s.has('nope'), false);
  });
});

describe('StateStore keys and limits', () => {
  it('accepts keys up to 1024 UTF-8 bytes, refuses longer ones and lone surrogates', () => {
    const s = new StateStore();
    s.set('a'.repeat(MAX_STATE_KEY_BYTES), 1);
    s.set('é'.repeat(MAX_STATE_KEY_BYTES / 2), 1);
    s.set('', 'empty key is fine');
    rejects(() => s.set('a'.repeat(MAX_STATE_KEY_BYTES + 1), 1), 'INVALID_ARGUMENT');
    rejects(() => s.set('é'.repeat(MAX_STATE_KEY_BYTES / 2 + 1), 1), 'INVALID_ARGUMENT');
    rejects(() => s.set('\ud800x', 1), 'INVALID_ARGUMENT');
    rejects(() => s.set(42 as unknown as string, 1), 'INVALID_ARGUMENT');
    assert.equal(s.size, 3);
  });

  it('utf8ByteLength matches TextEncoder', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme' }), (str) => {
        assert.equal(utf8ByteLength(str), new TextEncoder().encode(str).length);
      }),
    );
  });

  it('throws STATE_LIMIT when a set would pass maxBytes and leaves the store unchanged', () => {
    const s = new StateStore({ maxBytes: 100 });
    s.set('a', 'x'.repeat(50));
    const before = observe(s);
    rejects(() => s.set('b', 'y'.repeat(50)), 'STATE_LIMIT');
    assert.deepEqual(observe(s), before);
    // Replacing a value is costed net of what it replaces.
    s.set('a', 'z'.repeat(90));
    assert.ok(s.sizeBytes <= 100);
    rejects(() => s.set('a', 'z'.repeat(100)), 'STATE_LIMIT');
    s.delete('a');
    s.set('b', 'y'.repeat(50));
  });

  it('exactly maxBytes is allowed', () => {
    const bytes = 1 + encodeStateValue('x'.repeat(20)).length;
    const s = new StateStore({ maxBytes: bytes });
    s.set('k', 'x'.repeat(20));
    assert.equal(s.sizeBytes, bytes);
  });

  it('keeps sizeBytes, size and keys exact under random operations (property)', () => {
    const op = fc.oneof(
      fc.record({ t: fc.constant('set' as const), k: keyArb, v: valueArb }),
      fc.record({ t: fc.constant('del' as const), k: keyArb }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const s = new StateStore();
        const model = new Map<string, unknown>();
        for (const o of ops) {
          if (o.t === 'set') {
            s.set(o.k, o.v);
            model.set(o.k, o.v);
          } else assert.equal(s.delete(o.k), model.delete(o.k));
        }
        assert.equal(s.size, model.size);
        assert.deepEqual(s.keys().sort(), [...model.keys()].sort());
        assert.equal(s.sizeBytes, recomputedBytes(s));
        for (const [k, v] of model) assert.deepEqual(s.get(k), v);
      }),
    );
  });
});

describe('StateStore generations and deltas', () => {
  it('bumps the generation on every set and effective delete', () => {
    const s = new StateStore();
    assert.equal(s.generation, 0);
    s.set('a', 1);
    s.set('a', 1);
    assert.equal(s.generation, 2);
    assert.equal(s.delete('a'), true);
    assert.equal(s.generation, 3);
    assert.equal(s.delete('a'), false);
    assert.equal(s.generation, 3);
  });

  it('dirtySince reports sets and deletions after a generation', () => {
    const s = new StateStore();
    s.set('a', 1);
    s.set('b', 2);
    s.set('c', 3);
    const g = s.generation;
    s.set('b', 20);
    s.delete('c');
    s.set('d', 4);
    s.delete('a');
    s.set('a', 10); // deleted then re-set: reported as set only
    const d = s.dirtySince(g);
    assert.deepEqual(d.set.map(([k]) => k).sort(), ['a', 'b', 'd']);
    assert.deepEqual(d.deleted, ['c']);
    assert.deepEqual(s.dirtySince(s.generation), { set: [], deleted: [] });
    rejects(() => s.dirtySince(s.generation + 1), 'INVALID_ARGUMENT');
    rejects(() => s.dirtySince(-1), 'INVALID_ARGUMENT');
    rejects(() => s.dirtySince(1.5), 'INVALID_ARGUMENT');
  });

  it('pre-copy rounds reproduce the source exactly (property)', () => {
    // Model of migration: round 0 restores a snapshot; each later round applies the delta since
    // the previous round's generation, forgetting older tombstones as it goes.
    const op = fc.oneof(
      fc.record({ t: fc.constant('set' as const), k: fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f'), v: valueArb }),
      fc.record({ t: fc.constant('del' as const), k: fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f') }),
      fc.record({ t: fc.constant('round' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 80 }), fc.array(fc.constantFrom('a', 'b', 'c')), (ops, exported) => {
        const src = new StateStore();
        for (const k of exported) src.export(k);
        let dst = StateStore.restore(src.snapshot(), { exported: src.exported() });
        let last = src.generation;
        for (const o of ops) {
          if (o.t === 'set') src.set(o.k, o.v);
          else if (o.t === 'del') src.delete(o.k);
          else {
            dst.applyDelta(src.dirtySince(last));
            src.forgetBefore(last);
            last = src.generation;
          }
        }
        dst.applyDelta(src.dirtySince(last));
        assert.deepEqual(
          new Map(dst.snapshot().map(([k, v]) => [k, Uint8Array.from(v)])),
          new Map(src.snapshot().map(([k, v]) => [k, Uint8Array.from(v)])),
        );
        assert.equal(dst.sizeBytes, src.sizeBytes);
        assert.deepEqual(dst.exported(), src.exported());
        dst = StateStore.restore(src.snapshot());
        assert.equal(dst.generation, 0);
        assert.deepEqual(dst.dirtySince(0), { set: [], deleted: [] });
      }),
    );
  });

  it('forgetBefore compacts tombstones and refuses diffs from before it', () => {
    const s = new StateStore();
    s.set('a', 1);
    s.set('b', 1);
    s.delete('a'); // gen 3
    s.delete('b'); // gen 4
    assert.deepEqual(s.dirtySince(0).deleted, ['a', 'b']);
    s.forgetBefore(3);
    assert.equal(s.trackedSince, 3);
    assert.deepEqual(s.dirtySince(3).deleted, ['b']);
    rejects(() => s.dirtySince(2), 'INVALID_ARGUMENT');
    s.forgetBefore(1); // never lowers the floor
    assert.equal(s.trackedSince, 3);
    rejects(() => s.forgetBefore(s.generation + 1), 'INVALID_ARGUMENT');
  });

  it('bounds tombstones: overflow raises trackedSince instead of growing', () => {
    const s = new StateStore({ maxTombstones: 3 });
    for (let i = 0; i < 10; i++) s.set(`k${i}`, i);
    const g = s.generation;
    for (let i = 0; i < 5; i++) s.delete(`k${i}`);
    assert.ok(s.trackedSince > g);
    rejects(() => s.dirtySince(g), 'INVALID_ARGUMENT');
    assert.deepEqual(s.dirtySince(s.trackedSince).deleted, ['k2', 'k3', 'k4']);
  });
});

describe('StateStore snapshot, restore and applyDelta', () => {
  it('restore copies its input and validates every value', () => {
    const src = new StateStore();
    src.set('a', { x: 1 });
    src.set('b', [1, 2, 3]);
    const snap = src.snapshot();
    const r = StateStore.restore(snap);
    (snap[0] as [string, Uint8Array])[1].fill(0xc1);
    assert.deepEqual(r.get('a'), { x: 1 });
    assert.equal(r.sizeBytes, src.sizeBytes);

    rejects(() => StateStore.restore([['a', Uint8Array.of(0xc1)]]), 'CONTINUATION_CORRUPT');
    rejects(() => StateStore.restore([['a', Uint8Array.of(0x92, 0x01)]]), 'CONTINUATION_CORRUPT'); // truncated
    rejects(() => StateStore.restore([['a', Uint8Array.of(0x01, 0x01)]]), 'CONTINUATION_CORRUPT'); // trailing
    rejects(() => StateStore.restore([['a', Uint8Array.of()]]), 'CONTINUATION_CORRUPT');
    rejects(() => StateStore.restore([['a', 'x' as unknown as Uint8Array]]), 'CONTINUATION_CORRUPT');
    rejects(() => StateStore.restore([['a'] as unknown as [string, Uint8Array]]), 'CONTINUATION_CORRUPT');
    rejects(() => StateStore.restore({} as unknown as []), 'CONTINUATION_CORRUPT');
    rejects(
      () =>
        StateStore.restore([
          ['a', encodeStateValue(1)],
          ['a', encodeStateValue(2)],
        ]),
      'CONTINUATION_CORRUPT',
    );
    rejects(() => StateStore.restore([['x'.repeat(2000), encodeStateValue(1)]]), 'CONTINUATION_CORRUPT');
    rejects(() => StateStore.restore([['a', encodeStateValue('x'.repeat(100))]], { maxBytes: 50 }), 'STATE_LIMIT');
  });

  it('restore never throws anything but RoamError on random bytes (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        try {
          StateStore.restore([['k', bytes]]);
        } catch (err) {
          assert.ok(err instanceof RoamError && err.code === 'CONTINUATION_CORRUPT', String(err));
        }
      }),
    );
  });

  it('applyDelta is all or nothing', () => {
    const s = new StateStore({ maxBytes: 200 });
    s.set('a', 'x'.repeat(60));
    s.set('b', 'y'.repeat(60));
    const before = observe(s);
    rejects(
      () =>
        s.applyDelta({
          set: [
            ['c', encodeStateValue(1)],
            ['d', Uint8Array.of(0xc1)],
          ],
          deleted: ['a'],
        }),
      'CONTINUATION_CORRUPT',
    );
    assert.deepEqual(observe(s), before);
    rejects(() => s.applyDelta({ set: [['c', encodeStateValue('z'.repeat(100))]], deleted: [] }), 'STATE_LIMIT');
    assert.deepEqual(observe(s), before);
    rejects(() => s.applyDelta({ set: [], deleted: [7 as unknown as string] }), 'CONTINUATION_CORRUPT');
    rejects(() => s.applyDelta(null as unknown as { set: []; deleted: [] }), 'CONTINUATION_CORRUPT');
    assert.deepEqual(observe(s), before);
  });

  it('applyDelta judges the limit on the final size, not on intermediate writes', () => {
    const s = new StateStore({ maxBytes: 150 });
    s.set('a', 'x'.repeat(60));
    s.set('b', 'y'.repeat(60));
    // Growing a before shrinking b passes the limit midway but not at the end.
    s.applyDelta({
      set: [
        ['a', encodeStateValue('x'.repeat(100))],
        ['b', encodeStateValue('')],
      ],
      deleted: [],
    });
    assert.equal(s.get('a'), 'x'.repeat(100));
    assert.equal(s.sizeBytes, recomputedBytes(s));
    // A key both deleted and set ends up set.
    s.applyDelta({ set: [['b', encodeStateValue(5)]], deleted: ['b'] });
    assert.equal(s.get('b'), 5);
  });
});

describe('StateStore exports', () => {
  it('marks, lists and unmarks exported keys independently of presence', () => {
    const s = new StateStore({ maxExported: 2 });
    s.export('cursor');
    s.export('cursor');
    s.export('missing-yet');
    assert.deepEqual(s.exported(), ['cursor', 'missing-yet']);
    rejects(() => s.export('third'), 'STATE_LIMIT');
    rejects(() => s.export('x'.repeat(1025)), 'INVALID_ARGUMENT');
    s.set('cursor', 1);
    s.delete('cursor');
    assert.deepEqual(s.exported(), ['cursor', 'missing-yet']);
    assert.equal(s.unexport('cursor'), true);
    assert.equal(s.unexport('cursor'), false);
    assert.deepEqual(s.exported(), ['missing-yet']);
  });

  it('rejects bad options', () => {
    rejects(() => new StateStore({ maxBytes: -1 }), 'INVALID_ARGUMENT');
    rejects(() => new StateStore({ maxBytes: Number.NaN }), 'INVALID_ARGUMENT');
  });
});

describe('StateStore validation of foreign bytes', () => {
  it('rejects values hiding the never-used byte 0xc1 anywhere, and copes with large arrays', () => {
    // [1, 0xc1] and {a: 0xc1} (msgpackr decodes 0xc1 to a marker instead of failing)
    rejects(() => StateStore.restore([['k', Uint8Array.of(0x92, 0x01, 0xc1)]]), 'CONTINUATION_CORRUPT');
    rejects(() => StateStore.restore([['k', Uint8Array.of(0x81, 0xa1, 0x61, 0xc1)]]), 'CONTINUATION_CORRUPT');
    const big = StateStore.restore([['k', encodeStateValue(new Array(300_000).fill(1))]]);
    assert.equal(big.get<number[]>('k')?.length, 300_000);
  });
});
