import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '../src/client/node.js';
import type { MigrationRecord } from '../src/transport/cluster.js';
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
});
