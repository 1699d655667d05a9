import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { connect } from '../../src/client/node.js';
import { readEvents } from '../../src/directory/index.js';
import { openSqliteStore } from '../../src/store/index.js';
import {
  ClusterKeys,
  clusterFetch,
  decodeJson,
  type LocationRecord,
  type MigrationRecord,
  newClusterSecret,
  parseClusterSecret,
} from '../../src/transport/cluster.js';
import { kernelState, reapOnExit } from './children.js';
import { NODE_ARGS, PROFILING, ROAM } from './cli.js';
import { SERVICES } from './host.js';
import { tempDir } from './server.js';
import { streamClient } from './stream-client.js';

/** A `roam` process started by a test; killed (SIGKILL) at cleanup if still running. */
export interface RoamProcess {
  child: ChildProcess;
  /** The JSON line the command printed once ready. */
  info: Record<string, unknown>;
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

export interface ClusterHost extends RoamProcess {
  id: string;
  clientUrl: string;
  peerUrl: string;
}

export interface HostSpec {
  labels?: Record<string, string>;
  /** Peer URL to advertise instead of the real one (a link emulator in front of it). */
  advertisePeer?: string;
  /** Extra CLI arguments. */
  args?: string[];
  /** Services as name=module; default counter and room. */
  services?: string[];
  listen?: string;
  env?: Record<string, string>;
}

export interface Cluster {
  dbPath: string;
  secret: string;
  secretBytes: Uint8Array;
  directory: RoamProcess & { url: string };
  hosts: ClusterHost[];
  /** Calls the directory's API (signed with the cluster secret). */
  api<T>(path: string, body?: unknown, timeoutMs?: number): Promise<T>;
  addHost(spec?: HostSpec): Promise<ClusterHost>;
  /** Starts `roam gateway` against the directory; resolves with its client URLs. */
  startGateway(listen?: string[]): Promise<RoamProcess & { urls: string[] }>;
  /** Each process's threads as the kernel sees them (for the message of a setup that hung). */
  diagnose(): string;
  /** Kills the directory and starts a new one on the same Store and port. */
  restartDirectory(): Promise<void>;
  close(): Promise<void>;
}

/** Starts `roam <args>` and waits for its first stdout line (JSON). */
export async function startRoam(args: string[], env: Record<string, string> = {}): Promise<RoamProcess> {
  const child = reapOnExit(
    spawn(process.execPath, [...NODE_ARGS, ROAM, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ROAM_LOG_LEVEL: process.env.ROAM_LOG_LEVEL ?? 'warn', ...env },
    }),
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (stderr.length > 64 * 1024) stderr = stderr.slice(-32 * 1024);
    if (process.env.ROAM_TEST_VERBOSE) process.stderr.write(d);
  });
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const first = new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    void exited.then((code) => reject(new Error(`roam ${args[0]} exited (${code}) before it was ready:\n${stderr}`)));
  });
  const line = await first;
  // Keep draining stdout so the child never blocks on a full pipe.
  lines.on('line', () => {});
  return {
    child,
    info: JSON.parse(line) as Record<string, unknown>,
    exited,
    kill: (signal = 'SIGKILL') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/**
 * A directory and `hosts` hosts, each its own `roam` process, on one SQLite Store in a temp dir,
 * every port picked by the OS.
 */
export async function startCluster(opts: { hosts?: number | HostSpec[]; heartbeatMs?: number } = {}): Promise<Cluster> {
  const dir = await tempDir();
  const dbPath = `${dir.path}/roam.db`;
  const secret = newClusterSecret();
  const secretBytes = parseClusterSecret(secret);
  const env = { ROAM_CLUSTER_SECRET: secret };
  const procs = new Set<RoamProcess>();
  const track = <T extends RoamProcess>(p: T): T => {
    procs.add(p);
    void p.exited.then(() => procs.delete(p));
    return p;
  };
  const directoryArgs = (listen: string) => [
    'directory',
    '--store',
    dbPath,
    '--listen',
    listen,
    '--json',
    ...(opts.heartbeatMs ? ['--heartbeat-ms', String(opts.heartbeatMs)] : []),
  ];
  const startDirectory = async (listen: string) => {
    const p = track(await startRoam(directoryArgs(listen), env));
    return Object.assign(p, { url: String(p.info.url) });
  };
  const cluster: Cluster = {
    dbPath,
    secret,
    secretBytes,
    directory: await startDirectory('127.0.0.1:0'),
    hosts: [],
    api: (path, body, timeoutMs) =>
      clusterFetch(cluster.directory.url, path, {
        ...(body === undefined ? {} : { body }),
        secret: secretBytes,
        timeoutMs: timeoutMs ?? 120_000,
      }),
    async addHost(spec: HostSpec = {}) {
      const services = spec.services ?? [`counter=${SERVICES.counter}`, `room=${SERVICES.room}`];
      const args = [
        'host',
        '--store',
        dbPath,
        '--listen',
        spec.listen ?? 'ws://127.0.0.1:0',
        '--admin',
        '127.0.0.1:0',
        '--directory',
        cluster.directory.url,
        '--peer',
        '127.0.0.1:0',
        ...services.flatMap((s) => ['--service', s]),
        ...Object.entries(spec.labels ?? {}).flatMap(([k, v]) => ['--label', `${k}=${v}`]),
        ...(spec.advertisePeer ? ['--advertise-peer', spec.advertisePeer] : []),
        ...(spec.args ?? []),
      ];
      const p = track(await startRoam(args, { ...env, ...spec.env }));
      const h: ClusterHost = Object.assign(p, {
        id: String(p.info.id),
        clientUrl: (p.info.listen as string[])[0] as string,
        peerUrl: String(p.info.peer),
      });
      cluster.hosts.push(h);
      return h;
    },
    async startGateway(listen = ['ws://127.0.0.1:0']) {
      const p = track(
        await startRoam(
          ['gateway', ...listen.flatMap((l) => ['--listen', l]), '--directory', cluster.directory.url, '--json'],
          env,
        ),
      );
      return Object.assign(p, { urls: p.info.listen as string[] });
    },
    async restartDirectory() {
      const port = new URL(cluster.directory.url).port;
      cluster.directory.kill('SIGKILL');
      await cluster.directory.exited;
      cluster.directory = await startDirectory(`127.0.0.1:${port}`);
    },
    diagnose() {
      const named = [
        ['directory', cluster.directory] as const,
        ...cluster.hosts.map((h, i) => [`host ${i} ${h.id}`, h] as const),
      ];
      return named.map(([name, p]) => `${name} (pid ${p.child.pid}):\n${kernelState(p.child.pid ?? 0)}`).join('\n');
    },
    async close() {
      if (PROFILING) {
        // SIGTERM: a host drains what it still holds (nothing, at the end of a run) and exits.
        for (const p of procs) p.kill('SIGTERM');
        await Promise.race([
          Promise.all([...procs].map((p) => p.exited)),
          new Promise((r) => setTimeout(r, 20_000).unref()),
        ]);
      }
      for (const p of procs) p.kill('SIGKILL');
      await Promise.all([...procs].map((p) => p.exited));
      await dir.cleanup();
    },
  };
  const specs =
    typeof opts.hosts === 'number' || opts.hosts === undefined ? Array(opts.hosts ?? 3).fill({}) : opts.hosts;
  try {
    // One at a time: each `tsx` start compiles the CLI, and two cores are plenty busy with that.
    for (const s of specs as HostSpec[]) await cluster.addHost(s);
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}

/** The instance of a client's session, and the host that runs it, as the directory sees them. */
export async function whereIs(cluster: Cluster, sid: string): Promise<{ instance: string; host: string }> {
  const { sessions } = await cluster.api<{ sessions: Array<{ session: string; instance: string; host: string }> }>(
    `/api/sessions?id=${sid}`,
  );
  const s = sessions.find((x) => x.session === sid);
  if (!s) throw new Error(`session ${sid} is not on any host`);
  return { instance: s.instance, host: s.host };
}

/** Hosts that list the instance (the directory's fan-out; dead hosts do not answer). */
export async function holders(cluster: Cluster, instance: string): Promise<string[]> {
  const { instances } = await cluster.api<{ instances: Array<{ instance: string; host: string }> }>('/api/instances');
  return instances.filter((i) => i.instance === instance).map((i) => i.host);
}

export async function location(cluster: Cluster, instance: string): Promise<LocationRecord | undefined> {
  const store = await openSqliteStore({ path: cluster.dbPath });
  try {
    const e = await store.get(ClusterKeys.location(instance));
    return e ? decodeJson<LocationRecord>(e.value) : undefined;
  } finally {
    await store.close();
  }
}

/**
 * A `stream` session on `host` (or through `via`, a gateway URL) that ticks at 1 kHz and sends
 * its own numbers every 2 ms; resolves once it flows, with the instance it runs in.
 */
export async function streaming(
  t: { after(fn: () => unknown): void },
  cluster: Cluster,
  host: ClusterHost,
  via?: string,
) {
  const s = connect(via ?? host.clientUrl, { service: 'stream', reconnect: { initialDelayMs: 5, maxDelayMs: 50 } });
  t.after(() => s.close());
  const c = streamClient(s);
  await s.ready;
  s.send('fill 64 1024');
  s.send('start 1 1024');
  c.startSending(2);
  await c.until(30);
  const { sessions } = await cluster.api<{ sessions: Array<{ session: string; instance: string }> }>(
    `/api/sessions?id=${s.id}`,
  );
  const instance = sessions[0]?.instance as string;
  assert.ok(instance);
  return { s, c, instance };
}

/**
 * Subscribes to the directory's event stream and, once subscribed (its `hello` arrived, so no
 * later event is missed), gives the promise of the first migration record of `instance` that
 * `accept` takes. Hosts report migrations to the directory in batches, so a client can be served
 * at its new host before the record is there: wait for the event rather than read the history.
 */
export async function migrationRecord(
  cluster: Cluster,
  t: { after(fn: () => unknown): void },
  instance: string,
  accept: (m: MigrationRecord) => boolean = () => true,
): Promise<{ record: Promise<MigrationRecord> }> {
  const ac = new AbortController();
  t.after(() => ac.abort());
  const events = readEvents(cluster.directory.url, { secret: cluster.secretBytes, signal: ac.signal });
  const first = await events.next();
  if (first.value?.type !== 'hello') throw new Error('the directory event stream did not start with hello');
  const record = (async () => {
    for await (const ev of events) {
      if (ev.type === 'migration' && ev.migration.instances.includes(instance) && accept(ev.migration)) {
        return ev.migration;
      }
    }
    throw new Error(`event stream ended before a migration record of ${instance}`);
  })();
  record.catch(() => {});
  // Wrapped: an async function would otherwise wait for the record itself.
  return { record };
}
