import assert from 'node:assert/strict';
import { it } from 'node:test';
import { connect } from '../src/client/node.js';
import type { ServerSession } from '../src/host/index.js';
import {
  clientHello,
  clientResume,
  FramedConnection,
  ManualClock,
  type SessionEvent,
  toHex,
} from '../src/session/index.js';
import { connectTransport } from '../src/transport/index.js';
import { gatedConnector, nextEvent, startTestServer } from './support/server.js';

function serverSession(srv: Awaited<ReturnType<typeof startTestServer>>, id: string | undefined): ServerSession {
  const s = srv.server.getSession(id as string);
  assert.ok(s, 'server has the session');
  return s;
}

it('a replay window overflow while the client is away ends in lost(replay_window_exceeded)', async (t) => {
  const srv = await startTestServer({ engine: { maxReplayBytes: 8 * 1024 } });
  t.after(() => srv.close());
  const gate = gatedConnector();
  const s = connect(srv.tcp, { service: 'counter', connector: gate, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
  t.after(() => s.close());
  await s.ready;
  const server = serverSession(srv, s.id);
  s.send('start 1');
  await new Promise<void>((r) => s.once('message', () => r()));

  gate.open = false;
  const serverLost = nextEvent(server, 'lost');
  s.reconnectNow();
  const lostOnServer = await serverLost;
  assert.equal(lostOnServer.code, 'REPLAY_WINDOW_EXCEEDED');

  const clientLost = nextEvent(s, 'lost');
  gate.open = true;
  const ev = await clientLost;
  assert.equal(ev.reason, 'replay_window_exceeded');
  assert.equal(ev.code, 'REPLAY_WINDOW_EXCEEDED');
  assert.equal(s.state, 'lost');
  await assert.rejects(
    Promise.resolve().then(() => s.send('x')),
    { code: 'INVALID_STATE' },
  );
  assert.equal(srv.server.sessionCount, 0, 'the server released the session');
});

it('a session not resumed within its TTL ends in lost(expired) on both sides', async (t) => {
  const srv = await startTestServer({ sessionTtlMs: 300 });
  t.after(() => srv.close());
  const gate = gatedConnector();
  const s = connect(srv.ws, { service: 'echo', connector: gate, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
  t.after(() => s.close());
  await s.ready;
  const server = serverSession(srv, s.id);
  const events: SessionEvent[] = [];
  s.on('event', (e) => events.push(e));

  gate.open = false;
  // Either side may decide first (both know the TTL), so listen on both before the drop.
  const serverLost = nextEvent(server, 'lost');
  const clientLost = nextEvent(s, 'lost');
  s.reconnectNow();
  s.send('never delivered: the session expires first');
  assert.equal((await serverLost).code, 'SESSION_EXPIRED');
  gate.open = true;
  const ev = await clientLost;
  assert.equal(ev.reason, 'expired');
  assert.equal(ev.code, 'SESSION_EXPIRED');
  assert.deepEqual(
    events.map((e) => e.type),
    ['suspended', 'lost'],
    'no silent hang: suspended, then lost',
  );
});

it('a resume for a session the server expired is answered SESSION_EXPIRED, not UNKNOWN_SESSION', async (t) => {
  const srv = await startTestServer({ sessionTtlMs: 200 });
  t.after(() => srv.close());
  const clock = new ManualClock();
  // A hand-driven client: it has no TTL of its own, so only the server's answer can decide.
  const first = new FramedConnection(await connectTransport(srv.tcp));
  const est = await clientHello(first, clock, 5000, 'echo', undefined);
  const server = serverSession(srv, toHex(est.sessionId));
  const serverLost = nextEvent(server, 'lost');
  first.abort();
  assert.equal((await serverLost).code, 'SESSION_EXPIRED');

  const late = new FramedConnection(await connectTransport(srv.tcp));
  await assert.rejects(clientResume(late, clock, 5000, est.sessionId, est.key, 0), { code: 'SESSION_EXPIRED' });
  assert.equal(srv.server.counters.refused.get('SESSION_EXPIRED'), 1);
});
