import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connect, type NodeConnectOptions, type Session } from '../../src/client/node.js';
import { startTestHost } from '../../test/support/host.js';
import { gatedConnector } from '../../test/support/server.js';
import { suspendedOn, Waiter } from '../support.js';
import { HISTORY, JOIN_HISTORY } from './service.js';

const SERVICE = new URL('./service.ts', import.meta.url).pathname;
const dec = new TextDecoder();

/** A chat member as a test sees it: what arrived on each channel, and a way to wait for more. */
function member(s: Session) {
  const live: string[] = [];
  const notices: string[] = [];
  const history: string[] = [];
  const exported = new Map<string, unknown>();
  const w = new Waiter(
    () => `live ${JSON.stringify(live)}, notices ${JSON.stringify(notices)}, history ${JSON.stringify(history)}`,
  ).watch(s);
  s.on('exported', (key, value) => {
    exported.set(key, value);
    w.poke();
  });
  s.on('message', (d, ch) => {
    if (ch === 0) live.push(dec.decode(d));
    else if (ch === 1) notices.push(dec.decode(d));
    else if (ch === 2) history.push(dec.decode(d));
    w.poke();
  });
  return {
    live,
    notices,
    history,
    exported,
    until: (cond: () => boolean, what: string) => w.until(cond, what),
    /** Waits for a notice matching `re` (already received or future). */
    notice: (re: RegExp) => w.until(() => notices.some((n) => re.test(n)), `notice ${re}`),
  };
}

async function join(url: string, room: string, nick: string, opts: Omit<NodeConnectOptions, 'service' | 'key'> = {}) {
  const s = connect(url, { service: 'chat', key: room, ...opts });
  const m = member(s);
  await s.ready;
  s.send(`/nick ${nick}`);
  await m.notice(new RegExp(`^you are now ${nick}$`));
  return { s, m };
}

describe('examples/chat', { timeout: 30_000 }, () => {
  it('rooms are isolated: lines, history and members stay in their room', async (t) => {
    const h = await startTestHost({ listen: 'ws://127.0.0.1:0', services: [{ name: 'chat', module: SERVICE }] });
    const sessions: Session[] = [];
    t.after(async () => {
      for (const s of sessions) s.close();
      await h.close();
    });
    const alice = await join(h.url, 'lobby', 'alice');
    const bob = await join(h.url, 'lobby', 'bob');
    const carol = await join(h.url, 'dev', 'carol');
    const dave = await join(h.url, ' DEV', 'dave'); // room names are normalised by the service's key hook
    sessions.push(alice.s, bob.s, carol.s, dave.s);

    alice.s.send('hello lobby');
    dave.s.send('hello dev');
    await bob.m.until(() => bob.m.live.length === 1, 'first lobby line');
    await carol.m.until(() => carol.m.live.length === 1, 'first dev line');
    assert.deepEqual(bob.m.live, ['alice: hello lobby']);
    assert.deepEqual(carol.m.live, ['dave: hello dev']);

    const eve = await join(h.url, 'dev', 'eve');
    sessions.push(eve.s);
    assert.deepEqual(eve.m.history, ['dave: hello dev'], 'a joiner gets its own room’s history only');
    eve.s.send('/who');
    await eve.m.notice(/^here: /);
    assert.ok(eve.m.notices.includes('here: carol, dave, eve'), eve.m.notices.join(' | '));

    alice.s.send('second lobby');
    dave.s.send('end');
    await bob.m.until(() => bob.m.live.length === 2, 'second lobby line');
    await carol.m.until(() => carol.m.live.length === 2, 'second dev line');
    assert.deepEqual(bob.m.live, ['alice: hello lobby', 'alice: second lobby']);
    assert.deepEqual(carol.m.live, ['dave: hello dev', 'dave: end']);
    assert.deepEqual(alice.m.live, [], 'a line is not echoed to its writer');
    assert.equal(h.host.liveInstances, 2);
  });

  it('a member suspended to the Store comes back with its nickname and the lines written while away', async (t) => {
    const h = await startTestHost({
      graceMs: 50,
      listen: 'ws://127.0.0.1:0',
      services: [{ name: 'chat', module: SERVICE }],
    });
    const gate = gatedConnector();
    const alice = await join(h.url, 'lobby', 'alice');
    const bob = await join(h.url, 'lobby', 'bob', {
      connector: gate,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    });
    t.after(async () => {
      alice.s.close();
      bob.s.close();
      await h.close();
    });
    const bobId = bob.s.id as string;
    bob.s.send('hi');
    await alice.m.until(() => alice.m.live.includes('bob: hi'), 'bob: hi');

    // Bob's client goes away; past the grace period his session alone is suspended to the Store.
    const stored = suspendedOn(h.host, bobId);
    gate.open = false;
    bob.s.reconnectNow();
    await stored;
    await alice.m.notice(/^\* bob is away$/);
    assert.equal(await h.host.whereIs(bobId), 'suspended');
    assert.equal(h.host.liveSessions, 1);
    assert.equal(h.host.liveInstances, 1, 'the room keeps running for alice');

    alice.s.send('while you were away 1');
    alice.s.send('while you were away 2');
    alice.s.send('/who'); // answered after the two lines: the room has taken them
    await alice.m.notice(/^here: /);
    assert.ok(alice.m.notices.includes('here: alice'), alice.m.notices.join(' | '));
    const historyBefore = bob.m.history.length;

    gate.open = true;
    await bob.m.notice(/^restored as bob; \d+ missed lines$/);
    assert.ok(bob.m.notices.includes('restored as bob; 2 missed lines'), bob.m.notices.join(' | '));
    assert.deepEqual(bob.m.history.slice(historyBefore), [
      'alice: while you were away 1',
      'alice: while you were away 2',
    ]);
    assert.equal(bob.m.exported.get('nick'), 'bob', 'the exported nickname came back with the session');
    assert.equal(h.host.counters.restored, 1);
    assert.equal(h.host.counters.instancesRestored, 0, 'an internal continuation: the room never left');
    await alice.m.notice(/^\* bob is back$/);

    bob.s.send('back');
    await alice.m.until(() => alice.m.live.includes('bob: back'), 'bob: back');
    alice.s.send('welcome back');
    await bob.m.until(() => bob.m.live.includes('alice: welcome back'), 'alice: welcome back');
    assert.equal(
      bob.m.live.filter((l) => l.startsWith('alice: while')).length,
      0,
      'missed lines came once, as history',
    );
  });

  it('history is bounded: the room keeps the last lines, a joiner gets the newest few', async (t) => {
    const h = await startTestHost({ listen: 'ws://127.0.0.1:0', services: [{ name: 'chat', module: SERVICE }] });
    const sessions: Session[] = [];
    t.after(async () => {
      for (const s of sessions) s.close();
      await h.close();
    });
    const alice = await join(h.url, 'big', 'alice');
    sessions.push(alice.s);
    const total = HISTORY + 30;
    for (let i = 1; i <= total; i++) alice.s.send(`line ${i}`);
    alice.s.send('/who');
    await alice.m.notice(/^here: /);
    const bob = await join(h.url, 'big', 'bob');
    sessions.push(bob.s);
    assert.deepEqual(
      bob.m.history,
      Array.from({ length: JOIN_HISTORY }, (_, i) => `alice: line ${total - JOIN_HISTORY + 1 + i}`),
    );
    assert.ok(bob.m.notices.includes(`(${total - JOIN_HISTORY} earlier lines not shown)`), bob.m.notices.join(' | '));
  });
});
