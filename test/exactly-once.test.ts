import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connect } from '../src/client/node.js';
import type { ServerSession, SessionHandler } from '../src/host/index.js';
import { LinkEmulator } from './support/link-emulator.js';
import { startTestServer, type TestServer } from './support/server.js';

const N = 10_000;
const CUTS = 20;
const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Sends 1..n in bursts of 50 every few ms (respecting backpressure), so the stream spans enough
 * time for twenty cuts to land mid-flow instead of after everything was queued.
 */
async function pump(target: { send(d: Uint8Array): boolean; once(ev: 'drain', fn: () => void): unknown }, n: number) {
  for (let i = 1; i <= n; i++) {
    if (!target.send(enc.encode(String(i)))) await new Promise<void>((r) => target.once('drain', r));
    if (i % 50 === 0) await new Promise<void>((r) => setTimeout(r, 4));
  }
}

/** Seeded PRNG: a failing run can be replayed with the printed seed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 4294967296;
  };
}

/** Collects numbered messages and settles when 1..n arrived; rejects on the first disorder. */
function collector(n: number): { add(d: Uint8Array): void; done: Promise<void>; got: number[] } {
  const got: number[] = [];
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const done = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return {
    got,
    done,
    add(d) {
      const v = Number(dec.decode(d));
      if (v !== got.length + 1) reject(new Error(`expected ${got.length + 1}, got ${v}`));
      got.push(v);
      if (got.length === n) resolve();
    },
  };
}

for (const scheme of ['ws', 'tcp'] as const) {
  describe(`exactly-once delivery over ${scheme}`, () => {
    it(`${N} messages each way survive ${CUTS} transport cuts at random points`, async (t) => {
      const seed = Date.now() >>> 0;
      t.diagnostic(`seed ${seed}`);
      const rand = rng(seed);
      const fromClient = collector(N);
      let serverSide: ServerSession | undefined;
      const pingpong: SessionHandler = {
        open(s) {
          serverSide = s;
          s.on('message', (d) => {
            fromClient.add(d);
            maybeCut();
          });
          void pump(s, N);
        },
      };
      const srv: TestServer = await startTestServer({ services: { pingpong } });
      const target = new URL(scheme === 'ws' ? srv.ws : srv.tcp);
      const emu = await LinkEmulator.start({ target: { host: target.hostname, port: Number(target.port) } });
      t.after(async () => {
        await srv.close();
        await emu.close();
      });

      const thresholds = Array.from({ length: CUTS }, () => Math.floor(rand() * N)).sort((a, b) => a - b);
      let cuts = 0;
      let armed = true;
      // One cut per live transport: the next one is armed only after the client resumed.
      const maybeCut = (): void => {
        const progress = fromServer.got.length + fromClient.got.length;
        if (armed && cuts < CUTS && (thresholds[cuts] as number) <= progress && session.state === 'open') {
          cuts++;
          armed = false;
          emu.cut();
        }
      };
      const fromServer = collector(N);
      const session = connect(`${scheme}://127.0.0.1:${emu.port}`, {
        service: 'pingpong',
        reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
      });
      let resumes = 0;
      session.on('resumed', () => {
        resumes++;
        armed = true;
      });
      session.on('message', (d) => {
        fromServer.add(d);
        maybeCut();
      });
      await session.ready;
      const sending = pump(session, N);
      await Promise.all([fromServer.done, fromClient.done, sending]);

      assert.deepEqual(
        fromServer.got,
        Array.from({ length: N }, (_, i) => i + 1),
      );
      assert.deepEqual(
        fromClient.got,
        Array.from({ length: N }, (_, i) => i + 1),
      );
      assert.equal(cuts, CUTS);
      assert.equal(resumes, CUTS, 'every cut forced exactly one resume');
      assert.equal(session.state, 'open');
      t.diagnostic(
        `resumes ${resumes}, client retransmitted ${session.stats.retransmitted}, server retransmitted ${serverSide?.engine.stats().retransmitted}`,
      );
      session.close();
    });
  });
}
