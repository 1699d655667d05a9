import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { createLogger } from '../host/logger.js';
import type { MigrationFault } from '../host/migration.js';
import { RoamError } from '../wire/index.js';
import { UsageError } from './api.js';
import { addOperatorCommands, Failure } from './operator.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/** Exit codes, documented in docs/cli.md. */
export const ExitCode = { OK: 0, FAILURE: 1, USAGE: 2 } as const;

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('a port is an integer in 0..65535');
  return n;
}

function count(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new InvalidArgumentError('wants an integer in 1..1000');
  return n;
}

export function buildProgram(): Command {
  const program = new Command()
    .name('roam')
    .description('Migratable stateful network services: sessions that survive drops, address changes and moves.')
    .version(pkg.version)
    .showHelpAfterError()
    // Usage errors exit 2, not commander's 1 (docs/cli.md); inherited by every subcommand below.
    .exitOverride();

  program
    .command('dev')
    .description('run a local cluster in one process: directory, hosts, gateway, example services and a demo load')
    .option('--port <n>', 'directory port: API and dashboard (0 = a free port)', port, 7070)
    .option('--gateway-port <n>', 'gateway port for clients, ws:// (0 = a free port)', port, 7080)
    .option('--hosts <n>', 'how many hosts', count, 3)
    .option('--store <path>', 'SQLite file (default: a temp dir, removed on exit)')
    .option('--no-demo', 'no demo clients and no periodic migrations')
    .option('--move-every <s>', 'seconds between demo migrations', count, 10)
    .option('--json', 'print the URLs, host ids and secret as one JSON line')
    .addHelpText(
      'after',
      '\nExample:\n  $ roam dev                      # or: npm start\n' +
        '  $ roam dev --port 0 --gateway-port 0 --json --no-demo\n' +
        '  {"directory":"http://127.0.0.1:40123","gateway":"ws://127.0.0.1:40124","hosts":[…],"secret":"…",…}\n' +
        '\nThen, in another terminal: roam hosts, roam instances, roam migrate <instance>, roam drain <host>.\n' +
        'Ctrl-C stops everything; the temp store is removed.\n',
    )
    .action(async (opts: DevCliOptions) => {
      const { runDev } = await import('./dev.js');
      const stopped = waitForSignal();
      await runDev(
        {
          port: opts.port,
          gatewayPort: opts.gatewayPort,
          hosts: opts.hosts,
          ...(opts.store ? { store: opts.store } : {}),
          demo: opts.demo,
          json: opts.json === true,
          moveEveryS: opts.moveEvery,
        },
        pkg.version,
        stopped,
      );
    });

  addOperatorCommands(program);

  program
    .command('host')
    .description('run a host: serve sessions of the given services, suspending them to a SQLite Store')
    .requiredOption('--store <path>', 'SQLite file for continuations (created if missing)')
    .option('--listen <url...>', 'endpoints (ws://, wss://, tcp://, tls://)', ['ws://127.0.0.1:7071'])
    .requiredOption('--service <name=module...>', 'service name and module path (default export from defineService)')
    .option('--admin <host:port>', 'admin API address (loopback unless you also set --admin-token)', '127.0.0.1:7079')
    .option('--admin-token <token>', 'require this bearer token on the admin API')
    .option('--grace-ms <ms>', 'suspend a detached session to the Store after this long', '30000')
    .option('--label <k=v...>', "host labels matched against services' requires.labels", [])
    .option('--directory <url>', 'join the cluster of this directory (needs the cluster secret)')
    .option('--secret <hex>', 'cluster secret (default: env ROAM_CLUSTER_SECRET)')
    .option('--identity <path>', 'Ed25519 identity file (created if missing; default: a new identity each start)')
    .option('--peer <host:port>', 'peer endpoint for migrations and the directory', '127.0.0.1:0')
    .option('--advertise-peer <url>', 'peer URL other members should use (NAT, proxies)')
    .option('--capacity <n>', 'sessions this host accepts at most (placement)', '100000')
    .option('--heartbeat-ms <ms>', 'session heartbeat interval clients adopt (default 1000)')
    .option('--store-sync <mode>', 'SQLite sync: full (fsync each commit) or normal (default in a cluster)')
    .option('--drain-deadline-ms <ms>', 'on SIGTERM/SIGINT, move instances away for at most this long', '30000')
    .addHelpText(
      'after',
      '\nExamples:\n  $ roam host --store roam.db --service counter=./counter.js --listen ws://0.0.0.0:7071\n' +
        '  $ ROAM_CLUSTER_SECRET=… roam host --store /shared/roam.db --service counter=./counter.js \\\n' +
        '      --directory http://127.0.0.1:7070 --label zone=a\n\n' +
        'In a cluster, SIGTERM drains the host (every instance moves live to another host) before it\n' +
        'exits; what cannot move before --drain-deadline-ms is suspended to the Store.\n',
    )
    .action(async (opts: HostCliOptions) => {
      const { Host } = await import('../host/host.js');
      const { startAdmin } = await import('../host/admin.js');
      const { openSqliteStore } = await import('../store/index.js');
      const services = opts.service.map((spec) => {
        const eq = spec.indexOf('=');
        if (eq <= 0) throw new InvalidArgumentError(`--service wants name=module, got ${spec}`);
        return { name: spec.slice(0, eq), module: resolvePath(spec.slice(eq + 1)) };
      });
      const labels = Object.fromEntries(opts.label.map((kv) => kv.split('=') as [string, string]));
      const secretText = opts.secret ?? process.env.ROAM_CLUSTER_SECRET;
      const sync = opts.storeSync ?? (secretText ? 'normal' : 'full');
      if (sync !== 'full' && sync !== 'normal') throw new InvalidArgumentError('--store-sync is full or normal');
      const store = await openSqliteStore({ path: opts.store, synchronous: sync });
      if (opts.directory && !secretText) {
        throw new InvalidArgumentError('--directory needs the cluster secret: --secret or env ROAM_CLUSTER_SECRET');
      }
      const { parseClusterSecret, loadOrCreateIdentity } = await import('../transport/cluster.js');
      const cluster = secretText
        ? {
            secret: parseClusterSecret(secretText),
            identity: loadOrCreateIdentity(opts.identity),
            ...(opts.directory ? { directory: opts.directory } : {}),
            peerListen: opts.peer,
            ...(opts.advertisePeer ? { advertisePeerUrl: opts.advertisePeer } : {}),
            capacity: Number(opts.capacity),
            ...(process.env.ROAM_TEST_FAULT
              ? { migration: { fault: process.env.ROAM_TEST_FAULT as MigrationFault } }
              : {}),
          }
        : undefined;
      const host = await Host.start({
        store,
        services,
        labels,
        graceMs: Number(opts.graceMs),
        logger: createLogger('roam-host', process.env.ROAM_LOG_LEVEL ?? 'info'),
        ...(cluster ? { cluster } : {}),
        ...(opts.heartbeatMs ? { server: { engine: { heartbeatMs: Number(opts.heartbeatMs) } } } : {}),
      });
      const urls: string[] = [];
      for (const u of opts.listen) urls.push((await host.listen(u)).url);
      const peer = cluster ? (await host.join()).peerUrl : undefined;
      const admin = await startAdmin(host, {
        listen: opts.admin,
        ...(opts.adminToken ? { token: opts.adminToken } : {}),
      });
      process.stdout.write(`${JSON.stringify({ id: host.id, listen: urls, admin: admin.url, peer })}\n`);
      await waitForSignal();
      if (cluster) {
        // Drain: every instance moves live to another host; the rest is suspended to the Store.
        const d = await host.shutdown({ deadlineMs: Number(opts.drainDeadlineMs) });
        if (d) process.stderr.write(`drained: ${d.moved} moved, ${d.failed} failed, ${d.suspended} suspended\n`);
      } else {
        // Suspends every session and instance to the Store: clients resume when a host is back.
        await host.close();
      }
      await admin.close();
      await store.close();
    });

  program
    .command('suspend')
    .description('suspend a live session (or, with --instance, an instance) on a host into the Store')
    .argument('<id>', 'session id (hex) or instance id')
    .option('--instance', 'the id names an instance')
    .option('--host <url>', "the host's admin API", 'http://127.0.0.1:7079')
    .option('--admin-token <token>', 'bearer token for the admin API')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExample:\n  $ roam suspend 5f0c…e1 --host http://127.0.0.1:7079\n')
    .action(async (id: string, opts: { instance?: boolean; host: string; adminToken?: string; json?: boolean }) => {
      const res = await fetch(new URL('/api/suspend', opts.host), {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          ...(opts.adminToken ? { authorization: `Bearer ${opts.adminToken}` } : {}),
        },
        body: JSON.stringify(opts.instance ? { instance: id } : { session: id }),
      }).catch((cause: unknown) => {
        throw new RoamError('TRANSPORT_CLOSED', `cannot reach ${opts.host}: ${(cause as Error).message}`);
      });
      const out = (await res.json()) as { suspended?: unknown; error?: { code: string; message: string } };
      if (opts.json) process.stdout.write(`${JSON.stringify(out)}\n`);
      else if (out.error) process.stderr.write(`roam suspend: ${out.error.code}: ${out.error.message}\n`);
      else process.stdout.write(`suspended ${opts.instance ? 'instance' : 'session'} ${id}\n`);
      if (!res.ok) process.exitCode = ExitCode.FAILURE;
    });

  program
    .command('directory')
    .description('run the directory: the cluster control plane (host table, migrations, events, operator API)')
    .requiredOption('--store <path>', 'SQLite file for the host table and migration history (created if missing)')
    .option('--listen <host:port>', 'address of the HTTP API (members and operators)', '127.0.0.1:7070')
    .option('--secret <hex>', 'cluster secret (default: env ROAM_CLUSTER_SECRET; generated when neither is set)')
    .option('--token <token>', 'require this bearer token on /api/* (without one the API is open: keep it on loopback)')
    .option('--heartbeat-ms <ms>', 'heartbeat period hosts are told; suspect after 3, purge after 10 periods', '1000')
    .option('--json', 'print the URL (and a generated secret) as one JSON line')
    .addHelpText(
      'after',
      '\nExample:\n  $ export ROAM_CLUSTER_SECRET=$(openssl rand -hex 32)\n' +
        '  $ roam directory --store directory.db --listen 0.0.0.0:7070 --token "$OPERATOR_TOKEN"\n' +
        '  roam directory 0.1.0\n    url     http://0.0.0.0:7070\n\n' +
        'Hosts join with the same secret: roam host --directory http://<this machine>:7070 …\n' +
        'The API is described in docs/directory.md.\n',
    )
    .action(async (opts: DirectoryCliOptions) => {
      const { Directory } = await import('../directory/index.js');
      const { newClusterSecret, parseClusterSecret } = await import('../transport/cluster.js');
      const { openSqliteStore } = await import('../store/index.js');
      const heartbeatMs = Number(opts.heartbeatMs);
      if (!Number.isInteger(heartbeatMs) || heartbeatMs <= 0) {
        throw new InvalidArgumentError('--heartbeat-ms wants a positive integer');
      }
      const given = opts.secret ?? process.env.ROAM_CLUSTER_SECRET;
      const generated = given ? undefined : newClusterSecret();
      const secret = parseClusterSecret(given ?? (generated as string));
      const store = await openSqliteStore({ path: opts.store });
      const directory = await Directory.start({
        store,
        secret,
        listen: opts.listen,
        heartbeatMs,
        ...(opts.token ? { token: opts.token } : {}),
        logger: createLogger('roam-directory', process.env.ROAM_LOG_LEVEL ?? 'info'),
      }).catch(async (err: unknown) => {
        await store.close();
        throw err;
      });
      if (generated) {
        process.stderr.write(
          'roam directory: warning: no --secret or ROAM_CLUSTER_SECRET given; generated a cluster secret.\n' +
            `  Hosts need it to join: ROAM_CLUSTER_SECRET=${generated}\n`,
        );
      }
      if (!opts.token && !/^(127\.|localhost:|\[::1\]:)/.test(opts.listen)) {
        process.stderr.write(`roam directory: warning: /api on ${opts.listen} is open to anyone; set --token\n`);
      }
      if (opts.json) {
        process.stdout.write(
          `${JSON.stringify({ url: directory.url, ...(generated ? { secret: generated } : {}) })}\n`,
        );
      } else {
        process.stdout.write(
          `roam directory ${pkg.version}\n  url     ${directory.url}\n` +
            (generated ? `  secret  ${generated}\n` : '') +
            'Ctrl-C to stop.\n',
        );
      }
      await waitForSignal();
      await directory.close();
      await store.close();
      if (!opts.json) process.stdout.write('roam directory stopped.\n');
    });

  program
    .command('gateway')
    .description("run a gateway: one stable client endpoint, spliced to each session's host and re-spliced on moves")
    .option('--listen <url...>', 'client endpoints (ws://, tcp://)', ['ws://127.0.0.1:7080'])
    .requiredOption('--directory <url>', "the directory's URL (host table, session lookups)")
    .option('--secret <hex>', 'cluster secret (default: env ROAM_CLUSTER_SECRET)')
    .option(
      '--splice-pool <n>',
      'idle splice links kept open per host, so splicing waits for no handshake (0: none)',
      '2',
    )
    .option('--json', 'print the endpoints as one JSON line')
    .addHelpText(
      'after',
      '\nExample:\n  $ ROAM_CLUSTER_SECRET=… roam gateway --directory http://127.0.0.1:7070 \\\n' +
        '      --listen ws://0.0.0.0:7080 --listen tcp://0.0.0.0:7081\n' +
        '  roam gateway 0.1.0\n    ws://0.0.0.0:7080\n    tcp://0.0.0.0:7081\n' +
        'Clients connect to the gateway instead of a host. See docs/gateway.md.\n',
    )
    .action(
      async (opts: { listen: string[]; directory: string; secret?: string; splicePool: string; json?: boolean }) => {
        const { Gateway } = await import('../gateway/index.js');
        const splicePool = Number(opts.splicePool);
        if (!Number.isInteger(splicePool) || splicePool < 0 || splicePool > 64) {
          throw new InvalidArgumentError('--splice-pool is an integer from 0 to 64');
        }
        const { parseClusterSecret } = await import('../transport/cluster.js');
        const secretText = opts.secret ?? process.env.ROAM_CLUSTER_SECRET;
        if (!secretText)
          throw new InvalidArgumentError('the gateway needs the cluster secret: --secret or env ROAM_CLUSTER_SECRET');
        const gateway = await Gateway.start({
          listen: opts.listen,
          directory: opts.directory,
          secret: parseClusterSecret(secretText),
          splicePool,
          logger: createLogger('roam-gateway', process.env.ROAM_LOG_LEVEL ?? 'info'),
        });
        if (opts.json) process.stdout.write(`${JSON.stringify({ listen: gateway.urls })}\n`);
        else
          process.stdout.write(
            `roam gateway ${pkg.version}\n${gateway.urls.map((u) => `  ${u}\n`).join('')}Ctrl-C to stop.\n`,
          );
        await waitForSignal();
        await gateway.close();
        if (!opts.json) process.stdout.write('roam gateway stopped.\n');
      },
    );

  program
    .command('bench')
    .description('run a benchmark suite (session, suspend, migration, drain) and write bench/results/<suite>.json')
    .argument('<suite>', 'session | suspend | migration | drain')
    .option('--quick', 'fewer iterations (a smoke run; figures are not comparable)')
    .allowUnknownOption()
    .addHelpText(
      'after',
      '\nThe suites ship with the source repository (bench/); run from a checkout.\n' +
        'Example:\n  $ roam bench migration --quick\n  $ roam bench drain\n',
    )
    .action(async (suite: string, _opts: unknown, cmd: Command) => {
      const runner = new URL('../../bench/run.ts', import.meta.url);
      if (!existsSync(runner)) {
        throw new RoamError('NOT_FOUND', 'benchmarks ship with the source repository: run roam bench from a checkout');
      }
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', runner.pathname, suite, ...cmd.args.slice(1), ...(cmd.opts().quick ? ['--quick'] : [])],
        { stdio: 'inherit' },
      );
      const [code] = (await once(child, 'exit')) as [number | null];
      process.exitCode = code ?? ExitCode.FAILURE;
    });

  return program;
}

interface HostCliOptions {
  store: string;
  listen: string[];
  service: string[];
  admin: string;
  adminToken?: string;
  graceMs: string;
  label: string[];
  directory?: string;
  secret?: string;
  identity?: string;
  peer: string;
  advertisePeer?: string;
  capacity: string;
  drainDeadlineMs: string;
  storeSync?: string;
  heartbeatMs?: string;
}

interface DevCliOptions {
  port: number;
  gatewayPort: number;
  hosts: number;
  store?: string;
  demo: boolean;
  moveEvery: number;
  json?: boolean;
}

interface DirectoryCliOptions {
  store: string;
  listen: string;
  secret?: string;
  token?: string;
  heartbeatMs: string;
  json?: boolean;
}

function waitForSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

/** What an error means for the exit code and the line on stderr (docs/cli.md). */
export function describeError(err: unknown): { code: number; message: string | undefined } {
  if (err instanceof CommanderError) {
    // Help and version "errors" exit 0; commander printed its own message already.
    if (err.exitCode === 0) return { code: ExitCode.OK, message: undefined };
    return { code: ExitCode.USAGE, message: undefined };
  }
  if (err instanceof UsageError || err instanceof InvalidArgumentError) {
    return { code: ExitCode.USAGE, message: `roam: USAGE: ${err.message}` };
  }
  if (err instanceof RoamError || err instanceof Failure) {
    return { code: ExitCode.FAILURE, message: `roam: ${err.code}: ${err.message}` };
  }
  return { code: ExitCode.FAILURE, message: `roam: ${err instanceof Error ? err.message : String(err)}` };
}

const isMain = process.argv[1] !== undefined && /(?:roam(?:\.js)?|main\.[jt]s)$/.test(process.argv[1]);
if (isMain) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((err: unknown) => {
      const { code, message } = describeError(err);
      if (message) process.stderr.write(`${message}\n`);
      process.exitCode = code;
    });
}
