import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connect } from '../src/client/node.js';
import { Directory } from '../src/directory/index.js';
import { Host, silentLogger } from '../src/host/index.js';
import { openSqliteStore, type Store, type StoreEvent } from '../src/store/index.js';
import { ClusterKeys, loadOrCreateIdentity, newClusterSecret, parseClusterSecret } from '../src/transport/cluster.js';
import type { RoamError } from '../src/wire/index.js';
import { SERVICES } from './support/host.js';
import { tempDir } from './support/server.js';
import { streamClient } from './support/stream-client.js';

/**
 * A Store whose location watches can be held: while held, events wait; `until(pred)` resolves once the
 * watcher has taken an event matching `pred` and asked for the next one (it handled that event,
 * and every event before it).
 */
function holdableWatches(base: Store) {
  let gate: Promise<void> = Promise.resolve();
  let open = () => {};
  const handled = new Set<{ pred: (ev: StoreEvent) => boolean; done: () => void }>();
  const store = new Proxy(base, {
    get(target, p) {
      if (p === 'watch') {
        return (prefix: string, opts?: Parameters<Store['watch']>[1]) => ({
          async *[Symbol.asyncIterator]() {
            for await (const ev of target.watch(prefix, opts)) {
              if (prefix === ClusterKeys.locationPrefix) await gate;
              yield ev;
              for (const w of handled) {
                if (w.pred(ev)) {
                  handled.delete(w);
                  w.done();
                }
              }
            }
          },
        });
      }
      const v: unknown = Reflect.get(target, p, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return {
    store,
    hold() {
      gate = new Promise((r) => {
        open = r;
      });
    },
    release: () => open(),
    until: (pred: (ev: StoreEvent) => boolean) =>
      new Promise<void>((done) => {
        handled.add({ pred, done });
      }),
  };
}

describe('migration epochs', { timeout: 120_000 }, () => {
  it("a source that claims its instance back after the destination's failed commit is not fenced by that commit", async (t) => {
    const secret = parseClusterSecret(newClusterSecret());
    const tmp = await tempDir('roam-epoch-');
    const path = `${tmp.path}/roam.db`;
    const shared = await openSqliteStore({ path, synchronous: 'normal' });
    const baseA = await openSqliteStore({ path, synchronous: 'normal' });
    const watchesA = holdableWatches(baseA);
    const dir = await Directory.start({ store: shared, secret });
    const services = [{ name: 'stream', module: SERVICES.stream }];
    const a = await Host.start({
      store: watchesA.store,
      logger: silentLogger(),
      services,
      cluster: { secret, identity: loadOrCreateIdentity(), directory: dir.url },
    });
    // The destination fails after its commit's compare-and-set: the location says (b, 1) for a moment.
    const b = await Host.start({
      store: shared,
      logger: silentLogger(),
      services,
      cluster: {
        secret,
        identity: loadOrCreateIdentity(),
        directory: dir.url,
        migration: { fault: 'destination-install-fails' },
      },
    });
    t.after(async () => {
      await a.close();
      await b.close();
      await dir.close();
      await baseA.close();
      await shared.close();
      await tmp.cleanup();
    });
    const url = (await a.listen('ws://127.0.0.1:0')).url;
    await b.listen('ws://127.0.0.1:0');
    await a.join();
    await b.join();
    const s = connect(url, { service: 'stream', reconnect: { initialDelayMs: 5, maxDelayMs: 50 } });
    t.after(() => s.close());
    await s.ready;
    const c = streamClient(s);
    c.sendNext();
    await c.untilEchoed();
    const fenced: string[] = [];
    a.on('fenced', (ev) => fenced.push(ev.instance));

    // The source's location watch lags behind the whole migration (watchers poll; a busy host
    // reads late): it sees the destination's epoch only after the instance stopped moving.
    watchesA.hold();
    const inst = a.describeSessions()[0]?.instance;
    assert.ok(inst, 'the client opened an instance on a');
    await assert.rejects(a.migrate(inst, { to: b.id }), (err: RoamError) => err.code === 'MIGRATION_ABORTED');
    const claimedBack = watchesA.until((ev) => {
      if (ev.type !== 'put') return false;
      const loc = JSON.parse(new TextDecoder().decode(ev.value)) as {
        instance?: string;
        host?: string;
        epoch?: number;
      };
      return loc.instance === inst && loc.host === a.id && loc.epoch === 2;
    });
    watchesA.release();
    await claimedBack;
    assert.deepEqual(fenced, [], 'the destination’s short-lived epoch fenced the source');
    assert.deepEqual(
      a.describeSessions().map((x) => x.instance),
      [inst],
    );
    assert.equal(a.liveInstances, 1);
    // Still served here: a message goes through the instance and its echo comes back.
    c.sendNext();
    await c.untilEchoed();
    assert.deepEqual(c.errors, []);
  });
});
