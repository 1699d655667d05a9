import {
  type Frame,
  FrameType,
  type HelloFrame,
  NONCE_BYTES,
  ProtocolError,
  type ResumeFrame,
  RoamError,
} from '../wire/index.js';
import type { Clock } from './clock.js';
import type { FramedConnection } from './connection.js';
import {
  deriveSessionKey,
  equalBytes,
  generateEphemeralKey,
  Labels,
  mac,
  newNonce,
  newSessionId,
  type SessionCrypto,
  type SessionKey,
  u32Bytes,
  u64Bytes,
  verifyMac,
  webSessionCrypto,
} from './crypto.js';

const enc = new TextEncoder();

/** What a client learns from a successful HELLO/WELCOME exchange. */
export interface Established {
  sessionId: Uint8Array;
  key: SessionKey;
  heartbeatMs: number;
  sessionTtlMs: number;
}

/** Turns an ERROR/CLOSE frame received during a handshake into a typed error. */
function refused(f: Frame): RoamError | undefined {
  if (f.type === FrameType.ERROR) return new RoamError(f.code, f.message);
  if (f.type === FrameType.CLOSE) return new RoamError(f.code, f.reason || 'closed by server');
  return undefined;
}

/** Waits for a frame of one of `types`, skipping CHALLENGE frames nobody asked for. */
async function expect<T extends Frame['type']>(
  conn: FramedConnection,
  clock: Clock,
  timeoutMs: number,
  types: readonly T[],
): Promise<Extract<Frame, { type: T }>> {
  for (;;) {
    const f = await conn.nextFrame(timeoutMs, clock);
    const err = refused(f);
    if (err) throw err;
    if ((types as readonly number[]).includes(f.type)) return f as Extract<Frame, { type: T }>;
    if (f.type === FrameType.CHALLENGE) continue;
    throw new ProtocolError('UNEXPECTED_FRAME', `handshake expected frame ${types.join('/')}, got ${f.type}`);
  }
}

/** Client: opens a new session. HELLO goes out at once, without waiting for the server's CHALLENGE. */
export async function clientHello(
  conn: FramedConnection,
  clock: Clock,
  timeoutMs: number,
  service: string,
  key: string | undefined,
  crypto: SessionCrypto = webSessionCrypto,
  opts: { prepares?: boolean } = {},
): Promise<Established> {
  const eph = await generateEphemeralKey(crypto);
  conn.writeFrame({
    type: FrameType.HELLO,
    publicKey: eph.publicKey,
    service,
    key,
    ...(opts.prepares ? { prepares: true as const } : {}),
  });
  const w = await expect(conn, clock, timeoutMs, [FrameType.WELCOME]);
  let sessionKey: SessionKey;
  try {
    sessionKey = await deriveSessionKey(eph, w.publicKey, w.sessionId, eph.publicKey, w.publicKey);
  } catch (cause) {
    throw new RoamError('HANDSHAKE_FAILED', 'server public key rejected', { cause });
  }
  if (!(await verifyMac(sessionKey, w.confirm, Labels.welcome, w.sessionId))) {
    throw new RoamError('HANDSHAKE_FAILED', 'server did not prove it derived the session key');
  }
  return { sessionId: w.sessionId, key: sessionKey, heartbeatMs: w.heartbeatMs, sessionTtlMs: w.sessionTtlMs };
}

/**
 * Client: proves possession of the session key on a new transport. Answers the server's fresh
 * nonce, and checks the server's own proof over our nonce so an impostor cannot fake RESUMED.
 * Returns the server's last received seq.
 *
 * `challenge` is a nonce already received: a CHALLENGE that arrived in-band on an established
 * transport (a gateway re-splicing the session to another host). Without it, the CHALLENGE is
 * awaited first, as on every new transport.
 */
export async function clientResume(
  conn: FramedConnection,
  clock: Clock,
  timeoutMs: number,
  sessionId: Uint8Array,
  key: SessionKey,
  lastSeq: number,
  challenge?: Uint8Array,
  opts: { prepares?: boolean } = {},
): Promise<number> {
  const nonce = challenge ?? (await expect(conn, clock, timeoutMs, [FrameType.CHALLENGE])).nonce;
  const clientNonce = await writeResume(conn, sessionId, key, lastSeq, nonce, opts.prepares ? { prepares: true } : {});
  const r = await expect(conn, clock, timeoutMs, [FrameType.RESUMED]);
  await checkResumed(key, clientNonce, sessionId, r);
  return r.lastSeq;
}

/**
 * Client: answers a prepared CHALLENGE (a gateway announcing a move) with a RESUME flagged
 * `prepared`, while the session carries on over the same transport. The gateway holds it and
 * sends it to the destination at the move; the RESUMED comes back in-band then, to be checked
 * with {@link checkResumed} against the returned client nonce.
 */
export async function prepareResume(
  conn: FramedConnection,
  sessionId: Uint8Array,
  key: SessionKey,
  lastSeq: number,
  nonce: Uint8Array,
): Promise<Uint8Array> {
  return writeResume(conn, sessionId, key, lastSeq, nonce, { prepares: true, prepared: true });
}

/** Writes a RESUME answering `nonce` with the given flags; returns the client nonce its RESUMED must prove. */
async function writeResume(
  conn: FramedConnection,
  sessionId: Uint8Array,
  key: SessionKey,
  lastSeq: number,
  nonce: Uint8Array,
  flags: Pick<ResumeFrame, 'prepares' | 'prepared'>,
): Promise<Uint8Array> {
  const clientNonce = newNonce();
  const proof = await mac(key, Labels.resume, nonce, sessionId, u64Bytes(lastSeq));
  conn.writeFrame({ type: FrameType.RESUME, sessionId, nonce, lastSeq, clientNonce, mac: proof, ...flags });
  return clientNonce;
}

/** Client: the server's RESUMED must prove the session key over our nonce, or it is an impostor. */
export async function checkResumed(
  key: SessionKey,
  clientNonce: Uint8Array,
  sessionId: Uint8Array,
  r: Extract<Frame, { type: typeof FrameType.RESUMED }>,
): Promise<void> {
  if (!(await verifyMac(key, r.mac, Labels.resumed, clientNonce, sessionId, u64Bytes(r.lastSeq)))) {
    throw new RoamError('HANDSHAKE_FAILED', 'server could not prove it holds the session key');
  }
}

/** Server: the first frame of a new transport after our CHALLENGE. */
export type Opening =
  | { kind: 'hello'; hello: HelloFrame }
  | { kind: 'resume'; resume: ResumeFrame; challenge: Uint8Array; challengedAt: number };

/**
 * A challenge some trusted party issued on the server's behalf: a gateway sent CHALLENGE(nonce)
 * to the client itself, before it knew which host to route to. The issuer guarantees the nonce
 * is fresh and is handed to one server once.
 */
export interface IssuedChallenge {
  nonce: Uint8Array;
  /** When the server learned of it, on its own clock; the challenge TTL runs from here. */
  issuedAt: number;
}

/** Server: sends a fresh CHALLENGE and waits for HELLO or RESUME. */
export async function serverOpen(conn: FramedConnection, clock: Clock, timeoutMs: number): Promise<Opening> {
  const nonce = newNonce();
  const issuedAt = clock.now();
  conn.writeFrame({ type: FrameType.CHALLENGE, nonce });
  return serverOpenIssued(conn, clock, timeoutMs, { nonce, issuedAt });
}

/**
 * Server: like {@link serverOpen}, for a transport whose CHALLENGE was already sent by someone
 * else (a gateway): sends nothing, waits for HELLO or a RESUME answering `issued.nonce`.
 */
export async function serverOpenIssued(
  conn: FramedConnection,
  clock: Clock,
  timeoutMs: number,
  issued: IssuedChallenge,
): Promise<Opening> {
  if (issued.nonce.length !== NONCE_BYTES) {
    throw new RoamError('INVALID_ARGUMENT', `a pre-issued challenge must be ${NONCE_BYTES} bytes`);
  }
  const f = await conn.nextFrame(timeoutMs, clock);
  if (f.type === FrameType.HELLO) return { kind: 'hello', hello: f };
  if (f.type === FrameType.RESUME) {
    return { kind: 'resume', resume: f, challenge: issued.nonce, challengedAt: issued.issuedAt };
  }
  throw new ProtocolError('UNEXPECTED_FRAME', `expected HELLO or RESUME, got frame type ${f.type}`);
}

/** Server: answers a HELLO. Sends WELCOME; returns the new session's id and key. */
export async function serverWelcome(
  conn: FramedConnection,
  hello: HelloFrame,
  params: { heartbeatMs: number; sessionTtlMs: number },
  crypto: SessionCrypto = webSessionCrypto,
): Promise<{ sessionId: Uint8Array; key: SessionKey }> {
  const eph = await generateEphemeralKey(crypto);
  const sessionId = newSessionId();
  let key: SessionKey;
  try {
    key = await deriveSessionKey(eph, hello.publicKey, sessionId, hello.publicKey, eph.publicKey);
  } catch (cause) {
    throw new RoamError('HANDSHAKE_FAILED', 'client public key rejected', { cause });
  }
  const confirm = await mac(key, Labels.welcome, sessionId);
  conn.writeFrame({
    type: FrameType.WELCOME,
    sessionId,
    publicKey: eph.publicKey,
    heartbeatMs: params.heartbeatMs,
    sessionTtlMs: Math.min(params.sessionTtlMs, 0xffffffff),
    confirm,
  });
  return { sessionId, key };
}

/**
 * Server: checks a RESUME against the challenge issued on this transport. Order matters: the
 * cheap replay and staleness checks come first, the MAC last, and none of them touches the session.
 * Throws RoamError with RESUME_REPLAYED, RESUME_STALE or RESUME_PROOF_INVALID.
 */
export async function verifyResume(
  opening: Extract<Opening, { kind: 'resume' }>,
  key: SessionKey,
  now: number,
  challengeTtlMs: number,
): Promise<void> {
  const { resume, challenge, challengedAt } = opening;
  if (!equalBytes(resume.nonce, challenge)) {
    throw new RoamError('RESUME_REPLAYED', 'resume proof answers a challenge not issued on this transport');
  }
  if (now - challengedAt > challengeTtlMs) {
    throw new RoamError('RESUME_STALE', `challenge older than ${challengeTtlMs} ms`);
  }
  if (!(await verifyMac(key, resume.mac, Labels.resume, resume.nonce, resume.sessionId, u64Bytes(resume.lastSeq)))) {
    throw new RoamError('RESUME_PROOF_INVALID', 'resume proof does not verify');
  }
}

/** Server: confirms a verified resume, proving key possession over the client's nonce. */
export async function serverResumed(
  conn: FramedConnection,
  key: SessionKey,
  resume: ResumeFrame,
  lastReceivedSeq: number,
): Promise<void> {
  const proof = await mac(key, Labels.resumed, resume.clientNonce, resume.sessionId, u64Bytes(lastReceivedSeq));
  conn.writeFrame({ type: FrameType.RESUMED, lastSeq: lastReceivedSeq, mac: proof });
}

/**
 * MAC for a MOVE frame. The moveId must increase, so a captured MOVE cannot be replayed; only a
 * repeat of the last MOVE (same id, same endpoint) is taken again.
 */
export function moveMac(
  key: SessionKey,
  sessionId: Uint8Array,
  moveId: number,
  url: string,
  token: Uint8Array,
  hint = false,
): Promise<Uint8Array> {
  return mac(key, hint ? Labels.moveHint : Labels.move, ...moveParts(sessionId, moveId, url, token));
}

/** Checks a MOVE's proof; a hint's proof has its own label, so neither verifies as the other. */
export function verifyMove(
  key: SessionKey,
  sessionId: Uint8Array,
  f: Extract<Frame, { type: typeof FrameType.MOVE }>,
): Promise<boolean> {
  const label = f.hint ? Labels.moveHint : Labels.move;
  return verifyMac(key, f.mac, label, ...moveParts(sessionId, f.moveId, f.url, f.token));
}

/** What a MOVE proof covers; the URL is length-prefixed so URL and token cannot trade bytes. */
function moveParts(sessionId: Uint8Array, moveId: number, url: string, token: Uint8Array): Uint8Array[] {
  const u = enc.encode(url);
  return [sessionId, u32Bytes(moveId), u32Bytes(u.length), u, token];
}
