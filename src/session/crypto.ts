import { KEY_BYTES, MAC_BYTES, NONCE_BYTES, SESSION_ID_BYTES } from '../wire/index.js';

/**
 * Session cryptography on WebCrypto, which Node (globalThis.crypto) and browsers share, so the
 * client bundle needs no Node module and no third-party library. X25519 for key agreement,
 * HKDF-SHA256 to derive the session key, HMAC-SHA256 for resume proofs and MOVE frames.
 * Confidentiality is TLS's job (wss://, tls://), not ours.
 */
const subtle = (): SubtleCrypto => globalThis.crypto.subtle;
const enc = new TextEncoder();

export function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  globalThis.crypto.getRandomValues(b);
  return b;
}
export const newSessionId = (): Uint8Array => randomBytes(SESSION_ID_BYTES);
export const newNonce = (): Uint8Array => randomBytes(NONCE_BYTES);

/**
 * The key-agreement and MAC primitives, behind an interface so Node can plug in `node:crypto`
 * (synchronous, ~10x cheaper per HMAC than WebCrypto's thread-pool hop) while browsers use
 * WebCrypto. Keys remember which provider made them, so call sites never pass it around.
 */
export interface SessionCrypto {
  readonly name: string;
  generateEphemeralKey(): Promise<EphemeralKey>;
  /** X25519 then HKDF-SHA256 to 32 raw key bytes. Throws on a low-order (all-zero) shared secret. */
  deriveKeyBytes(own: EphemeralKey, peerPublicKey: Uint8Array, salt: Uint8Array, info: Uint8Array): Promise<Uint8Array>;
  importSessionKey(raw: Uint8Array): Promise<SessionKey>;
  hmac(key: SessionKey, data: Uint8Array): Promise<Uint8Array>;
}

/** An ephemeral X25519 key pair for one handshake. */
export interface EphemeralKey {
  publicKey: Uint8Array;
  privateKey: unknown;
  provider: SessionCrypto;
}

/**
 * The session key: 32 bytes from HKDF, used as an HMAC-SHA256 key. `raw` is kept so the key can
 * travel inside a continuation (the Store is trusted with it, like a TLS session ticket key).
 */
export interface SessionKey {
  readonly raw: Uint8Array;
  readonly provider: SessionCrypto;
  /** Provider-specific prepared form (a WebCrypto CryptoKey). */
  readonly handle?: unknown;
}

/** WebCrypto implementation: runs in browsers and Node alike. */
export const webSessionCrypto: SessionCrypto = Object.freeze({
  name: 'webcrypto',
  async generateEphemeralKey(): Promise<EphemeralKey> {
    const pair = (await subtle().generateKey({ name: 'X25519' }, false, ['deriveBits'])) as CryptoKeyPair;
    const raw = new Uint8Array(await subtle().exportKey('raw', pair.publicKey));
    return { publicKey: raw, privateKey: pair.privateKey, provider: webSessionCrypto };
  },
  async deriveKeyBytes(own: EphemeralKey, peerPublicKey: Uint8Array, salt: Uint8Array, info: Uint8Array) {
    const peer = await subtle().importKey('raw', peerPublicKey as BufferSource, { name: 'X25519' }, false, []);
    const shared = await subtle().deriveBits({ name: 'X25519', public: peer }, own.privateKey as CryptoKey, 256);
    const ikm = await subtle().importKey('raw', shared, 'HKDF', false, ['deriveBits']);
    const bits = await subtle().deriveBits(
      { name: 'HKDF', hash: 'SHA-256', salt: salt as BufferSource, info: info as BufferSource },
      ikm,
      256,
    );
    return new Uint8Array(bits);
  },
  async importSessionKey(raw: Uint8Array): Promise<SessionKey> {
    const handle = await subtle().importKey('raw', raw as BufferSource, { name: 'HMAC', hash: 'SHA-256' }, false, [
      'sign',
    ]);
    return { raw: raw.slice(), provider: webSessionCrypto, handle };
  },
  async hmac(key: SessionKey, data: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await subtle().sign('HMAC', key.handle as CryptoKey, data as BufferSource));
  },
});

/** Generates an ephemeral key with `provider` (WebCrypto by default). */
export function generateEphemeralKey(provider: SessionCrypto = webSessionCrypto): Promise<EphemeralKey> {
  return provider.generateEphemeralKey();
}

/**
 * ECDH then HKDF(salt = sessionId, info = "roam/1 session" ‖ clientPub ‖ serverPub). Binding both
 * public keys into `info` ties the key to this exact exchange.
 */
export async function deriveSessionKey(
  own: EphemeralKey,
  peerPublicKey: Uint8Array,
  sessionId: Uint8Array,
  clientPublicKey: Uint8Array,
  serverPublicKey: Uint8Array,
): Promise<SessionKey> {
  if (peerPublicKey.length !== KEY_BYTES) throw new Error('peer public key has the wrong length');
  const info = concat(enc.encode('roam/1 session'), clientPublicKey, serverPublicKey);
  const raw = await own.provider.deriveKeyBytes(own, peerPublicKey, sessionId, info);
  return own.provider.importSessionKey(raw);
}

/** Rebuilds a session key from its raw bytes (from a continuation). */
export function importSessionKey(raw: Uint8Array, provider: SessionCrypto = webSessionCrypto): Promise<SessionKey> {
  if (raw.length !== 32) throw new Error('a session key is 32 bytes');
  return provider.importSessionKey(raw);
}

/** HMAC-SHA256 over a domain label and the given parts. */
export function mac(key: SessionKey, label: string, ...parts: Uint8Array[]): Promise<Uint8Array> {
  return key.provider.hmac(key, concat(enc.encode(label), ...parts));
}

/** Verifies a MAC in constant time. */
export async function verifyMac(
  key: SessionKey,
  tag: Uint8Array,
  label: string,
  ...parts: Uint8Array[]
): Promise<boolean> {
  if (tag.length !== MAC_BYTES) return false;
  return equalBytes(await mac(key, label, ...parts), tag);
}

/** Compares in time independent of where the inputs differ (for MACs and nonces). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= (a[i] as number) ^ (b[i] as number);
  return d === 0;
}

export function u64Bytes(n: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, Math.floor(n / 0x100000000));
  v.setUint32(4, n >>> 0);
  return b;
}

export function u32Bytes(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0);
  return b;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Two lowercase hex digits of each byte value: session ids are turned into map keys on every lookup. */
const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

export function toHex(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += HEX_BYTE[b[i] as number];
  return s;
}

export function fromHex(s: string): Uint8Array {
  if (!/^([0-9a-f]{2})*$/i.test(s)) throw new Error('not a hex string');
  const b = new Uint8Array(s.length / 2);
  for (let i = 0; i < b.length; i++) b[i] = Number.parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return b;
}

/** Labels that separate the MAC domains, so a proof for one purpose never verifies for another. */
export const Labels = {
  welcome: 'roam/1 welcome',
  resume: 'roam/1 resume',
  resumed: 'roam/1 resumed',
  move: 'roam/1 move',
  moveHint: 'roam/1 move hint',
} as const;
