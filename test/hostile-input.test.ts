import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { it } from 'node:test';
import fc from 'fast-check';
import { WebSocket } from 'ws';
import { connect } from '../src/client/node.js';
import { CODES, type CodeName, encodeFrame, type Frame, FrameDecoder, FrameType } from '../src/wire/index.js';
import { startTestServer } from './support/server.js';

const dec = new TextDecoder();

/** Sends raw bytes over TCP and collects what the server answers until it closes. */
function rawTcp(port: number, chunks: Uint8Array[]): Promise<Frame[]> {
  return new Promise((resolve) => {
    const sock = netConnect({ host: '127.0.0.1', port });
    const d = new FrameDecoder();
    const frames: Frame[] = [];
    sock.on('data', (b) => {
      try {
        frames.push(...d.push(new Uint8Array(b)));
      } catch {
        frames.push({ type: FrameType.ERROR, code: 'MALFORMED_FRAME', message: 'server sent garbage' });
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => resolve(frames));
    sock.on('connect', () => {
      for (const c of chunks) sock.write(c);
    });
  });
}

it('garbage on the TCP entry point gets an ERROR with a known code, and other sessions keep working', async (t) => {
  const srv = await startTestServer({ handshakeTimeoutMs: 500 });
  t.after(() => srv.close());
  const port = Number(new URL(srv.tcp).port);
  const bystander = connect(srv.ws, { service: 'echo' });
  t.after(() => bystander.close());
  await bystander.ready;
  const known = new Set(Object.keys(CODES));

  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.uint8Array({ minLength: 1, maxLength: 2048 }),
        // A valid header followed by hostile payloads: the decoder's deeper paths.
        fc.tuple(fc.integer({ min: 1, max: 12 }), fc.uint8Array({ maxLength: 256 })).map(([type, p]) => {
          const b = new Uint8Array(8 + p.length);
          b.set([1, type, 0, 0], 0);
          new DataView(b.buffer).setUint32(4, p.length);
          b.set(p, 8);
          return b;
        }),
      ),
      async (bytes) => {
        const frames = await rawTcp(port, [bytes]);
        const first = frames[0];
        assert.equal(first?.type, FrameType.CHALLENGE, 'every transport starts with a CHALLENGE');
        const err = frames.find((f) => f.type === FrameType.ERROR) as { code: CodeName } | undefined;
        assert.ok(err, 'the server explains why it closes');
        assert.ok(known.has(err.code), `code ${err.code} is in the table`);
      },
    ),
    { numRuns: 60 },
  );

  // A frame announcing 4 GiB is refused from its header alone.
  const huge = new Uint8Array([1, FrameType.DATA, 0, 0, 0xff, 0xff, 0xff, 0xff]);
  const answer = await rawTcp(port, [huge]);
  assert.equal(
    (answer.find((f) => f.type === FrameType.ERROR) as { code: string } | undefined)?.code,
    'FRAME_TOO_LARGE',
  );

  // A HELLO for a service that does not exist.
  const hello = encodeFrame({ type: FrameType.HELLO, publicKey: new Uint8Array(32), service: 'nope' });
  const refused = await rawTcp(port, [hello]);
  assert.equal(
    (refused.find((f) => f.type === FrameType.ERROR) as { code: string } | undefined)?.code,
    'UNKNOWN_SERVICE',
  );

  // A HELLO whose public key is not a valid X25519 point (all zeros is the identity).
  const bad = encodeFrame({ type: FrameType.HELLO, publicKey: new Uint8Array(32), service: 'echo' });
  const badKey = await rawTcp(port, [bad]);
  assert.equal(
    (badKey.find((f) => f.type === FrameType.ERROR) as { code: string } | undefined)?.code,
    'HANDSHAKE_FAILED',
  );

  // A connection that says nothing is closed after the handshake timeout.
  const silent = await rawTcp(port, []);
  assert.equal(
    (silent.find((f) => f.type === FrameType.ERROR) as { code: string } | undefined)?.code,
    'HANDSHAKE_TIMEOUT',
  );

  // The bystander never noticed.
  const echoed = new Promise<string>((r) => bystander.once('message', (d) => r(dec.decode(d))));
  bystander.send('still fine');
  assert.equal(await echoed, 'still fine');
  assert.equal(bystander.stats.retransmitted, 0);
  assert.equal(srv.server.sessionCount, 1);
});

it('a text WebSocket message closes only that transport', async (t) => {
  const srv = await startTestServer();
  t.after(() => srv.close());
  const ws = new WebSocket(srv.ws);
  await new Promise((r) => ws.once('open', r));
  const closed = new Promise<void>((r) => ws.once('close', () => r()));
  ws.send('{"hello":"json"}');
  await closed;
  assert.equal(srv.server.sessionCount, 0);
});

it('a plain HTTP request to a ws:// listener gets 426, not a crash', async (t) => {
  const srv = await startTestServer();
  t.after(() => srv.close());
  const res = await fetch(srv.ws.replace('ws://', 'http://'));
  assert.equal(res.status, 426);
  assert.match(await res.text(), /WebSocket upgrade required/);
});
