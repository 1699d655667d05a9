import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import { splitRound } from './precopy.js';
import type { InstanceDelta } from './protocol.js';

const delta = (inst: string, sizes: number[], opts: { full?: boolean; deleted?: string[] } = {}): InstanceDelta => ({
  inst,
  key: undefined,
  instance: {
    set: sizes.map((n, i) => [`k${i}`, new Uint8Array(n)] as [string, Uint8Array]),
    deleted: opts.deleted ?? [],
    full: opts.full ?? false,
  },
  sessions: [['s1', { set: [['nick', new Uint8Array(3)]], deleted: [], full: true }]],
  mark: { inst: 1, sessions: {} },
  bytes: 0,
});

it('splitRound: parts stay near the limit and reassemble into the same round', () => {
  fc.assert(
    fc.property(
      fc.array(fc.array(fc.integer({ min: 0, max: 3000 }), { maxLength: 60 }), { minLength: 1, maxLength: 4 }),
      fc.integer({ min: 512, max: 20_000 }),
      fc.boolean(),
      (insts, limit, full) => {
        const deltas = insts.map((sizes, i) => delta(`i${i}`, sizes, { full, deleted: ['gone'] }));
        const parts = splitRound(deltas, limit);
        for (const p of parts) {
          const bytes = p.reduce((a, d) => a + d.instance.set.reduce((b, [k, v]) => b + k.length + v.byteLength, 0), 0);
          // A part passes the limit by at most one value (a value is never split).
          assert.ok(bytes < limit + 3010, `part of ${bytes} B for limit ${limit}`);
        }
        for (const d of deltas) {
          const pieces = parts.flat().filter((x) => x.inst === d.inst);
          assert.deepEqual(
            pieces.flatMap((x) => x.instance.set.map(([k]) => k)),
            d.instance.set.map(([k]) => k),
          );
          assert.equal(pieces.filter((x) => x.instance.full).length, full ? 1 : 0, 'full only on the first piece');
          assert.equal(pieces[0]?.instance.full, full);
          assert.deepEqual(
            pieces.flatMap((x) => x.instance.deleted),
            ['gone'],
            'deletions once, first',
          );
          assert.equal(pieces.flatMap((x) => x.sessions).length, 1, 'sessions once');
          assert.equal(pieces.at(-1)?.sessions.length, 1, 'sessions with the last piece');
        }
      },
    ),
  );
});
