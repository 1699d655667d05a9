import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type Session } from '../client/node.js';
import { Directory } from '../directory/index.js';
import { Gateway } from '../gateway/index.js';
import { Host, type ServiceModule } from '../host/host.js';
import { createLogger, type Logger } from '../host/logger.js';
import { openSqliteStore, type Store } from '../store/index.js';
import {
  clusterFetch,
  type HostRecord,
  loadOrCreateIdentity,
  type MigrationRecord,
  newClusterSecret,
  parseClusterSecret,
} from '../transport/cluster.js';
import { RoamError } from '../wire/index.js';
import { bytes, labels as formatLabels, paint, shortId, table } from './format.js';
import { Failure } from './operator.js';

/**
 * `roam dev`: a whole cluster in one process — a directory on an embedded SQLite Store, N hosts
 * running the example services, a gateway — plus a small demo load that keeps sessions busy and
 * moves one every ten seconds, so a newcomer sees sessions migrate without losing a message.
 *
 * @module
 */

export interface DevOptions {
  /** Directory port (API, dashboard). */
  port: number;
  gatewayPort: number;
  hosts: number;
  /** SQLite file; default a temp dir removed on exit. */
  store?: string;
  demo: boolean;
  json?: boolean;
  /** Seconds between demo migrations. */
  moveEveryS: number;
}

/** The example services every dev host runs (their source is in examples/services/). */
export const DEV_SERVICES: ServiceModule[] = ['counter', 'chat', 'stream'].map((name) => ({
  name,
  module: new URL(`../../examples/services/${name}.ts`, import.meta.url),
}));

/** What `roam dev --json` prints (one line). */
export interface DevInfo {
  directory: string;
  dashboard: string;
  gateway: string;
  hosts: Array<{ id: string; clientUrl: string; peerUrl: string; labels: Record<string, string> }>;
  secret: string;
  store: string;
  services: string[];
  demo: boolean;
}

const inUse = (err: unknown): boolean =>
  /EADDRINUSE/.test(String((err as Error)?.message)) ||
  (err as { cause?: { code?: string } })?.cause?.code === 'EADDRINUSE';

const zone = (i: number): string =>
  i < 26 ? String.fromCharCode(97 + i) : `${String.fromCharCode(97 + Math.floor(i / 26) - 1)}${zone(i % 26)}`;

/** Runs the local cluster until `stopped` resolves, then takes it all down. */
export async function runDev(opts: DevOptions, version: string, stopped: Promise<void>): Promise<void> {
  // The example services are TypeScript: workers load them through tsx, which only a CLI run
  // from source sets up (bin/roam.js runs `dev` from source whenever the checkout has it).
  if (!import.meta.url.endsWith('.ts') || !existsSync(fileURLToPath(DEV_SERVICES[0]?.module as URL))) {
    throw new RoamError(
      'INVALID_STATE',
      'roam dev runs the example services from source (examples/services/*.ts): run it in a roam checkout with `npm start`',
    );
  }
  const log = createLogger('roam-dev', process.env.ROAM_LOG_LEVEL ?? 'warn');
  const cleanups: Array<() => Promise<unknown>> = [];
  const teardown = async () => {
    for (const fn of cleanups.reverse()) {
      await fn().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'roam dev: cleanup step failed'));
    }
  };
  try {
    const info = await start(opts, log, cleanups);
    const say = opts.json ? (s: string) => process.stderr.write(s) : (s: string) => process.stdout.write(s);
    let demo: Demo | undefined;
    if (opts.demo) {
      demo = new Demo(info, log, say, opts.moveEveryS);
      cleanups.push(() => demo?.stop() ?? Promise.resolve());
      await demo.start();
    }
    if (opts.json) process.stdout.write(`${JSON.stringify(info)}\n`);
    else process.stdout.write(banner(info, version, demo));
    await stopped;
    if (!opts.json) process.stdout.write('\nstopping…\n');
    demo?.report('at exit');
    await teardown();
    if (!opts.json) process.stdout.write('roam dev stopped.\n');
  } catch (err) {
    await teardown();
    throw err;
  }
}

async function start(opts: DevOptions, log: Logger, cleanups: Array<() => Promise<unknown>>): Promise<DevInfo> {
  let dbPath: string;
  if (opts.store) {
    dbPath = resolvePath(opts.store);
  } else {
    const dir = await mkdtemp(join(tmpdir(), 'roam-dev-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    dbPath = join(dir, 'roam.db');
  }
  const open = async (): Promise<Store> => {
    // Every member has its own connection to the one file. `normal`: a commit survives any crash
    // of this process (WAL); only an OS crash could lose the last ones — fine for a dev cluster.
    const store = await openSqliteStore({ path: dbPath, synchronous: 'normal' });
    cleanups.push(() => store.close());
    return store;
  };

  const secretHex = newClusterSecret();
  const secret = parseClusterSecret(secretHex);

  const directory = await Directory.start({
    store: await open(),
    secret,
    listen: `127.0.0.1:${opts.port}`,
    logger: log,
  }).catch((err: unknown) => {
    if (inUse(err)) {
      throw new Failure(
        'PORT_IN_USE',
        `the directory's port ${opts.port} is taken (another roam dev?): pass --port 0 to pick a free one`,
      );
    }
    throw err;
  });
  cleanups.push(() => directory.close());

  const hosts = await Promise.all(
    Array.from({ length: opts.hosts }, async (_, i) => {
      const store = await open();
      const host = await Host.start({
        store,
        services: DEV_SERVICES,
        labels: { zone: zone(i) },
        logger: log.child({ host: i }),
        cluster: {
          secret,
          identity: loadOrCreateIdentity(),
          directory: directory.url,
          peerListen: '127.0.0.1:0',
        },
      });
      // Registered after the store's closer, so it runs before it (cleanups run last first).
      cleanups.push(() => host.close());
      const client = await host.listen('ws://127.0.0.1:0');
      const { peerUrl } = await host.join();
      return { host, clientUrl: client.url, peerUrl, labels: { zone: zone(i) } };
    }),
  );

  const gateway = await Gateway.start({
    listen: [`ws://127.0.0.1:${opts.gatewayPort}`],
    secret,
    directory: directory.url,
    logger: log,
  }).catch((err: unknown) => {
    if (inUse(err)) {
      throw new Failure(
        'PORT_IN_USE',
        `the gateway's port ${opts.gatewayPort} is taken (another roam dev?): pass --gateway-port 0 to pick a free one`,
      );
    }
    throw err;
  });
  cleanups.push(() => gateway.close());

  return {
    directory: directory.url,
    dashboard: `${directory.url}/`,
    gateway: gateway.urls[0] as string,
    hosts: hosts.map((h) => ({ id: h.host.id, clientUrl: h.clientUrl, peerUrl: h.peerUrl, labels: h.labels })),
    secret: secretHex,
    store: dbPath,
    services: DEV_SERVICES.map((s) => s.name),
    demo: opts.demo,
  };
}

function banner(info: DevInfo, version: string, demo: Demo | undefined): string {
  const b = (s: string) => paint('bold', s);
  const examples = fileURLToPath(new URL('../../examples/services/', import.meta.url));
  const defaultDirectory = info.directory === 'http://127.0.0.1:7070';
  let s = `${b(`roam dev ${version}`)}: a local cluster in one process\n\n`;
  const rows: Array<[string, string, string]> = [
    ['directory', info.directory, 'API and dashboard'],
    ['gateway', info.gateway, 'clients connect here: connect(url, { service })'],
    ['services', info.services.join(', '), `source in ${examples}`],
    ['store', info.store, ''],
    ['secret', info.secret, '(a dev secret, new each run)'],
  ];
  for (const [k, v, note] of rows) s += `  ${k.padEnd(10)} ${v}${note ? `  ${paint('dim', note)}` : ''}\n`;
  s += `\n${b('hosts')}\n`;
  s += table(
    ['HOST', 'LABELS', 'CLIENT URL', 'PEER URL'],
    info.hosts.map((h) => [shortId(h.id), formatLabels(h.labels), h.clientUrl, h.peerUrl]),
    { indent: '  ' },
  );
  if (demo) {
    s += `\n${b('demo')}: ${demo.describe()}\n  (--no-demo to run without it)\n`;
  }
  const env = defaultDirectory ? '' : `ROAM_DIRECTORY=${info.directory} `;
  const first = info.hosts[0] ? shortId(info.hosts[0].id).slice(0, 6) : '<host>';
  s += `\n${b('try')} (in another terminal)\n`;
  s += `  ${env}roam hosts\n`;
  s += `  ${env}roam instances\n`;
  s += `  ${env}roam migrate <instance>        # move one live; its clients notice nothing\n`;
  s += `  ${env}roam drain ${first}              # empty a host\n`;
  s += `  ${env}roam why <instance>\n`;
  s += '\nCtrl-C to stop.\n\n';
  return s;
}

// ---------------------------------------------------------------------------------------------
// The demo load

interface DemoClient {
  service: 'counter' | 'chat' | 'stream';
  label: string;
  session: Session;
  /** Last index (counter, stream) or room line number (chat) received; undefined before the first. */
  last: number | undefined;
}

const ROOMS = ['lobby', 'dev', 'random'];
const dec = new TextDecoder();

/**
 * A few dozen in-process clients on counter, chat and stream through the gateway, checking that
 * every index arrives exactly once and in order, and a migration of a random instance every few
 * seconds. Any loss, duplicate or lost session is reported in the log (there should be none).
 */
class Demo {
  private readonly clients: DemoClient[] = [];
  private received = 0;
  private problems = 0;
  private moves = 0;
  private resplices = 0;
  private moveTimer: NodeJS.Timeout | undefined;
  private chatTimer: NodeJS.Timeout | undefined;
  private reportTimer: NodeJS.Timeout | undefined;
  private moving = false;
  private stopped = false;
  private readonly secret: Uint8Array;

  constructor(
    private readonly info: DevInfo,
    private readonly log: Logger,
    private readonly say: (s: string) => void,
    private readonly moveEveryS: number,
  ) {
    this.secret = parseClusterSecret(info.secret);
  }

  describe(): string {
    const n = (s: string) => this.clients.filter((c) => c.service === s).length;
    return (
      `${this.clients.length} clients through the gateway (${n('counter')} counter, ${n('chat')} chat in ` +
      `${ROOMS.length} rooms, ${n('stream')} stream),\n  a random instance moved to another host every ` +
      `${this.moveEveryS} s; any lost or repeated message is reported here`
    );
  }

  private line(s: string): void {
    const t = new Date().toTimeString().slice(0, 8);
    this.say(`[${t}] demo: ${s}\n`);
  }

  async start(): Promise<void> {
    const url = this.info.gateway;
    const add = (service: DemoClient['service'], label: string, key?: string) => {
      const session = connect(url, {
        service,
        ...(key ? { key } : {}),
        reconnect: { initialDelayMs: 20, maxDelayMs: 1000 },
      });
      const c: DemoClient = { service, label, session, last: undefined };
      this.watch(c);
      this.clients.push(c);
      return c;
    };
    for (let i = 0; i < 10; i++) add('counter', `counter#${i}`);
    for (let i = 0; i < 6; i++) add('stream', `stream#${i}`);
    // The first member of each room opens it; the others join once it exists, so the gateway
    // routes them all to the host that runs it.
    const members = (from: number) =>
      ROOMS.flatMap((room) => Array.from({ length: 4 - from }, (_, j) => ({ room, j: j + from })));
    const join = (list: Array<{ room: string; j: number }>) =>
      list.map(({ room, j }) => add('chat', `chat ${room}#${j}`, room).session.ready);
    await this.ready(Promise.all(join(members(0).filter((m) => m.j === 0))));
    await this.ready(Promise.all([...join(members(1)), ...this.clients.map((c) => c.session.ready)]));
    for (const c of this.clients) {
      if (c.service === 'counter') c.session.send('start 250');
      else if (c.service === 'stream') c.session.send('rate 20 256');
      else c.session.send(`/name ${c.label.replace(/[^a-z0-9#]/g, '')}`);
    }
    // Members of the chat rooms say something now and then.
    this.chatTimer = setInterval(() => {
      const chatters = this.clients.filter((c) => c.service === 'chat' && c.session.state === 'open');
      const who = chatters[Math.floor(Math.random() * chatters.length)];
      who?.session.send(`hello from ${who.label} at ${new Date().toISOString().slice(11, 19)}`);
    }, 700);
    this.moveTimer = setInterval(() => void this.moveOne(), this.moveEveryS * 1000);
    this.reportTimer = setInterval(() => this.report(), 60_000);
  }

  /** Waits for clients to be open, for at most 20 s. */
  private async ready(all: Promise<unknown>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new RoamError('UNAVAILABLE', 'demo clients did not connect within 20 s')),
        20_000,
      );
    });
    try {
      await Promise.race([all, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private watch(c: DemoClient): void {
    const s = c.session;
    s.on('message', (data, channel) => {
      if (channel !== 0) return;
      const text = dec.decode(data);
      let n: number;
      if (c.service === 'chat') {
        try {
          n = (JSON.parse(text) as { n: number }).n;
        } catch {
          return;
        }
      } else {
        const space = text.indexOf(' ');
        n = Number(space < 0 ? text : text.slice(0, space));
      }
      this.received++;
      // Chat: the first live line sets the start (the history came on channel 1).
      if (c.last !== undefined && n !== c.last + 1) {
        this.problems++;
        this.line(paint('red', `LOSS on ${c.label} (${s.id?.slice(0, 8)}): expected ${c.last + 1}, got ${n}`));
        this.log.error({ client: c.label, expected: c.last + 1, got: n }, 'demo: message lost or repeated');
      }
      c.last = c.last === undefined ? n : Math.max(c.last, n);
    });
    s.on('resumed', () => {
      this.resplices++;
    });
    s.on('lost', (e) => {
      if (this.stopped) return;
      this.problems++;
      this.line(paint('red', `session of ${c.label} LOST: ${e.code} ${e.message}`));
    });
  }

  private async moveOne(): Promise<void> {
    if (this.moving || this.stopped) return;
    this.moving = true;
    const api = <T>(path: string, body?: unknown) =>
      clusterFetch<T>(this.info.directory, path, {
        secret: this.secret,
        ...(body === undefined ? {} : { body }),
        timeoutMs: 30_000,
      });
    try {
      const [{ instances }, { hosts }] = await Promise.all([
        api<{ instances: Array<{ instance: string; service: string; host: string; sessions: number }> }>(
          '/api/instances',
        ),
        api<{ hosts: HostRecord[] }>('/api/hosts'),
      ]);
      const movable = instances.filter((i) => i.sessions > 0);
      const inst = movable[Math.floor(Math.random() * movable.length)];
      if (!inst) return;
      const others = hosts.filter((h) => h.id !== inst.host && h.status === 'up');
      const to = others[Math.floor(Math.random() * others.length)];
      if (!to) return;
      const rec = await api<MigrationRecord>('/api/migrate', { instance: inst.instance, to: to.id });
      this.moves++;
      this.line(
        `moved ${inst.service} ${inst.instance} ${shortId(rec.from)} -> ${shortId(rec.to)}: ` +
          `${rec.sessions} session${rec.sessions === 1 ? '' : 's'}, ${bytes(rec.stateBytes)} of state, ` +
          `${rec.endedAt - rec.startedAt} ms (frozen ${Math.round(rec.phases.freezeMs)} ms); ` +
          `${this.received} messages in order so far, ${this.problems} lost`,
      );
    } catch (err) {
      if (!this.stopped) {
        this.line(
          `a move failed (the instance stays where it was): ${(err as RoamError).code ?? ''} ${(err as Error).message}`,
        );
      }
    } finally {
      this.moving = false;
    }
  }

  report(when = ''): void {
    this.line(
      `${when ? `${when}: ` : ''}${this.clients.length} clients, ${this.received} messages received, ` +
        `${this.problems} lost or repeated, ${this.moves} migrations, ${this.resplices} resumes`,
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.moveTimer);
    clearInterval(this.chatTimer);
    clearInterval(this.reportTimer);
    for (const c of this.clients) c.session.close('roam dev stopping');
  }
}
