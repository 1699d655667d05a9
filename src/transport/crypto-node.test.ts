import assert from 'node:assert/strict';
import { it } from 'node:test';
import {
  deriveSessionKey,
  generateEphemeralKey,
  Labels,
  mac,
  newSessionId,
  type SessionCrypto,
  verifyMac,
  webSessionCrypto,
} from '../session/index.js';
import { nodeSessionCrypto } from './crypto-node.js';

const pairs: Array<[SessionCrypto, SessionCrypto]> = [
  [nodeSessionCrypto, webSessionCrypto],
  [webSessionCrypto, nodeSessionCrypto],
  [nodeSessionCrypto, nodeSessionCrypto],
];

for (const [client, server] of pairs) {
  it(`a ${client.name} client and a ${server.name} server derive the same session key`, async () => {
    const c = await generateEphemeralKey(client);
    const s = await generateEphemeralKey(server);
    const id = newSessionId();
    const kc = await deriveSessionKey(c, s.publicKey, id, c.publicKey, s.publicKey);
    const ks = await deriveSessionKey(s, c.publicKey, id, c.publicKey, s.publicKey);
    assert.deepEqual(kc.raw, ks.raw);
    const tag = await mac(kc, Labels.resume, id);
    assert.ok(await verifyMac(ks, tag, Labels.resume, id));
    assert.ok(!(await verifyMac(ks, tag, Labels.move, id)), 'labels separate MAC domains');
    tag[0] = (tag[0] as number) ^ 1;
    assert.ok(!(await verifyMac(ks, tag, Labels.resume, id)));
  });
}

it('both providers refuse a low-order peer key', async () => {
  for (const p of [nodeSessionCrypto, webSessionCrypto]) {
    const own = await generateEphemeralKey(p);
    await assert.rejects(deriveSessionKey(own, new Uint8Array(32), newSessionId(), own.publicKey, new Uint8Array(32)));
  }
});
