import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import { redirectTarget } from './session.js';

it('redirectTarget follows an INSTANCE_ELSEWHERE URL only when it keeps or raises the transport security', () => {
  assert.equal(redirectTarget('ws://a:1', 'ws://b:2'), 'ws://b:2');
  assert.equal(redirectTarget('ws://a:1', 'wss://b:2/x'), 'wss://b:2/x');
  assert.equal(redirectTarget('wss://a:1', 'wss://b:2'), 'wss://b:2');
  assert.equal(redirectTarget('tcp://a:1', 'tls://b:2'), 'tls://b:2');
  assert.equal(redirectTarget('wss://a:1', 'ws://b:2'), undefined, 'no downgrade to plain text');
  assert.equal(redirectTarget('tls://a:1', 'tcp://b:2'), undefined, 'no downgrade to plain text');
  assert.equal(redirectTarget('ws://a:1', 'tcp://b:2'), undefined, 'no change of transport');
  assert.equal(redirectTarget('ws://a:1', 'http://b:2'), undefined);
  assert.equal(redirectTarget('ws://a:1', 'javascript:alert(1)'), undefined);
  assert.equal(redirectTarget('ws://a:1', ''), undefined);
  assert.equal(redirectTarget('ws://a:1', 'not a url'), undefined);
});

it('redirectTarget never throws and never returns anything but its input or undefined (hostile messages)', () => {
  fc.assert(
    fc.property(fc.oneof(fc.string(), fc.webUrl()), (to) => {
      const r = redirectTarget('ws://127.0.0.1:7071', to);
      assert.ok(r === undefined || r === to);
      if (r !== undefined) assert.match(r, /^wss?:/i);
    }),
  );
});
