import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '../src/client/node.js';
import type { MigrationRecord } from '../src/transport/cluster.js';
import { connectTransport } from '../src/transport/index.js';
import { type Cluster, startCluster, whereIs } from './support/cluster.js';
import { SERVICES } from './support/host.js';
import { streamClient } from './support/stream-client.js';

/** Live migration with the client behind a gateway: the gateway re-splices, the client never reconnects. */

const streamServices = [`stream=${SERVICES.stream}`, `counter=${SERVICES.counter}`];

describe('live migration through the gateway', { timeout: 180_000 }, () => {
  let cluster: Cluster;
  before(async () => {
    cluster = await startCluster({ hosts: [{ services: streamServices }, { services: streamServices }] });
  });
  after(() => cluster.close());

  it('gateway mode: 50 moves at 1 kHz each way re-splice the client without it reconnecting', async (t) => {
    const [a, b] = cluster.hosts as [(typeof cluster.hosts)[0], (typeof cluster.hosts)[0]];
    const gw = await cluster.startGateway();
    const gatewayUrl = gw.urls[0] as string;
    let connects = 0;
    const s = connect(gatewayUrl, {
      service: 'stream',
      reconnect: { initialDelayMs: 5, maxDelayMs: 50 },
    });
    s.on('event', (ev) => {
      if (ev.type === 'suspended') connects++;
    });
    t.after(() => s.close());
    const c = streamClient(s);
    await s.ready;
    s.send('start 1');
    c.startSending(1);
    await c.until(50);
    let { instance, host: onHost } = await whereIs(cluster, s.id as string);
    const records: MigrationRecord[] = [];
    for (let i = 0; i < 50; i++) {
      const to = onHost === a.id ? b.id : a.id;
      const mark = c.received;
      records.push(await cluster.api<MigrationRecord>('/api/migrate', { instance, to }));
      onHost = to;
      await c.until(mark + 20);
    }
    c.stopSending();
    await c.untilEchoed();
    assert.deepEqual(c.errors, []);
    assert.equal(c.echoed, c.sent);
    assert.ok(records.every((r) => r.outcome === 'committed'));
    assert.equal(c.control.filter((m) => m === 'resumed:migrated').length, 50);
    // The client kept one transport to the gateway the whole time, and never left its URL.
    assert.equal(connects, 0, 'the client never lost its transport');
    assert.equal(s.url, gatewayUrl);
    assert.equal((await whereIs(cluster, s.id as string)).host, onHost);
    ({ instance } = await whereIs(cluster, s.id as string));
    assert.ok(instance);
  });

  it('a second gateway whose cache still names the source finds the moved session at the destination', async (t) => {
    const [a, b] = cluster.hosts as [(typeof cluster.hosts)[0], (typeof cluster.hosts)[0]];
    const gw1 = await cluster.startGateway();
    const gw2 = await cluster.startGateway();
    // The client's transports go where `via` says (two replicas behind one name, say).
    let via = gw2.urls[0] as string;
    const s = connect('ws://gateways.invalid:1', {
      service: 'stream',
      reconnect: { initialDelayMs: 5, maxDelayMs: 50 },
      connector: (_url, o) => connectTransport(via, { localAddress: o.localAddress }),
    });
    t.after(() => s.close());
    const c = streamClient(s);
    await s.ready;
    s.send('start 1');
    await c.until(20);
    const { instance, host } = await whereIs(cluster, s.id as string);
    const to = host === a.id ? b : a;
    // gw2 learned the session's host from its WELCOME; the next transport goes through gw1.
    via = gw1.urls[0] as string;
    s.reconnectNow();
    await c.until(c.received + 50);
    // gw1 follows the move; gw2 never hears of it. The client goes on at the destination.
    await cluster.api<MigrationRecord>('/api/migrate', { instance, to: to.id });
    await c.until(c.received + 100);
    via = gw2.urls[0] as string;
    s.reconnectNow();
    await c.flowsOn(100);
    assert.deepEqual(c.errors, []);
    assert.equal((await whereIs(cluster, s.id as string)).host, to.id);
  });
});
