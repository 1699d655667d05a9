import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { pack, unpack } from 'msgpackr';
import type { WebSocket } from 'ws';
import { Host, silentLogger } from '../src/host/index.js';
import { openSqliteStore, type Store } from '../src/store/index.js';
import {
  AUTH_HEADER,
  loadOrCreateIdentity,
  newClusterSecret,
  parseClusterSecret,
  signRequest,
} from '../src/transport/cluster.js';
import { openPeerLink } from '../src/transport/peer.js';
import { SERVICES } from './support/host.js';
import { tempDir } from './support/server.js';
import { openStream } from './support/stream-client.js';

/** A round frame as a source's worker writes it: 0xc1, flags, round number (u32 BE), body. */
function roundFrame(n: number, flags: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(6 + body.length);
  out[0] = 0xc1;
  out[1] = flags;
  new DataView(out.buffer).setUint32(2, n);
  out.set(body, 6);
  return out;
}

/**
 * A host's peer endpoint under hostile input: requests without, with stale, replayed or forged
 * cluster signatures; garbage on an authenticated migration link. The host refuses each with a
 * clear code, never crashes, and a client streaming through it meanwhile loses nothing.
 */

describe('peer endpoint: hostile input', { timeout: 120_000 }, () => {
  let host: Host;
  let store: Store;
  let peerUrl: string;
  let clientUrl: string;
  let cleanup: () => Promise<void>;
  const secret = parseClusterSecret(newClusterSecret());

  before(async () => {
    const dir = await tempDir();
    store = await openSqliteStore({ path: `${dir.path}/roam.db`, synchronous: 'normal' });
    host = await Host.start({
      store,
      logger: silentLogger(),
      services: [{ name: 'stream', module: SERVICES.stream }],
      cluster: { secret, identity: loadOrCreateIdentity() },
    });
    clientUrl = (await host.listen('ws://127.0.0.1:0')).url;
    peerUrl = (await host.join()).peerUrl;
    cleanup = async () => {
      await host.close();
      await store.close();
      await dir.cleanup();
    };
  });
  after(() => cleanup());

  async function call(path: string, init: RequestInit & { headers?: Record<string, string> } = {}) {
    const res = await fetch(new URL(path, peerUrl), init);
    const body = (await res.json()) as { error?: { code: string } };
    return { status: res.status, code: body.error?.code };
  }

  it('refuses unsigned, forged, stale and replayed requests with 401 UNAUTHORIZED', async () => {
    assert.deepEqual(await call('/peer/instances'), { status: 401, code: 'UNAUTHORIZED' });
    const wrong = parseClusterSecret(newClusterSecret());
    assert.deepEqual(
      await call('/peer/instances', { headers: { [AUTH_HEADER]: signRequest(wrong, 'GET', '/peer/instances') } }),
      {
        status: 401,
        code: 'UNAUTHORIZED',
      },
    );
    const stale = signRequest(secret, 'GET', '/peer/instances', new Uint8Array(0), Date.now() - 120_000);
    assert.deepEqual(await call('/peer/instances', { headers: { [AUTH_HEADER]: stale } }), {
      status: 401,
      code: 'UNAUTHORIZED',
    });
    // A signature for another path does not open this one.
    const other = signRequest(secret, 'GET', '/peer/sessions');
    assert.deepEqual(await call('/peer/instances', { headers: { [AUTH_HEADER]: other } }), {
      status: 401,
      code: 'UNAUTHORIZED',
    });
    const good = signRequest(secret, 'GET', '/peer/instances');
    assert.equal((await call('/peer/instances', { headers: { [AUTH_HEADER]: good } })).status, 200);
    assert.deepEqual(
      await call('/peer/instances', { headers: { [AUTH_HEADER]: good } }),
      { status: 401, code: 'UNAUTHORIZED' },
      'replay',
    );
    const garbage = ['', 'x', '1.2.3', `${Date.now()}..`, `${Date.now()}.${'n'.repeat(200)}.abc`];
    for (const g of garbage) {
      assert.deepEqual(
        await call('/peer/instances', { headers: { [AUTH_HEADER]: g } }),
        { status: 401, code: 'UNAUTHORIZED' },
        g,
      );
    }
  });

  it('signed requests with malformed bodies get 400 with a code, never a crash', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.string(), fc.json(), fc.constant('{"instance":5}'), fc.constant('[]')),
        async (text) => {
          const body = new TextEncoder().encode(text);
          const path = '/peer/migrate';
          const r = await call(path, {
            method: 'POST',
            body: text,
            headers: { [AUTH_HEADER]: signRequest(secret, 'POST', path, body), 'content-type': 'application/json' },
          });
          assert.ok(r.status >= 400 && r.status < 500, `${text} → ${r.status}`);
          assert.ok(['INVALID_ARGUMENT', 'NOT_FOUND'].includes(r.code ?? ''), `${text} → ${r.code}`);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('a migration link refuses members without the secret, and survives garbage from members', async (t) => {
    const c = await openStream(t, clientUrl);

    const wrong = parseClusterSecret(newClusterSecret());
    await assert.rejects(
      openPeerLink(peerUrl, '/peer/migrate', wrong, (m, p) => signRequest(wrong, m, p)),
      (err: Error & { code?: string }) => err.code === 'UNAUTHORIZED',
    );

    const closed = (ws: WebSocket) => new Promise<void>((resolve) => ws.once('close', () => resolve()));
    // Each hostile message, and what the host answers before it closes the link (undefined: it
    // closes without a word — the message was not even a well-formed migration message).
    const hostile: Array<[Uint8Array | string, string | undefined]> = [
      ['text, not binary', undefined],
      [new Uint8Array([0xc1, 0xff, 0x00]), undefined],
      [pack(42), undefined],
      [pack({ t: 'round', n: 0, deltas: [] }), undefined],
      // A well-formed round frame before any offer, a truncated one, one with unknown flags.
      [roundFrame(0, 1, pack([])), undefined],
      [roundFrame(0, 1, new Uint8Array(0)).subarray(0, 5), undefined],
      [roundFrame(0, 0x80, pack([])), undefined],
      [pack({ t: 'offer' }), 'INVALID_ARGUMENT'],
      [
        pack({
          t: 'offer',
          mid: 'x',
          service: { name: 'stream', version: '1', compat: ['stream/1'] },
          requires: {},
          instances: 'nope',
        }),
        'INVALID_ARGUMENT',
      ],
      [
        pack({
          t: 'offer',
          mid: 'x',
          fromUrl: 'ws://127.0.0.1:1',
          service: { name: 'nope', version: '1', compat: [] },
          requires: {},
          instances: [{ inst: 'sx', key: null }],
        }),
        'UNKNOWN_SERVICE',
      ],
      // No source client URL, so nowhere to send clients back if the install failed.
      [
        pack({
          t: 'offer',
          mid: 'x',
          service: { name: 'stream', version: '1.0.0', compat: ['stream/1'] },
          requires: {},
          instances: [{ inst: 'sx', key: null }],
        }),
        'INVALID_ARGUMENT',
      ],
    ];
    for (const [msg, refusal] of hostile) {
      const ws = await openPeerLink(peerUrl, '/peer/migrate', secret, (m, p) => signRequest(secret, m, p));
      const answers: Array<{ t: string; code?: string }> = [];
      ws.on('message', (d: Buffer) => answers.push(unpack(d) as { t: string; code?: string }));
      const done = closed(ws);
      ws.send(msg);
      await done;
      assert.deepEqual(
        answers.map((a) => a.code),
        refusal === undefined ? [] : [refusal],
        `answer to ${typeof msg === 'string' ? msg : Buffer.from(msg).toString('hex').slice(0, 40)}`,
      );
      if (refusal) assert.equal(answers[0]?.t, 'refuse');
    }
    // An accepted offer followed by a corrupt round: staged data is dropped, the host lives on.
    // Rounds are round frames (a 6-byte header, then the packed part) that the destination's
    // worker unpacks and stages.
    const badDelta = [{ inst: 'sdeadbeef', instance: { set: 'bad', deleted: [] }, sessions: [] }];
    const corruptRounds: Uint8Array[] = [
      roundFrame(0, 1, pack(badDelta)), // a part whose delta is malformed
      roundFrame(0, 1, new Uint8Array([0xc1, 0xff, 0x00])), // not msgpack
      roundFrame(0, 1, pack({ not: 'a list' })), // not a list of deltas
      roundFrame(0, 1, new Uint8Array(0)), // a header and nothing else
      pack({ t: 'round', n: 0, part: pack(badDelta), last: true }), // the previous format: msgpack
      pack({ t: 'round', n: 0, deltas: badDelta }), // no part at all (an older format)
    ];
    for (const round of corruptRounds) {
      const ws = await openPeerLink(peerUrl, '/peer/migrate', secret, (m, p) => signRequest(secret, m, p));
      const answers: string[] = [];
      ws.on('message', (d: Buffer) => answers.push((unpack(d) as { t: string }).t));
      const done = closed(ws);
      ws.send(
        pack({
          t: 'offer',
          mid: 'y',
          from: 'z',
          fromUrl: 'ws://127.0.0.1:1',
          service: { name: 'stream', version: '1.0.0', compat: ['stream/1'] },
          requires: {},
          instances: [{ inst: 'sdeadbeef', key: null }],
          sessions: 0,
        }),
      );
      ws.send(round);
      await done;
      assert.deepEqual(answers, ['accept'], 'accepted, then closed without an ack');
    }
    await c.flowsOn(20);
    assert.deepEqual(c.errors, []);
    assert.equal((await host.describeInstances()).filter((i) => i.instance === 'sdeadbeef').length, 0);
  });
});
