import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import { fromHex, toHex } from './crypto.js';

it('toHex writes two lowercase digits per byte, as Buffer does, and fromHex reads them back', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      const hex = toHex(bytes);
      assert.equal(hex, Buffer.from(bytes).toString('hex'));
      assert.deepEqual(fromHex(hex), bytes);
    }),
  );
});

it('fromHex refuses what is not an even run of hex digits', () => {
  for (const bad of ['0', 'zz', '0g', ' 00', '00 ']) assert.throws(() => fromHex(bad), /not a hex string/);
});
