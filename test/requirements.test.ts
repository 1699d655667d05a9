import assert from 'node:assert/strict';
import { it } from 'node:test';
import { Host, silentLogger } from '../src/host/index.js';
import { openSqliteStore, type Store } from '../src/store/index.js';
import { tempDir } from './support/server.js';

const needy = new URL('./support/services/needy.ts', import.meta.url).pathname;

/** A SQLite Store in a temporary directory, both removed after the test. */
async function tempStore(t: { after(fn: () => Promise<void>): void }): Promise<Store> {
  const dir = await tempDir();
  t.after(() => dir.cleanup());
  const store = await openSqliteStore({ path: `${dir.path}/roam.db` });
  t.after(() => store.close());
  return store;
}

it('a host refuses a service whose requires it does not meet, and runs it with the declared heap limit when it does', async (t) => {
  const store = await tempStore(t);

  await assert.rejects(
    Host.start({
      store,
      logger: silentLogger(),
      services: [{ name: 'needy', module: needy }],
      labels: { region: 'us' },
    }),
    (err: Error & { code?: string }) => err.code === 'INCOMPATIBLE' && /region=eu/.test(err.message),
  );

  const host = await Host.start({
    store,
    logger: silentLogger(),
    services: [{ name: 'needy', module: needy }],
    labels: { region: 'eu' },
  });
  t.after(() => host.close());
  const info = host.serviceInfo('needy');
  assert.equal(info.meta.version, '1.0.0');
  assert.equal(info.maxOldGenerationSizeMb, 64);
});

it('a module without a defineService default export fails to load with a clear error', async (t) => {
  const store = await tempStore(t);
  await assert.rejects(
    Host.start({
      store,
      logger: silentLogger(),
      services: [{ name: 'nothing', module: new URL('./support/server.ts', import.meta.url).pathname }],
    }),
    (err: Error & { code?: string }) => err.code === 'SERVICE_ERROR' && /defineService/.test(err.message),
  );
});
