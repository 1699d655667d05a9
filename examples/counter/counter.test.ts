import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connect, type Session } from '../../src/client/node.js';
import { startTestHost } from '../../test/support/host.js';
import { gatedConnector, nextEvent } from '../../test/support/server.js';
import { suspendedOn, Waiter } from '../support.js';

const SERVICE = new URL('./service.ts', import.meta.url).pathname;
const dec = new TextDecoder();
/**
 * Long enough that an immediate reconnect always beats it, even on a loaded machine (else the
 * drop in step (a) would turn into a suspension); short enough to keep the test quick.
 */
const GRACE_MS = 300;

/** Records indices (channel 0) and control notices (channel 1). */
function recorder(s: Session) {
  const indices: number[] = [];
  const control: string[] = [];
  const w = new Waiter(() => `indices 1..${indices.length}, control ${JSON.stringify(control)}`).watch(s);
  s.on('message', (d, ch) => {
    if (ch === 0) indices.push(Number(dec.decode(d)));
    else if (ch === 1) control.push(dec.decode(d));
    w.poke();
  });
  return {
    indices,
    control,
    count: (n: number) => w.until(() => indices.length >= n, `${n} indices`),
    notice: (text: string) => w.until(() => control.some((c) => c.startsWith(text)), `notice ${text}`),
  };
}

const contiguous = (xs: number[]): number[] => xs.map((_, i) => i + 1);

describe('examples/counter', { timeout: 30_000 }, () => {
  it('indices stay contiguous across a transport drop and a suspension to the Store', async (t) => {
    const h = await startTestHost({
      graceMs: GRACE_MS,
      listen: 'ws://127.0.0.1:0',
      services: [{ name: 'counter', module: SERVICE }],
    });
    const gate = gatedConnector();
    const s = connect(h.url, { service: 'counter', connector: gate, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
    t.after(async () => {
      s.close();
      await h.close();
    });
    const r = recorder(s);
    await s.ready;
    const sid = s.id as string;
    s.send('start 5');
    await r.count(10);

    // (a) The transport drops; the client resumes at once into the live session.
    const resumed1 = nextEvent(s, 'resumed');
    s.reconnectNow();
    await resumed1;
    await r.notice('resumed:');
    assert.deepEqual(r.control, ['resumed:reconnected']);
    await r.count(r.indices.length + 10);
    assert.deepEqual(r.indices, contiguous(r.indices));

    // (b) The client is unreachable past the grace period: the session and its per-session
    // instance (index + timer) go to the Store and leave memory.
    const stored = suspendedOn(h.host, sid);
    gate.open = false;
    s.reconnectNow();
    await stored;
    assert.equal(await h.host.whereIs(sid), 'suspended');
    assert.equal(h.host.liveSessions, 0);
    assert.equal(h.host.liveInstances, 0);

    const resumed2 = nextEvent(s, 'resumed');
    gate.open = true;
    await resumed2;
    await r.notice('resumed:restored');
    await r.count(r.indices.length + 10);
    assert.equal(await h.host.whereIs(sid), 'live');
    assert.equal(h.host.counters.restored, 1);
    assert.equal(h.host.counters.instancesRestored, 1);

    s.send('stop');
    assert.deepEqual(r.indices, contiguous(r.indices), 'no index missing or repeated');
    assert.deepEqual(r.control, ['resumed:reconnected', 'resumed:restored']);
  });

  it('refuses bad commands on the control channel without disturbing the session', async (t) => {
    const h = await startTestHost({ listen: 'ws://127.0.0.1:0', services: [{ name: 'counter', module: SERVICE }] });
    const s = connect(h.url, { service: 'counter' });
    t.after(async () => {
      s.close();
      await h.close();
    });
    const r = recorder(s);
    await s.ready;
    s.send('start -3');
    s.send('jump');
    s.send('start 2');
    await r.count(3);
    assert.equal(r.control.length, 2);
    assert.match(r.control[0] as string, /^error: start needs a period/);
    assert.match(r.control[1] as string, /^error: unknown command "jump"/);
    assert.deepEqual(r.indices.slice(0, 3), [1, 2, 3]);
  });
});
