/**
 * Runs a Host in its own process, for tests that kill and restart hosts.
 * argv: <sqlite path> <listen url> <service name>=<module path>…  (env ROAM_GRACE_MS)
 * Prints one JSON line {"url": …} once listening; SIGTERM suspends everything and exits 0.
 */
import { Host, silentLogger } from '../../src/host/index.js';
import { openSqliteStore } from '../../src/store/index.js';

const [dbPath, listenUrl, ...specs] = process.argv.slice(2);
if (!dbPath || !listenUrl || specs.length === 0) {
  process.stderr.write('usage: host-process <db> <listen-url> name=module…\n');
  process.exit(2);
}
const store = await openSqliteStore({ path: dbPath });
const host = await Host.start({
  store,
  logger: silentLogger(),
  graceMs: Number(process.env.ROAM_GRACE_MS ?? 30_000),
  services: specs.map((s) => {
    const [name, module] = s.split('=') as [string, string];
    return { name, module };
  }),
});
const l = await host.listen(listenUrl);
process.stdout.write(`${JSON.stringify({ url: l.url })}\n`);
process.once('SIGTERM', () => {
  void host
    .close()
    .then(() => store.close())
    .then(() => process.exit(0));
});
