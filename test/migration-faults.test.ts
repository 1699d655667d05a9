import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { MigrationRecord } from '../src/transport/cluster.js';
import { type ClusterHost, holders, location, startCluster, streaming } from './support/cluster.js';
import { SERVICES } from './support/host.js';

/**
 * A host dies at each step of a migration (fault injection: the process SIGKILLs itself at the
 * named point). Whatever happens, the instance ends up served by exactly one host and the client
 * sees every message once, in order.
 */

const services = [`stream=${SERVICES.stream}`];

describe('migration faults', { timeout: 180_000 }, () => {
  for (const fault of ['destination-on-round', 'destination-on-final'] as const) {
    it(`the destination dies (${fault}): the source keeps serving, nothing lost`, async (t) => {
      const cluster = await startCluster({
        hosts: [{ services }, { services, env: { ROAM_TEST_FAULT: fault } }],
      });
      t.after(() => cluster.close());
      const [a, d] = cluster.hosts as [ClusterHost, ClusterHost];
      const { c, instance } = await streaming(t, cluster, a);
      await assert.rejects(cluster.api('/api/migrate', { instance, to: d.id }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'MIGRATION_ABORTED');
        return true;
      });
      assert.notEqual(await d.exited, 0, 'the destination really crashed');
      await c.flowsOn(200);
      assert.deepEqual(c.errors, []);
      assert.deepEqual(await holders(cluster, instance), [a.id]);
      // The source claimed the instance back (epoch 1, itself) when it lost the verdict after
      // `final`; before `final` nothing was written.
      const loc = await location(cluster, instance);
      if (fault === 'destination-on-final') assert.deepEqual([loc?.host, loc?.epoch], [a.id, 1]);
      else assert.equal(loc, undefined);
      const { migrations } = await cluster.api<{ migrations: MigrationRecord[] }>('/api/migrations');
      assert.equal(migrations.find((m) => m.instances.includes(instance))?.outcome, 'aborted');
    });
  }

  for (const mode of ['direct', 'gateway'] as const) {
    it(`the destination fails the final copy after its commit (${mode}): the client, already told to move, comes back`, async (t) => {
      // Both hosts refuse as destinations: through the gateway, the session may start on either.
      const env = { ROAM_TEST_FAULT: 'destination-install-fails' };
      const cluster = await startCluster({
        hosts: [
          { services, env },
          { services, env },
        ],
      });
      t.after(() => cluster.close());
      const [h0, h1] = cluster.hosts as [ClusterHost, ClusterHost];
      const via = mode === 'gateway' ? (await cluster.startGateway()).urls[0] : undefined;
      const { s, c, instance } = await streaming(t, cluster, h0, via);
      const [a, d] = (await holders(cluster, instance))[0] === h0.id ? [h0, h1] : [h1, h0];
      const moves: string[] = [];
      s.on('moved', (ev) => moves.push(ev.url));
      const events: string[] = [];
      s.on('event', (ev) => events.push(ev.type));
      await assert.rejects(cluster.api('/api/migrate', { instance, to: d.id }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'MIGRATION_ABORTED');
        return true;
      });
      await c.flowsOn(200);
      assert.deepEqual(c.errors, []);
      if (mode === 'direct') {
        // The MOVE went out as the source froze; the destination, whose install failed after it
        // had begun serving, sent the client back with a MOVE of its own.
        assert.deepEqual(moves, [d.clientUrl, a.clientUrl]);
        assert.equal(s.url, a.clientUrl);
      } else {
        assert.deepEqual(moves, [], 'a gateway keeps MOVEs from its clients');
        // The gateway took the RESUME back to the source itself: the client kept its transport.
        assert.ok(!events.includes('suspended'), events.join());
        assert.ok(events.includes('resumed'), events.join());
      }
      assert.deepEqual(await holders(cluster, instance), [a.id]);
      // The destination failed after its commit's compare-and-set (epoch 1, itself); the source,
      // told it serves nothing, claimed the instance back over it at the next epoch.
      const loc = await location(cluster, instance);
      assert.deepEqual([loc?.host, loc?.epoch], [a.id, 2]);
      // The source's location watch has seen the destination's epoch 1 by now (it polls every
      // 50 ms): the source must have taken it as the past, not as a new owner to yield to.
      await c.flowsOn(200);
      assert.deepEqual(c.errors, []);
      assert.deepEqual(await holders(cluster, instance), [a.id]);
      assert.equal(d.child.exitCode, null, 'the destination is alive');
    });
  }
});
