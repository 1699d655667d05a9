import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import fc from 'fast-check';
import { CODES, type CodeName } from './codes.js';
import { FrameDecoder } from './decoder.js';
import { ProtocolError } from './errors.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  decodeFrame,
  decodePayload,
  encodeFrame,
  type Frame,
  FrameType,
  HEADER_BYTES,
  KEY_BYTES,
  MAC_BYTES,
  MAX_INSTANCE_KEY_BYTES,
  MAX_SERVICE_NAME_BYTES,
  MAX_TEXT_BYTES,
  NONCE_BYTES,
  SESSION_ID_BYTES,
  WIRE_VERSION,
} from './frame.js';

// This file doubles as the entry point of a watchdog worker (see "never hangs" below): in a
// worker thread it only serves `feed` requests and registers no tests.

const KNOWN_CODES = new Set<string>(Object.keys(CODES));
/** The only codes a byte-stream decoder has any business throwing. */
const DECODE_CODES = new Set<CodeName>([
  'MALFORMED_FRAME',
  'UNSUPPORTED_VERSION',
  'UNKNOWN_FRAME_TYPE',
  'FRAME_TOO_LARGE',
]);

// ---------------------------------------------------------------------------------------------
// helpers

const utf8 = new TextEncoder();

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Copies every Uint8Array (views compare like fresh arrays) and drops undefined fields. */
function normalise(f: Frame): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(f)) {
    if (v === undefined) continue;
    out[k] = v instanceof Uint8Array ? Uint8Array.from(v) : v;
  }
  return out;
}

/** Longest prefix of `s` (whole code points) whose UTF-8 encoding fits in `maxBytes`. */
function fitUtf8(s: string, maxBytes: number): string {
  let out = '';
  let used = 0;
  for (const cp of s) {
    const n = utf8.encode(cp).length;
    if (used + n > maxBytes) break;
    out += cp;
    used += n;
  }
  return out;
}

/** How a byte stream is cut into chunks before it is pushed. */
type ChunkPlan =
  | { kind: 'whole' }
  | { kind: 'bytewise' }
  | { kind: 'cuts'; cuts: number[] }
  | { kind: 'sizes'; sizes: number[] };

function chunkify(bytes: Uint8Array, plan: ChunkPlan): Uint8Array[] {
  switch (plan.kind) {
    case 'whole':
      return [bytes];
    case 'bytewise':
      return Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
    case 'cuts': {
      // Cut points may repeat or sit at either end: that produces empty chunks, which are legal.
      const points = plan.cuts.map((c) => c % (bytes.length + 1)).sort((a, b) => a - b);
      const out: Uint8Array[] = [];
      let prev = 0;
      for (const p of [...points, bytes.length]) {
        out.push(bytes.subarray(prev, p));
        prev = p;
      }
      return out;
    }
    case 'sizes': {
      const out: Uint8Array[] = [];
      let off = 0;
      let zeros = 0;
      for (let i = 0; off < bytes.length; i++) {
        let size = plan.sizes[i % plan.sizes.length] as number;
        if (size === 0 && ++zeros > 4) size = 1; // a few empty chunks, but always make progress
        out.push(bytes.subarray(off, off + size));
        off += size;
      }
      return out;
    }
  }
}

/** Re-homes each chunk in its own fresh buffer, so no chunk is a view sharing memory with another. */
function detach(chunks: Uint8Array[]): Uint8Array[] {
  return chunks.map((c) => Uint8Array.from(c));
}

// ---------------------------------------------------------------------------------------------
// feeding hostile input (shared by the in-process properties and the watchdog worker)

interface FeedResult {
  frames: Frame[];
  error: unknown;
  /** Index of the chunk whose push threw. */
  threwAt: number;
  /** For a thrown error: the next two pushes threw the very same object. */
  poisonedSame: boolean;
  /** Largest `bufferedBytes` seen after any push. */
  maxBuffered: number;
}

/** Pushed after an error to check poisoning; encoded once so it is not counted as a decoder allocation. */
const POISON_PROBES = [new Uint8Array(0), encodeFrame({ type: FrameType.ACK, seq: 1 })] as const;

function feed(chunks: readonly Uint8Array[], maxFrameBytes: number): FeedResult {
  const d = new FrameDecoder({ maxFrameBytes });
  const frames: Frame[] = [];
  let maxBuffered = 0;
  for (let i = 0; i < chunks.length; i++) {
    try {
      frames.push(...d.push(chunks[i] as Uint8Array));
    } catch (error) {
      maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
      let poisonedSame = true;
      for (const next of POISON_PROBES) {
        try {
          d.push(next);
          poisonedSame = false;
        } catch (again) {
          if (again !== error) poisonedSame = false;
        }
      }
      return { frames, error, threwAt: i, poisonedSame, maxBuffered };
    }
    maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
  }
  return { frames, error: undefined, threwAt: -1, poisonedSame: true, maxBuffered };
}

/**
 * Temporarily wraps the global `Uint8Array` constructor to record the largest length requested
 * with `new Uint8Array(n)`, which is how the decoder allocates its reassembly buffer.
 */
function withAllocationSpy<T>(fn: () => T): { result: T; largest: number } {
  const Original = globalThis.Uint8Array;
  let largest = 0;
  globalThis.Uint8Array = new Proxy(Original, {
    construct(target, args, newTarget) {
      const n = args[0];
      if (typeof n === 'number' && n > largest) largest = n;
      return Reflect.construct(target, args, newTarget === globalThis.Uint8Array ? target : newTarget);
    },
  });
  try {
    return { result: fn(), largest };
  } finally {
    globalThis.Uint8Array = Original;
  }
}

function assertHostileOutcome(r: FeedResult, maxFrameBytes: number): void {
  if (r.error !== undefined) {
    assert.ok(
      r.error instanceof ProtocolError,
      `decoder threw a non-ProtocolError: ${r.error instanceof Error ? r.error.stack : String(r.error)}`,
    );
    assert.ok(KNOWN_CODES.has(r.error.code), `unknown code ${r.error.code}`);
    assert.ok(DECODE_CODES.has(r.error.code), `unexpected code for a framing error: ${r.error.code}`);
    assert.ok(r.poisonedSame, 'decoder did not stay poisoned with the same error');
  }
  assert.ok(
    r.maxBuffered <= maxFrameBytes + HEADER_BYTES,
    `bufferedBytes ${r.maxBuffered} exceeds maxFrameBytes ${maxFrameBytes} + header`,
  );
}

/**
 * fast-check options for every property here. Shrinking a failure of these big nested inputs can
 * take minutes of synchronous work; the time limit makes a failing run report its best
 * counterexample so far instead of looking hung (passing runs take well under a second). The
 * assertion message goes into the report because node:test does not print `cause`.
 */
function runs(numRuns: number): fc.Parameters<unknown> {
  return { numRuns, includeErrorInReport: true, plugins: [fc.interruptAfterTimeLimit(15_000)] };
}

// ---------------------------------------------------------------------------------------------
// arbitraries

const bytesN = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });

/** Unicode text (any scalar value, including astral, NUL and U+FEFF) that fits `maxBytes` of UTF-8. */
function textArb(maxBytes: number, maxChars: number): fc.Arbitrary<string> {
  const unicode = fc.oneof(
    fc.string({ unit: 'binary', maxLength: maxChars }),
    fc.string({ unit: 'grapheme', maxLength: maxChars }),
    fc.string({ maxLength: maxChars }),
  );
  // Occasionally push right up against the byte limit.
  const nearLimit = fc.string({
    unit: 'binary',
    minLength: Math.min(maxChars, Math.floor(maxBytes / 4)),
    maxLength: maxChars,
    size: 'max',
  });
  return fc
    .oneof({ weight: 5, arbitrary: unicode }, { weight: 1, arbitrary: nearLimit })
    .map((s) => fitUtf8(s, maxBytes));
}

/** Lengths biased to small, with the edges 0 and max, and anything in between. */
function lengthArb(max: number): fc.Arbitrary<number> {
  return fc.oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max }), fc.constantFrom(0, max));
}

const bytesUpTo = (max: number) => lengthArb(max).chain((n) => bytesN(n));
const u32Arb = fc.oneof(fc.nat({ max: 0xffffffff }), fc.constantFrom(0, 1, 0x7fffffff, 0x80000000, 0xffffffff));
const seqArb = fc.oneof(
  fc.nat(),
  fc.maxSafeNat(),
  fc.constantFrom(0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, Number.MAX_SAFE_INTEGER),
);
const codeArb = fc.constantFrom(...(Object.keys(CODES) as CodeName[]));
// CLOSE/ERROR text longer than 1024 UTF-16 units is deliberately truncated by the encoder, so the
// round-trip arbitrary stays under that (512 code points <= 1024 units).
const closeTextArb = textArb(MAX_TEXT_BYTES, 512);

const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  // Flags that say `true` are present or absent, never false (HELLO bit 1, CHALLENGE bit 0,
  // RESUME bits 0 and 1).
  fc.record(
    {
      type: fc.constant(FrameType.HELLO),
      publicKey: bytesN(KEY_BYTES),
      service: textArb(MAX_SERVICE_NAME_BYTES, 300),
      key: fc.option(textArb(MAX_INSTANCE_KEY_BYTES, 1100), { nil: undefined }),
      prepares: fc.constant(true as const),
    },
    { requiredKeys: ['type', 'publicKey', 'service', 'key'] },
  ),
  fc.record({
    type: fc.constant(FrameType.WELCOME),
    sessionId: bytesN(SESSION_ID_BYTES),
    publicKey: bytesN(KEY_BYTES),
    heartbeatMs: u32Arb,
    sessionTtlMs: u32Arb,
    confirm: bytesN(MAC_BYTES),
  }),
  fc.record(
    { type: fc.constant(FrameType.CHALLENGE), nonce: bytesN(NONCE_BYTES), prepare: fc.constant(true as const) },
    { requiredKeys: ['type', 'nonce'] },
  ),
  fc.record(
    {
      type: fc.constant(FrameType.RESUME),
      sessionId: bytesN(SESSION_ID_BYTES),
      nonce: bytesN(NONCE_BYTES),
      lastSeq: seqArb,
      clientNonce: bytesN(NONCE_BYTES),
      mac: bytesN(MAC_BYTES),
      prepares: fc.constant(true as const),
      prepared: fc.constant(true as const),
    },
    { requiredKeys: ['type', 'sessionId', 'nonce', 'lastSeq', 'clientNonce', 'mac'] },
  ),
  fc.record({ type: fc.constant(FrameType.RESUMED), lastSeq: seqArb, mac: bytesN(MAC_BYTES) }),
  fc.record({
    type: fc.constant(FrameType.DATA),
    channel: fc.integer({ min: 0, max: 0xffff }),
    seq: seqArb,
    payload: bytesUpTo(4096),
  }),
  fc.record({ type: fc.constant(FrameType.ACK), seq: seqArb }),
  fc.record({ type: fc.constant(FrameType.PING), id: u32Arb, time: fc.double() }),
  fc.record({ type: fc.constant(FrameType.PONG), id: u32Arb, time: fc.double() }),
  // MOVE and MOVE hint (flag bit 0): `hint` is present or absent, never false.
  fc.record(
    {
      type: fc.constant(FrameType.MOVE),
      moveId: u32Arb,
      url: textArb(MAX_TEXT_BYTES, 1200),
      token: bytesUpTo(MAX_TEXT_BYTES),
      mac: bytesN(MAC_BYTES),
      hint: fc.constant(true as const),
    },
    { requiredKeys: ['type', 'moveId', 'url', 'token', 'mac'] },
  ),
  fc.record({ type: fc.constant(FrameType.CLOSE), code: codeArb, reason: closeTextArb }),
  fc.record({ type: fc.constant(FrameType.ERROR), code: codeArb, message: closeTextArb }),
);

const chunkPlanArb: fc.Arbitrary<ChunkPlan> = fc.oneof(
  fc.constant<ChunkPlan>({ kind: 'whole' }),
  fc.constant<ChunkPlan>({ kind: 'bytewise' }),
  fc.record({ kind: fc.constant('cuts' as const), cuts: fc.array(fc.nat(), { maxLength: 64 }) }),
  fc.record({
    kind: fc.constant('sizes' as const),
    sizes: fc.array(fc.integer({ min: 0, max: 40 }), { minLength: 1, maxLength: 8 }),
  }),
);

const maxFrameBytesArb = fc.constantFrom(0, 8, 64, 1024, 5000, DEFAULT_MAX_FRAME_BYTES);

/** Concatenated encodings of a list of valid frames. */
const validStreamArb = fc.array(frameArb, { maxLength: 6 }).map((frames) => concat(frames.map(encodeFrame)));

/** A header-shaped random frame: mostly plausible headers in front of garbage payloads. */
const junkFrameArb = fc
  .record({
    version: fc.oneof({ weight: 9, arbitrary: fc.constant(WIRE_VERSION) }, { weight: 1, arbitrary: fc.nat(255) }),
    type: fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 1, max: 12 }) }, { weight: 1, arbitrary: fc.nat(255) }),
    flags: fc.oneof(fc.constantFrom(0, 1), fc.nat(255)),
    reserved: fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(255) }),
    payload: fc.uint8Array({ maxLength: 120 }),
    length: fc.oneof(
      { weight: 8, arbitrary: fc.constant(-1) }, // -1 = honest length
      { weight: 1, arbitrary: fc.nat(300) },
      { weight: 1, arbitrary: fc.nat({ max: 0xffffffff }) },
    ),
  })
  .map(({ version, type, flags, reserved, payload, length }) => {
    const h = new Uint8Array(HEADER_BYTES);
    const view = new DataView(h.buffer);
    view.setUint8(0, version);
    view.setUint8(1, type);
    view.setUint8(2, flags);
    view.setUint8(3, reserved);
    view.setUint32(4, length < 0 ? payload.length : length);
    return concat([h, payload]);
  });

type Mutation =
  | { kind: 'flip'; at: number; mask: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'duplicate'; from: number; len: number; at: number }
  | { kind: 'delete'; at: number; len: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('insert' as const),
      at: fc.nat(),
      bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('duplicate' as const),
      from: fc.nat(),
      len: fc.integer({ min: 1, max: 64 }),
      at: fc.nat(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 16 }) }),
  },
);

function mutate(input: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let b: Uint8Array = Uint8Array.from(input);
  for (const m of mutations) {
    const pos = (x: number) => (b.length === 0 ? 0 : x % (b.length + 1));
    switch (m.kind) {
      case 'flip':
        if (b.length > 0) {
          const i = m.at % b.length;
          b[i] = (b[i] as number) ^ m.mask;
        }
        break;
      case 'truncate':
        b = b.slice(0, pos(m.at));
        break;
      case 'insert': {
        const at = pos(m.at);
        b = concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      }
      case 'duplicate': {
        const from = pos(m.from);
        const seg = b.slice(from, from + m.len);
        const at = pos(m.at);
        b = concat([b.subarray(0, at), seg, b.subarray(at)]);
        break;
      }
      case 'delete': {
        const at = pos(m.at);
        b = concat([b.subarray(0, at), b.subarray(at + m.len)]);
        break;
      }
    }
  }
  return b;
}

/** Any byte stream an attacker might send, from pure noise to almost-valid traffic. */
const hostileStreamArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 512 }),
  fc.array(junkFrameArb, { minLength: 1, maxLength: 8 }).map(concat),
  fc.tuple(validStreamArb, fc.array(mutationArb, { minLength: 1, maxLength: 6 })).map(([s, ms]) => mutate(s, ms)),
  fc
    .tuple(validStreamArb, fc.array(junkFrameArb, { maxLength: 3 }), validStreamArb)
    .map(([a, junk, b]) => concat([a, ...junk, b])),
);

// ---------------------------------------------------------------------------------------------
// watchdog worker: a decoder stuck in a loop would block the test thread forever, so the
// "never hangs" property feeds input to a worker and fails when it misses a deadline.

interface WorkerRequest {
  id: number;
  chunks: Uint8Array[];
  maxFrameBytes: number;
}
interface WorkerReply {
  id: number;
  frames: number;
  threwAt: number;
  error: null | { protocol: boolean; code: string | undefined; text: string };
  poisonedSame: boolean;
  maxBuffered: number;
}

if (!isMainThread) {
  const port = parentPort;
  if (!port) throw new Error('watchdog worker without a parent port');
  port.on('message', (req: WorkerRequest) => {
    const r = feed(req.chunks, req.maxFrameBytes);
    const e = r.error;
    const reply: WorkerReply = {
      id: req.id,
      frames: r.frames.length,
      threwAt: r.threwAt,
      error:
        e === undefined
          ? null
          : {
              protocol: e instanceof ProtocolError,
              code: e instanceof ProtocolError ? e.code : undefined,
              text: e instanceof Error ? (e.stack ?? e.message) : String(e),
            },
      poisonedSame: r.poisonedSame,
      maxBuffered: r.maxBuffered,
    };
    port.postMessage(reply);
  });
  port.postMessage('ready');
}

/** Set once the watchdog saw the decoder miss a deadline; later in-process tests then skip. */
let hangDetected: string | undefined;

class Watchdog {
  private worker: Promise<Worker> | undefined;
  private nextId = 0;

  /** Starts the worker and waits until it listens, so start-up time never counts as a hang. */
  private start(): Promise<Worker> {
    // Node 20 does not carry tsx's loader hooks into workers, so the bootstrap registers them
    // before importing this file.
    const self = import.meta.url;
    const boot = self.endsWith('.ts')
      ? `import { register } from ${JSON.stringify(import.meta.resolve('tsx/esm/api'))}; register(); await import(${JSON.stringify(self)});`
      : `await import(${JSON.stringify(self)});`;
    const worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(boot)}`));
    return new Promise<Worker>((resolve, reject) => {
      const timer = setTimeout(() => {
        void worker.terminate();
        reject(new Error('watchdog worker did not start within 60 s'));
      }, 60_000);
      worker.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      worker.once('message', (m: unknown) => {
        clearTimeout(timer);
        if (m === 'ready') resolve(worker);
        else reject(new Error(`watchdog worker sent ${String(m)} before ready`));
      });
    });
  }

  async run(chunks: Uint8Array[], maxFrameBytes: number, deadlineMs: number): Promise<WorkerReply> {
    this.worker ??= this.start();
    const worker = await this.worker;
    const id = this.nextId++;
    return new Promise<WorkerReply>((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        worker.off('message', onMessage);
        worker.off('error', onError);
      };
      const onMessage = (m: WorkerReply) => {
        if (m.id !== id) return;
        cleanup();
        resolve(m);
      };
      const onError = (err: Error) => {
        cleanup();
        this.worker = undefined;
        reject(err);
      };
      const timer = setTimeout(() => {
        cleanup();
        this.worker = undefined;
        void worker.terminate();
        const total = chunks.reduce((n, c) => n + c.length, 0);
        hangDetected = `decoder did not finish ${total} bytes in ${chunks.length} chunks within ${deadlineMs} ms`;
        reject(new Error(`${hangDetected} (hang?)`));
      }, deadlineMs);
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.postMessage({ id, chunks, maxFrameBytes } satisfies WorkerRequest);
    });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    if (w) await (await w.catch(() => undefined))?.terminate();
  }
}

/**
 * `it` for tests that run the decoder on this thread: a decoder that loops forever would block
 * the thread, so once the watchdog saw a hang they are skipped and the run can end with its report.
 */
function decoderIt(name: string, fn: () => void): void {
  it(name, (t) => {
    if (hangDetected !== undefined) {
      t.skip(`skipped: ${hangDetected}`);
      return;
    }
    fn();
  });
}

// ---------------------------------------------------------------------------------------------

if (isMainThread) {
  // Runs first: if the decoder can hang, this reports it instead of the thread freezing below.
  describe('FrameDecoder never hangs (watchdog worker)', () => {
    const watchdog = new Watchdog();
    after(() => watchdog.close());

    it('valid and hostile input in random chunks finishes within a deadline, with the same guarantees', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(validStreamArb, hostileStreamArb),
          chunkPlanArb,
          maxFrameBytesArb,
          async (stream, plan, maxFrameBytes) => {
            const r = await watchdog.run(detach(chunkify(stream, plan)), maxFrameBytes, 5_000);
            if (r.error) {
              assert.ok(r.error.protocol, `non-ProtocolError in worker: ${r.error.text}`);
              assert.ok(r.error.code !== undefined && DECODE_CODES.has(r.error.code as CodeName), r.error.code);
              assert.ok(r.poisonedSame, 'decoder did not stay poisoned with the same error');
            }
            assert.ok(
              r.maxBuffered <= maxFrameBytes + HEADER_BYTES,
              `bufferedBytes reached ${r.maxBuffered}, limit ${maxFrameBytes}`,
            );
          },
        ),
        // A hang costs a deadline per shrink attempt: report the first one unshrunk.
        { ...runs(300), endOnFailure: true },
      );
    });
  });

  describe('FrameDecoder properties', () => {
    decoderIt('round-trip: decodeFrame(encodeFrame(f)) equals f, and the encoding is canonical', () => {
      fc.assert(
        fc.property(frameArb, (f) => {
          const wire = encodeFrame(f);
          const back = decodeFrame(wire);
          assert.deepStrictEqual(normalise(back), normalise(f));
          assert.deepStrictEqual(encodeFrame(back), wire);
        }),
        runs(600),
      );
    });

    decoderIt('round-trip through FrameDecoder in one push', () => {
      fc.assert(
        fc.property(frameArb, (f) => {
          const out = new FrameDecoder().push(encodeFrame(f));
          assert.equal(out.length, 1);
          assert.deepStrictEqual(normalise(out[0] as Frame), normalise(f));
        }),
        runs(300),
      );
    });

    decoderIt('any chunking of a valid stream decodes to the same frames as decoding it whole', () => {
      fc.assert(
        fc.property(fc.array(frameArb, { maxLength: 8 }), chunkPlanArb, fc.boolean(), (frames, plan, fresh) => {
          const stream = concat(frames.map(encodeFrame));
          const whole = new FrameDecoder().push(stream);
          let chunks = chunkify(stream, plan);
          if (fresh) chunks = detach(chunks);
          assert.deepStrictEqual(concat(chunks), stream, 'chunkify must not lose bytes');
          const d = new FrameDecoder();
          const pieces: Frame[] = [];
          for (const c of chunks) pieces.push(...d.push(c));
          assert.equal(d.bufferedBytes, 0, 'nothing left over after a complete stream');
          assert.deepStrictEqual(pieces.map(normalise), whole.map(normalise));
          assert.deepStrictEqual(whole.map(normalise), frames.map(normalise));
        }),
        runs(200),
      );
    });

    decoderIt('pushTo appends to the caller array in order, across chunks', () => {
      fc.assert(
        fc.property(fc.array(frameArb, { maxLength: 5 }), chunkPlanArb, (frames, plan) => {
          const d = new FrameDecoder();
          const out: Frame[] = [];
          for (const c of chunkify(concat(frames.map(encodeFrame)), plan)) d.pushTo(c, out);
          assert.deepStrictEqual(out.map(normalise), frames.map(normalise));
        }),
        runs(100),
      );
    });

    decoderIt('decoded frames survive the caller reusing its chunk buffer', () => {
      // Frames completed inside one chunk may hold views into it (DATA payloads, by design); frames
      // reassembled from several chunks must not depend on the chunks after push returns.
      fc.assert(
        fc.property(fc.array(frameArb, { minLength: 1, maxLength: 4 }), (frames) => {
          const stream = concat(frames.map(encodeFrame));
          const d = new FrameDecoder();
          const scratch = new Uint8Array(1);
          const out: Frame[] = [];
          for (const byte of stream) {
            scratch[0] = byte;
            out.push(...d.push(scratch));
          }
          assert.deepStrictEqual(out.map(normalise), frames.map(normalise));
        }),
        runs(60),
      );
    });

    decoderIt('hostile input in random chunks: only ProtocolError, bounded buffering, no big allocation', () => {
      fc.assert(
        fc.property(hostileStreamArb, chunkPlanArb, maxFrameBytesArb, (stream, plan, maxFrameBytes) => {
          const { result, largest } = withAllocationSpy(() => feed(chunkify(stream, plan), maxFrameBytes));
          assertHostileOutcome(result, maxFrameBytes);
          // The decoder's fixed 8-byte header buffer is the only allocation allowed above the limit.
          assert.ok(
            largest <= Math.max(maxFrameBytes, HEADER_BYTES),
            `allocated ${largest} bytes with maxFrameBytes ${maxFrameBytes}`,
          );
        }),
        runs(1500),
      );
    });

    decoderIt('the outcome does not depend on chunking: same error code, same frames before it', () => {
      fc.assert(
        fc.property(hostileStreamArb, chunkPlanArb, maxFrameBytesArb, (stream, plan, maxFrameBytes) => {
          const whole = feed([stream], maxFrameBytes);
          const bytewise = feed(chunkify(stream, { kind: 'bytewise' }), maxFrameBytes);
          const split = feed(chunkify(stream, plan), maxFrameBytes);
          const codeOf = (r: FeedResult) => (r.error instanceof ProtocolError ? r.error.code : r.error);
          assert.equal(codeOf(bytewise), codeOf(whole));
          assert.equal(codeOf(split), codeOf(whole));
          if (whole.error === undefined) {
            assert.deepStrictEqual(split.frames.map(normalise), whole.frames.map(normalise));
            assert.deepStrictEqual(bytewise.frames.map(normalise), whole.frames.map(normalise));
          } else {
            // A throwing push returns nothing, so frames completed in the chunk that failed are
            // dropped; fed byte by byte, every frame before the bad one comes out. The chunked
            // run therefore yields a prefix of the byte-wise frames.
            const prefix = bytewise.frames.slice(0, split.frames.length);
            assert.deepStrictEqual(split.frames.map(normalise), prefix.map(normalise));
          }
        }),
        runs(400),
      );
    });

    decoderIt('decodePayload/decodeFrame on arbitrary bytes only ever throw ProtocolError', () => {
      // FrameDecoder wraps stray exceptions into ProtocolError, which would hide them; call the
      // unwrapped functions directly.
      fc.assert(
        fc.property(fc.nat(255), fc.nat(255), fc.uint8Array({ maxLength: 200 }), (type, flags, payload) => {
          try {
            decodePayload(type, flags, payload);
          } catch (err) {
            assert.ok(err instanceof ProtocolError, `non-ProtocolError: ${String(err)}`);
            assert.ok(DECODE_CODES.has(err.code), err.code);
          }
        }),
        runs(1500),
      );
      fc.assert(
        fc.property(hostileStreamArb, (bytes) => {
          try {
            decodeFrame(bytes);
          } catch (err) {
            assert.ok(err instanceof ProtocolError, `non-ProtocolError: ${String(err)}`);
            assert.ok(DECODE_CODES.has(err.code), err.code);
          }
        }),
        runs(500),
      );
    });

    decoderIt('whatever the decoder accepts can be encoded again and decodes to the same frame', () => {
      const sameTypeJunk = fc
        .tuple(fc.integer({ min: 1, max: 12 }), fc.nat(255), frameArb, fc.array(mutationArb, { maxLength: 3 }))
        .map(([type, flags, f, ms]) => ({ type, flags, payload: mutate(encodeFrame(f).subarray(HEADER_BYTES), ms) }));
      fc.assert(
        fc.property(sameTypeJunk, ({ type, flags, payload }) => {
          let f: Frame;
          try {
            f = decodePayload(type, flags, payload);
          } catch {
            return; // rejected input is covered elsewhere
          }
          const again = decodeFrame(encodeFrame(f));
          const longText =
            (f.type === FrameType.CLOSE && f.reason.length > MAX_TEXT_BYTES / 4) ||
            (f.type === FrameType.ERROR && f.message.length > MAX_TEXT_BYTES / 4);
          if (!longText) assert.deepStrictEqual(normalise(again), normalise(f));
        }),
        runs(800),
      );
    });

    decoderIt(
      'FRAME_TOO_LARGE right after the 8th header byte, whatever the chunking, with no payload allocation',
      () => {
        fc.assert(
          fc.property(
            maxFrameBytesArb,
            fc.integer({ min: 1, max: 12 }),
            fc.nat(255),
            fc.double({ min: 0, max: 1, noNaN: true }),
            fc.uint8Array({ maxLength: 64 }),
            chunkPlanArb,
            (maxFrameBytes, type, flags, where, tail, plan) => {
              // Announced length anywhere in (maxFrameBytes, 2^32 - 1].
              const length = Math.min(
                0xffffffff,
                maxFrameBytes + 1 + Math.floor(where * (0xffffffff - maxFrameBytes - 1)),
              );
              const header = new Uint8Array(HEADER_BYTES);
              const view = new DataView(header.buffer);
              view.setUint8(0, WIRE_VERSION);
              view.setUint8(1, type);
              view.setUint8(2, flags);
              view.setUint32(4, length);
              const stream = concat([header, tail]);
              const chunks = chunkify(stream, plan);
              const { result, largest } = withAllocationSpy(() => feed(chunks, maxFrameBytes));
              assert.ok(result.error instanceof ProtocolError, `expected ProtocolError, got ${String(result.error)}`);
              assert.equal(result.error.code, 'FRAME_TOO_LARGE');
              // The push that threw is the one that delivered header byte 8.
              let seen = 0;
              let expected = -1;
              for (let i = 0; i < chunks.length; i++) {
                seen += (chunks[i] as Uint8Array).length;
                if (seen >= HEADER_BYTES) {
                  expected = i;
                  break;
                }
              }
              assert.equal(result.threwAt, expected);
              assert.ok(result.poisonedSame, 'decoder did not stay poisoned with the same error');
              assert.ok(largest <= Math.max(maxFrameBytes, HEADER_BYTES), `allocated ${largest}`);
            },
          ),
          runs(300),
        );
      },
    );
  });

  describe('FrameDecoder limits and poisoning (examples)', () => {
    decoderIt(
      '2^32-1 announced with maxFrameBytes 1024, one byte at a time: throws on byte 8, allocates nothing',
      () => {
        const header = Uint8Array.from([WIRE_VERSION, FrameType.DATA, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        const d = new FrameDecoder({ maxFrameBytes: 1024 });
        const { largest } = withAllocationSpy(() => {
          for (let i = 0; i < HEADER_BYTES - 1; i++) {
            assert.deepStrictEqual(d.push(header.subarray(i, i + 1)), []);
            assert.equal(d.bufferedBytes, i + 1);
          }
          const err = assert.throws(
            () => d.push(header.subarray(7, 8)),
            (e: unknown) => {
              assert.ok(e instanceof ProtocolError, `expected ProtocolError, got ${String(e)}`);
              assert.equal(e.code, 'FRAME_TOO_LARGE');
              return true;
            },
          );
          return err;
        });
        assert.ok(largest <= 1024, `allocated ${largest} bytes`);
        assert.ok(d.bufferedBytes <= 1024 + HEADER_BYTES, 'd.bufferedBytes <= 1024 + HEADER_BYTES');
      },
    );

    decoderIt('the same header with the default limit fails before allocating 4 GiB', () => {
      const header = Uint8Array.from([WIRE_VERSION, FrameType.DATA, 0, 0, 0xff, 0xff, 0xff, 0xff]);
      const { result, largest } = withAllocationSpy(() => feed([header, new Uint8Array(100)], DEFAULT_MAX_FRAME_BYTES));
      assert.ok(result.error instanceof ProtocolError, `expected ProtocolError, got ${String(result.error)}`);
      assert.equal(result.error.code, 'FRAME_TOO_LARGE');
      assert.equal(result.threwAt, 0);
      assert.ok(largest <= DEFAULT_MAX_FRAME_BYTES, 'largest <= DEFAULT_MAX_FRAME_BYTES');
    });

    decoderIt('a frame exactly at maxFrameBytes is accepted split or whole; one byte more is rejected', () => {
      const max = 1024;
      const atLimit = encodeFrame({ type: FrameType.DATA, channel: 1, seq: 1, payload: new Uint8Array(max - 10) });
      const over = encodeFrame({ type: FrameType.DATA, channel: 1, seq: 1, payload: new Uint8Array(max - 9) });
      for (const plan of [{ kind: 'whole' }, { kind: 'bytewise' }, { kind: 'sizes', sizes: [3, 500] }] as ChunkPlan[]) {
        const ok = feed(chunkify(atLimit, plan), max);
        assert.equal(ok.error, undefined);
        assert.equal(ok.frames.length, 1);
        const bad = feed(chunkify(over, plan), max);
        assert.ok(bad.error instanceof ProtocolError, `expected ProtocolError, got ${String(bad.error)}`);
        assert.equal(bad.error.code, 'FRAME_TOO_LARGE');
      }
    });

    decoderIt('after an error every later push (empty, valid, or via pushTo) throws the same object', () => {
      const d = new FrameDecoder();
      const good = encodeFrame({ type: FrameType.PING, id: 1, time: 2 });
      assert.equal(d.push(good).length, 1);
      let first: unknown;
      try {
        d.push(Uint8Array.from([9, 9, 9, 9, 9, 9, 9, 9]));
      } catch (err) {
        first = err;
      }
      assert.ok(first instanceof ProtocolError, `expected ProtocolError, got ${String(first)}`);
      assert.equal(first.code, 'UNSUPPORTED_VERSION');
      for (const next of [new Uint8Array(0), good, good.subarray(0, 3)]) {
        assert.throws(
          () => d.push(next),
          (e: unknown) => e === first,
        );
        assert.throws(
          () => d.pushTo(next, []),
          (e: unknown) => e === first,
        );
      }
    });

    decoderIt('an error in a later frame of a chunk poisons too (payload error, split payload)', () => {
      const good = encodeFrame({ type: FrameType.ACK, seq: 3 });
      // ACK whose seq is 2^53: caught in decodePayload, after the header passed.
      const bad = Uint8Array.from([1, 7, 0, 0, 0, 0, 0, 8, 0, 0x20, 0, 0, 0, 0, 0, 0]);
      const d = new FrameDecoder();
      assert.equal(d.push(concat([good, bad.subarray(0, 12)])).length, 1);
      let first: unknown;
      try {
        d.push(bad.subarray(12));
      } catch (err) {
        first = err;
      }
      assert.ok(first instanceof ProtocolError, `expected ProtocolError, got ${String(first)}`);
      assert.equal(first.code, 'MALFORMED_FRAME');
      assert.throws(
        () => d.push(good),
        (e: unknown) => e === first,
      );
    });

    decoderIt('bufferedBytes tracks partial header and payload, and returns to 0', () => {
      const wire = encodeFrame({ type: FrameType.DATA, channel: 2, seq: 9, payload: new Uint8Array(100) });
      const d = new FrameDecoder();
      assert.deepStrictEqual(d.push(wire.subarray(0, 5)), []);
      assert.equal(d.bufferedBytes, 5);
      assert.deepStrictEqual(d.push(wire.subarray(5, 50)), []);
      assert.equal(d.bufferedBytes, 50 - HEADER_BYTES);
      assert.equal(d.push(wire.subarray(50)).length, 1);
      assert.equal(d.bufferedBytes, 0);
    });
  });
}
