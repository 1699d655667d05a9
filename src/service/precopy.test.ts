import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import { pack, unpack } from 'msgpackr';
import type { RoamError } from '../wire/index.js';
import { packOwned, packRoundFrame, roundFrameHeader, splitRound, unpackRoundFrame } from './precopy.js';
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

it('round frames: header and part survive the trip; anything else is not a frame', () => {
  fc.assert(
    fc.property(
      fc.array(fc.array(fc.integer({ min: 0, max: 5000 }), { maxLength: 40 }), { minLength: 1, maxLength: 3 }),
      fc.nat({ max: 0xffffffff }),
      fc.boolean(),
      (insts, n, last) => {
        const part = insts.map((sizes, i) => delta(`i${i}`, sizes));
        const frame = packRoundFrame(part, n, last);
        assert.equal(frame.byteOffset, 0);
        assert.equal(frame.byteLength, frame.buffer.byteLength, 'a buffer of its own, to transfer');
        assert.deepEqual(roundFrameHeader(frame), { n, last });
        const back = unpackRoundFrame(frame);
        assert.deepEqual(
          back.map((d) => d.instance.set.map(([k, v]) => [k, v.byteLength])),
          part.map((d) => d.instance.set.map(([k, v]) => [k, v.byteLength])),
        );
      },
    ),
  );
  // A link message (msgpack map), a short frame, unknown flags: not frames.
  assert.equal(roundFrameHeader(pack({ t: 'ack', n: 0 })), undefined);
  assert.equal(roundFrameHeader(new Uint8Array([0xc1, 1, 0, 0, 0])), undefined);
  assert.equal(roundFrameHeader(new Uint8Array([0xc1, 2, 0, 0, 0, 0, 0x90])), undefined);
  for (const bad of [new Uint8Array([0xc1, 1, 0, 0, 0, 0]), new Uint8Array([0xc1, 1, 0, 0, 0, 0, 0xc1]), pack([1])]) {
    assert.throws(
      () => unpackRoundFrame(bad),
      (e: RoamError) => e.code === 'CONTINUATION_CORRUPT',
    );
  }
});

it('packOwned: each result owns its bytes, also past the scratch buffer and after later packs', () => {
  const small = packOwned([1, 'two', new Uint8Array([3])]);
  const big = packOwned({ v: new Uint8Array(3 * 1024 * 1024).fill(7) });
  const after = packOwned({ v: new Uint8Array(10).fill(9) });
  assert.deepEqual(unpack(small), [1, 'two', new Uint8Array([3])]);
  assert.equal(
    (unpack(big) as { v: Uint8Array }).v.every((b) => b === 7),
    true,
  );
  assert.deepEqual((unpack(after) as { v: Uint8Array }).v, new Uint8Array(10).fill(9));
  for (const b of [small, big, after]) assert.equal(b.byteLength, b.buffer.byteLength);
});
