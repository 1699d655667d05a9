import { createHmac, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, type KeyObject } from 'node:crypto';
import type { EphemeralKey, SessionCrypto, SessionKey } from '../session/index.js';

/**
 * Session crypto on `node:crypto`: the same X25519/HKDF/HMAC as the WebCrypto provider (the two
 * interoperate byte for byte), but synchronous — a resume handshake costs microseconds, not a
 * thread-pool round trip per operation.
 */
export const nodeSessionCrypto: SessionCrypto = Object.freeze({
  name: 'node',
  async generateEphemeralKey(): Promise<EphemeralKey> {
    const { publicKey, privateKey } = generateKeyPairSync('x25519');
    const jwk = publicKey.export({ format: 'jwk' });
    return {
      publicKey: new Uint8Array(Buffer.from(jwk.x as string, 'base64url')),
      privateKey,
      provider: nodeSessionCrypto,
    };
  },
  async deriveKeyBytes(own: EphemeralKey, peerPublicKey: Uint8Array, salt: Uint8Array, info: Uint8Array) {
    const peer = createPublicKey({
      key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(peerPublicKey).toString('base64url') },
      format: 'jwk',
    });
    const shared = diffieHellman({ privateKey: own.privateKey as KeyObject, publicKey: peer });
    // A low-order peer key yields an all-zero secret (RFC 7748 §6.1); WebCrypto refuses it too.
    if (shared.every((b) => b === 0)) throw new Error('X25519 produced an all-zero shared secret');
    return new Uint8Array(hkdfSync('sha256', shared, salt, info, 32));
  },
  async importSessionKey(raw: Uint8Array): Promise<SessionKey> {
    return { raw: raw.slice(), provider: nodeSessionCrypto };
  },
  async hmac(key: SessionKey, data: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(createHmac('sha256', key.raw).update(data).digest());
  },
});
