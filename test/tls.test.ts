import assert from 'node:assert/strict';
import { it } from 'node:test';
import { connect } from '../src/client/node.js';
import { builtinServices, SessionServer, silentLogger } from '../src/host/index.js';
import { nextEvent, selfSignedCert, tempDir } from './support/server.js';

const dec = new TextDecoder();

it('sessions run and resume over wss:// and tls:// with ordinary Node TLS options', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.cleanup());
  const { key, cert } = await selfSignedCert(dir.path);
  const server = new SessionServer({ services: builtinServices(), logger: silentLogger() });
  t.after(() => server.close());
  const wss = await server.listen('wss://127.0.0.1:0', { tls: { key, cert } });
  const tls = await server.listen('tls://127.0.0.1:0', { tls: { key, cert } });

  for (const url of [wss.url, tls.url]) {
    const s = connect(url, { service: 'echo', tls: { ca: cert }, reconnect: { initialDelayMs: 5 } });
    await s.ready;
    const got: string[] = [];
    s.on('message', (d) => got.push(dec.decode(d)));
    s.send('a');
    const resumed = nextEvent(s, 'resumed');
    s.reconnectNow();
    s.send('b');
    await resumed;
    while (got.length < 2) await new Promise<void>((r) => s.once('message', () => r()));
    assert.deepEqual(got, ['a', 'b'], url);
    s.close();
  }

  // A client that does not trust the certificate never gets a session.
  const untrusting = connect(tls.url, { service: 'echo', reconnect: { connectTimeoutMs: 200, initialDelayMs: 20 } });
  await assert.rejects(untrusting.ready, { code: 'RECONNECT_EXHAUSTED' });
});
