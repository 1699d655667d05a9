import assert from 'node:assert/strict';
import { it } from 'node:test';
import { connect } from '../src/client/node.js';
import { nextEvent, startTestServer } from './support/server.js';

const dec = new TextDecoder();

for (const scheme of ['ws', 'tcp'] as const) {
  it(`${scheme}: the session continues after the client moves from 127.0.0.2 to 127.0.0.3`, async (t) => {
    const srv = await startTestServer();
    t.after(() => srv.close());
    const url = scheme === 'ws' ? srv.ws : srv.tcp;
    const s = connect(url, { service: 'echo', localAddress: '127.0.0.2', reconnect: { initialDelayMs: 10 } });
    t.after(() => s.close());
    const got: string[] = [];
    s.on('message', (d) => got.push(dec.decode(d)));
    await s.ready;
    const serverSide = srv.server.getSession(s.id as string);
    assert.equal(serverSide?.remoteAddress, '127.0.0.2');

    s.send('before');
    // The device changed network: its old address is gone, new transports bind the new one.
    s.setLocalAddress('127.0.0.3');
    const resumed = nextEvent(s, 'resumed');
    s.reconnectNow();
    s.send('during');
    const ev = await resumed;
    s.send('after');
    while (got.length < 3) await new Promise<void>((r) => s.once('message', () => r()));

    assert.deepEqual(got, ['before', 'during', 'after']);
    assert.equal(ev.remoteAddress, '127.0.0.1', 'the resumed event names the server it resumed on');
    assert.equal(srv.server.getSession(s.id as string)?.remoteAddress, '127.0.0.3');
    assert.equal(srv.server.sessionCount, 1, 'same session, not a new one');
  });
}
