import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import type { InstanceInfo, SessionInfo } from '../directory/index.js';
import type { DrainStatus, MigrationRecord } from '../transport/cluster.js';
import { Api, type ApiCliOptions, apiOptions, followEvents } from './api.js';
import { ago, bytes, labels, ms, paint, percent, type Style, shortId, table } from './format.js';
import { phaseText, phaseValue, progressBar, showProgress } from './progress.js';

/**
 * The operator's commands: they talk to the directory's API (docs/directory.md) and print tables
 * for people or one JSON document (`--json`) for scripts.
 *
 * @module
 */

/** A failed operation that is not a RoamError from the directory (e.g. a drain that ended `failed`): exit 1. */
export class Failure extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const out = (s: string): void => {
  process.stdout.write(s);
};
const json = (v: unknown): void => out(`${JSON.stringify(v, null, 2)}\n`);
const warn = (s: string): void => {
  process.stderr.write(`roam: warning: ${s}\n`);
};

function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${name} wants a positive integer`);
    return n;
  };
}

function statusStyle(s: string): Style | undefined {
  if (s === 'up' || s === 'committed' || s === 'done') return 'green';
  if (s === 'suspect' || s === 'running') return 'yellow';
  if (s === 'leaving') return 'cyan';
  if (s === 'aborted' || s === 'refused' || s === 'failed') return 'red';
  return undefined;
}

function coloured(s: string): string {
  const style = statusStyle(s);
  return style ? paint(style, s) : s;
}

function unreachable(list: string[] | undefined): void {
  if (list && list.length > 0) warn(`no answer from ${list.map(shortId).join(', ')}: their rows are missing`);
}

// ---------------------------------------------------------------------------------------------
// roam hosts / instances / sessions

async function hostsCommand(opts: ApiCliOptions): Promise<void> {
  const api = new Api(opts);
  const hosts = await api.hosts();
  if (opts.json) return json({ hosts });
  if (hosts.length === 0) return out('no hosts have joined this directory\n');
  out(
    table(
      ['HOST', 'STATUS', 'CLIENT URL', 'LABELS', 'SESSIONS', 'CPU', 'LOOP P99', 'RSS'],
      hosts.map((h) => [
        shortId(h.id),
        coloured(h.status),
        h.clientUrl,
        labels(h.labels),
        `${h.metrics.sessions}/${h.capacity}`,
        percent(h.metrics.cpu),
        ms(h.metrics.loopDelayP99Ms),
        bytes(h.metrics.rssBytes),
      ]),
      { align: ['left', 'left', 'left', 'left', 'right', 'right', 'right', 'right'] },
    ),
  );
}

async function instancesCommand(opts: ApiCliOptions & { host?: string; service?: string }): Promise<void> {
  const api = new Api(opts);
  const res = await api.get<{ instances: InstanceInfo[]; unreachable: string[] }>('/api/instances');
  let rows = res.instances;
  if (opts.host !== undefined) {
    const h = await api.resolveHost(opts.host);
    rows = rows.filter((i) => i.host === h.id);
  }
  if (opts.service !== undefined) rows = rows.filter((i) => i.service === opts.service);
  rows.sort((a, b) => a.service.localeCompare(b.service) || a.instance.localeCompare(b.instance));
  unreachable(res.unreachable);
  if (opts.json) return json({ instances: rows, unreachable: res.unreachable });
  if (rows.length === 0) return out('no instances running\n');
  out(
    table(
      ['INSTANCE', 'SERVICE', 'HOST', 'SESSIONS', 'STATE', 'EPOCH'],
      rows.map((i) => [
        i.instance,
        i.service,
        shortId(i.host),
        String(i.sessions),
        bytes(i.stateBytes),
        String(i.epoch),
      ]),
      { align: ['left', 'left', 'left', 'right', 'right', 'right'] },
    ),
  );
}

async function sessionsCommand(opts: ApiCliOptions & { host?: string }): Promise<void> {
  const api = new Api(opts);
  const res = await api.get<{ sessions: SessionInfo[]; unreachable: string[] }>('/api/sessions');
  let rows = res.sessions;
  if (opts.host !== undefined) {
    const h = await api.resolveHost(opts.host);
    rows = rows.filter((s) => s.host === h.id);
  }
  rows.sort((a, b) => a.instance.localeCompare(b.instance) || a.session.localeCompare(b.session));
  unreachable(res.unreachable);
  if (opts.json) return json({ sessions: rows, unreachable: res.unreachable });
  if (rows.length === 0) return out('no sessions\n');
  out(
    table(
      ['SESSION', 'SERVICE', 'INSTANCE', 'HOST', 'STATE', 'REMOTE'],
      rows.map((s) => [s.session, s.service, s.instance, shortId(s.host), s.state, s.remote ?? '-']),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// roam migrate

/** The human summary of a migration record. */
export function migrationSummary(m: MigrationRecord): string {
  const lines: string[] = [];
  const total = m.endedAt - m.startedAt;
  lines.push(
    `migration ${m.id}: ${coloured(m.outcome)}${m.code ? ` (${m.code}${m.message ? `: ${m.message}` : ''})` : ''}`,
  );
  lines.push(
    `  ${m.service} ${m.instances.join(', ')}: ${shortId(m.from)} -> ${shortId(m.to)}` +
      `${m.epoch !== undefined ? `, epoch ${m.epoch}` : ''}, ${m.sessions} session${m.sessions === 1 ? '' : 's'}, ${total} ms, reason ${m.reason}`,
  );
  const p = m.phases;
  const phases = [
    ['negotiate', ms(p.negotiateMs)],
    ['precopy', ms(p.precopyMs)],
    ['freeze', ms(p.freezeMs)],
    // Freeze until serving at the destination: the freeze without the verdict's trip back.
    ...(p.freezeSteps?.downtimeMs !== undefined ? [['downtime', ms(p.freezeSteps.downtimeMs)]] : []),
    ['commit', ms(p.commitMs)],
    // Clients still away when the gap was reported: the gap is at least what they had waited.
    ...(p.clientGapMs !== undefined ? [['client gap', `${p.clientsLate ? '>= ' : ''}${ms(p.clientGapMs)}`]] : []),
  ];
  lines.push('');
  lines.push(
    table(
      phases.map((x) => (x[0] as string).toUpperCase()),
      [phases.map((x) => x[1] as string)],
      { indent: '  ', align: phases.map(() => 'right') },
    ).trimEnd(),
  );
  if (m.rounds.length > 0) {
    lines.push('');
    lines.push(
      table(
        ['ROUND', 'BYTES', 'KEYS', 'TIME'],
        m.rounds.map((r, i) => [String(i), bytes(r.bytes), String(r.keys), ms(r.ms)]),
        { indent: '  ', align: ['right', 'right', 'right', 'right'] },
      ).trimEnd(),
    );
  }
  lines.push('');
  lines.push(`  final dirty  ${bytes(m.finalDirtyBytes)}`);
  const ratio = m.stateBytes > 0 ? ` (${(m.bytesSent / m.stateBytes).toFixed(2)}x the state)` : '';
  lines.push(`  sent         ${bytes(m.bytesSent)} for ${bytes(m.stateBytes)} of state${ratio}`);
  if (m.throttleSteps > 0) lines.push(`  throttled    up to step ${m.throttleSteps} to converge`);
  const late = p.clientsLate ?? 0;
  if (late > 0) {
    lines.push(
      `  late         ${late} client${late === 1 ? '' : 's'} had not resumed at the destination when the gap was taken`,
    );
  }
  return `${lines.join('\n')}\n`;
}

async function migrateCommand(instance: string, opts: ApiCliOptions & { to?: string }): Promise<void> {
  const api = new Api(opts);
  const to = opts.to === undefined ? undefined : await api.resolveHost(opts.to, 'destination host');
  const bar = progressBar(`migrate ${instance}`, showProgress(opts.json));
  const ac = new AbortController();
  let following: Promise<void> = Promise.resolve();
  if (showProgress(opts.json)) {
    // Subscribe before asking, so no progress event is missed; the bar is a nicety: without the
    // stream the migration runs all the same.
    const events = followEvents(api, ['migration.progress'], ac.signal);
    try {
      await events.next();
      following = (async () => {
        for await (const ev of events) {
          if (ev.type === 'migration.progress' && ev.instances.includes(instance)) {
            bar.update(phaseValue(ev), 100, phaseText(ev));
          }
        }
      })().catch(() => {});
    } catch {
      await events.return(undefined);
    }
  }
  let rec: MigrationRecord;
  try {
    bar.update(0, 100, 'starting');
    rec = await api.post<MigrationRecord>('/api/migrate', { instance, ...(to ? { to: to.id } : {}) }, 130_000);
  } finally {
    ac.abort();
    await following;
    bar.stop();
  }
  // The destination reports the clients' gap once they resumed there, under the same id.
  if (rec.phases.clientGapMs === undefined && rec.sessions > 0) {
    const later = await api
      .get<{ migrations: MigrationRecord[] }>('/api/migrations?limit=100')
      .then((r) => r.migrations.find((m) => m.id === rec.id))
      .catch(() => undefined);
    if (later?.phases.clientGapMs !== undefined) rec = later;
  }
  if (opts.json) return json(rec);
  out(migrationSummary(rec));
}

// ---------------------------------------------------------------------------------------------
// roam drain

/** Where a drain's instances went: per destination host, instances and sessions. */
export interface Placement {
  host: string;
  instances: number;
  sessions: number;
}

function placementOf(records: Iterable<MigrationRecord>): Placement[] {
  const by = new Map<string, Placement>();
  for (const m of records) {
    if (m.outcome !== 'committed') continue;
    const p = by.get(m.to) ?? { host: m.to, instances: 0, sessions: 0 };
    p.instances += m.instances.length;
    p.sessions += m.sessions;
    by.set(m.to, p);
  }
  return [...by.values()].sort((a, b) => b.instances - a.instances || a.host.localeCompare(b.host));
}

/**
 * How long a drain froze its sessions: every session of a batch is frozen from the batch's freeze
 * until the destination serves it (the record's downtime), so this is each session's interruption
 * on the hosts' side. Over the committed batches that report it; undefined when none does.
 */
export interface Frozen {
  batches: number;
  p50Ms: number;
  maxMs: number;
}

export function frozenOf(records: Iterable<MigrationRecord>): Frozen | undefined {
  const ms: number[] = [];
  for (const m of records) {
    const d = m.phases.freezeSteps?.downtimeMs;
    if (m.outcome === 'committed' && d !== undefined) ms.push(d);
  }
  if (ms.length === 0) return undefined;
  ms.sort((a, b) => a - b);
  return { batches: ms.length, p50Ms: ms[Math.ceil(ms.length / 2) - 1] as number, maxMs: ms[ms.length - 1] as number };
}

async function drainCommand(
  hostArg: string,
  opts: ApiCliOptions & { deadlineMs?: number; concurrency?: number; batch?: number },
): Promise<void> {
  const api = new Api(opts);
  const host = await api.resolveHost(hostArg);
  const ac = new AbortController();
  const events = followEvents(api, ['drain', 'migration', 'host.left'], ac.signal);
  const records = new Map<string, MigrationRecord>();
  const bar = progressBar(`drain ${shortId(host.id)}`, showProgress(opts.json));
  let status: DrainStatus;
  try {
    // Subscribed (the `hello` came) before the drain starts: no event of it can be missed.
    await events.next();
    status = await api.post<DrainStatus>('/api/drain', {
      host: host.id,
      ...(opts.deadlineMs !== undefined ? { deadlineMs: opts.deadlineMs } : {}),
      ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}),
      ...(opts.batch !== undefined ? { batchSize: opts.batch } : {}),
    });
    const mine = (m: MigrationRecord) => m.reason === 'drain' && m.from === host.id && m.startedAt >= status.startedAt;
    const show = () =>
      bar.update(
        status.moved + status.failed,
        status.total,
        status.etaS === undefined ? '' : `| ~${Math.ceil(status.etaS)} s left`,
      );
    show();
    while (status.state === 'running') {
      const r = await events.next();
      if (r.done) break;
      const ev = r.value;
      if (ev.type === 'hello' && ev.reconnected) {
        // The directory came back: what happened meanwhile is in /api/drains and /api/migrations.
        const { drains } = await api.get<{ drains: DrainStatus[] }>('/api/drains');
        const d = drains.find((x) => x.id === status.id);
        if (d) status = d;
      } else if (ev.type === 'drain' && ev.drain.id === status.id) {
        status = ev.drain;
      } else if (ev.type === 'migration' && mine(ev.migration)) {
        records.set(ev.migration.id, ev.migration);
      } else if (ev.type === 'host.left' && ev.host === host.id) {
        throw new Failure('DRAIN_FAILED', `host ${shortId(host.id)} left the cluster before its drain finished`);
      }
      show();
    }
    // Records missed while the stream was down come from the history.
    const { migrations } = await api.get<{ migrations: MigrationRecord[] }>('/api/migrations?limit=1000');
    for (const m of migrations) if (mine(m) && !records.has(m.id)) records.set(m.id, m);
  } finally {
    ac.abort();
    await events.return(undefined);
    bar.stop();
  }
  const placement = placementOf(records.values());
  const frozen = frozenOf(records.values());
  const left = (await api.get<{ instances: InstanceInfo[] }>('/api/instances')).instances.filter(
    (i) => i.host === host.id,
  ).length;
  if (opts.json) json({ drain: status, placement, left, frozen: frozen ?? null });
  else out(drainSummary(status, placement, left, frozen));
  if (status.state !== 'done') {
    throw new Failure('DRAIN_FAILED', status.message ?? `drain of ${shortId(host.id)} ended ${status.state}`);
  }
}

/** The human summary of a finished drain. */
export function drainSummary(d: DrainStatus, placement: Placement[], left: number, frozen?: Frozen): string {
  const secs = ((d.endedAt ?? Date.now()) - d.startedAt) / 1000;
  const sessions = placement.reduce((a, p) => a + p.sessions, 0);
  let s = `drain ${d.id} of ${shortId(d.host)}: ${coloured(d.state)}${d.message ? ` (${d.message})` : ''}\n\n`;
  s += table(
    ['MOVED', 'FAILED', 'SUSPENDED', 'LEFT', 'SECONDS', 'SESSIONS', 'SESSIONS/S'],
    [
      [
        `${d.moved}/${d.total}`,
        String(d.failed),
        String(d.suspended),
        String(left),
        secs.toFixed(2),
        String(sessions),
        secs > 0 ? (sessions / secs).toFixed(1) : '-',
      ],
    ],
    { indent: '  ', align: ['right', 'right', 'right', 'right', 'right', 'right', 'right'] },
  );
  if (placement.length > 0) {
    s += `\n${table(
      ['DESTINATION', 'INSTANCES', 'SESSIONS'],
      placement.map((p) => [shortId(p.host), String(p.instances), String(p.sessions)]),
      { indent: '  ', align: ['left', 'right', 'right'] },
    )}`;
  }
  if (frozen) {
    s += `\n  each session frozen while its batch moved: p50 ${ms(frozen.p50Ms)}, max ${ms(frozen.maxMs)} (${frozen.batches} batch${frozen.batches === 1 ? '' : 'es'})\n`;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// roam why

async function whyCommand(instance: string, opts: ApiCliOptions & { limit: number }): Promise<void> {
  const api = new Api(opts);
  const [inst, hosts, hist] = await Promise.all([
    api.get<{ instances: InstanceInfo[]; unreachable: string[] }>('/api/instances'),
    api.hosts(),
    api.get<{ migrations: MigrationRecord[] }>('/api/migrations?limit=1000'),
  ]);
  const where = inst.instances.filter((i) => i.instance === instance);
  const moves = hist.migrations.filter((m) => m.instances.includes(instance)).slice(0, opts.limit);
  if (where.length === 0 && moves.length === 0) {
    if (inst.unreachable.length > 0) unreachable(inst.unreachable);
    throw new Failure(
      'NOT_FOUND',
      `no host that answered runs instance ${instance}, and no migration of it is on record` +
        ' (instances are named by `roam instances`)',
    );
  }
  if (opts.json) return json({ instance, location: where, migrations: moves, unreachable: inst.unreachable });
  const byId = new Map(hosts.map((h) => [h.id, h]));
  const describeHost = (id: string) => {
    const h = byId.get(id);
    return h
      ? `${shortId(id)} (${h.status}, ${labels(h.labels)}, ${h.clientUrl})`
      : `${shortId(id)} (not in the host table)`;
  };
  let s = '';
  const last = moves[0];
  if (where.length === 0) {
    s += `${instance} is not running on any host that answered.\n`;
    if (inst.unreachable.length > 0) s += `  Hosts that did not answer: ${inst.unreachable.map(shortId).join(', ')}.\n`;
    s += '  It may be suspended to the Store (no client attached for a while); a client that comes back restores it.\n';
  } else {
    for (const w of where) {
      s += `${instance} (${w.service}) runs on ${describeHost(w.host)}\n`;
      s += `  epoch ${w.epoch}, ${w.sessions} session${w.sessions === 1 ? '' : 's'}, ${bytes(w.stateBytes)} of state\n`;
    }
    if (where.length > 1) s += '  More than one host lists it: the one with the older epoch is being fenced.\n';
    const here = where[0] as InstanceInfo;
    if (!last) {
      s += '  It never migrated: it was placed there when its first session opened.\n';
    } else if (last.outcome === 'committed' && last.to === here.host) {
      s += `  It is there because of migration ${last.id} (${last.reason}) ${ago(last.endedAt)}.\n`;
    } else if (last.outcome === 'committed') {
      s += `  The last recorded migration took it to ${shortId(last.to)}; it has moved since without a record, or was restored elsewhere.\n`;
    } else {
      s += `  The last migration ${last.outcome === 'refused' ? 'was refused' : 'aborted'}, so it stayed where it was${last.code ? ` (${last.code})` : ''}.\n`;
    }
  }
  if (moves.length > 0) {
    s += `\nLast ${moves.length === 1 ? 'migration' : `${moves.length} migrations`} (newest first):\n`;
    s += table(
      ['WHEN', 'REASON', 'OUTCOME', 'FROM', 'TO', 'EPOCH', 'GAP', 'WHY'],
      moves.map((m) => [
        ago(m.endedAt),
        m.reason,
        coloured(m.outcome),
        shortId(m.from),
        shortId(m.to),
        m.epoch === undefined ? '-' : String(m.epoch),
        ms(m.phases.clientGapMs),
        m.code ? `${m.code}${m.message ? `: ${m.message}` : ''}` : '-',
      ]),
      { indent: '  ' },
    );
  }
  out(s);
}

// ---------------------------------------------------------------------------------------------

/** Adds the operator commands to the program. */
export function addOperatorCommands(program: Command): void {
  apiOptions(
    program
      .command('hosts')
      .description('list the hosts in the cluster: status, endpoint, labels, load')
      .addHelpText(
        'after',
        '\nExample:\n  $ roam hosts\n' +
          '  HOST          STATUS  CLIENT URL             LABELS  SESSIONS  CPU  LOOP P99    RSS\n' +
          '  3f1c2a9b8c7d  up      ws://127.0.0.1:40123   zone=a  12/100000  3%    1.2 ms  81 MiB\n',
      ),
  ).action(hostsCommand);

  apiOptions(
    program
      .command('instances')
      .description('list running instances: service, host, sessions, state size, epoch')
      .option('--host <id>', 'only on this host (id or unique prefix)')
      .option('--service <name>', 'only of this service')
      .addHelpText(
        'after',
        '\nExample:\n  $ roam instances --service chat\n  $ roam instances --json | jq .instances[0]\n',
      ),
  ).action(instancesCommand);

  apiOptions(
    program
      .command('sessions')
      .description('list live sessions: service, instance, host, state, client address')
      .option('--host <id>', 'only on this host (id or unique prefix)')
      .addHelpText('after', '\nExample:\n  $ roam sessions --host 3f1c\n'),
  ).action(sessionsCommand);

  apiOptions(
    program
      .command('migrate')
      .description('move an instance, with its sessions, live to another host')
      .argument('<instance>', 'instance id (see roam instances)')
      .option('--to <host>', 'destination host id or unique prefix (default: the least loaded that fits)')
      .addHelpText(
        'after',
        '\nExample:\n  $ roam migrate kbG9iYnk --to 77ab\n' +
          '  migration 9a0f3c2b1d4e5f60: committed\n    chat kbG9iYnk: 3f1c2a9b8c7d -> 77ab12cd34ef, epoch 2, 3 sessions, 21 ms, reason operator\n' +
          '\nOn a terminal a progress bar follows the phases (negotiate, precopy round n, freeze, commit).\n',
      ),
  ).action(migrateCommand);

  apiOptions(
    program
      .command('drain')
      .description('move every instance off a host (it stays up, marked leaving)')
      .argument('<host>', 'host id or unique prefix')
      .option('--deadline-ms <ms>', 'stop moving after this long', positiveInt('--deadline-ms'))
      .option('--concurrency <n>', 'migrations in flight at once (default 4)', positiveInt('--concurrency'))
      .option('--batch <n>', 'instances per migration (default 64)', positiveInt('--batch'))
      .addHelpText(
        'after',
        '\nExample:\n  $ roam drain 3f1c --concurrency 8\n' +
          '  drain 5e2a91c0d3b4 of 3f1c2a9b8c7d: done\n\n' +
          '    MOVED  FAILED  SUSPENDED  LEFT  SECONDS  SESSIONS  SESSIONS/S\n' +
          '    30/30       0          0     0     0.84        30        35.7\n\n' +
          '    DESTINATION   INSTANCES  SESSIONS\n    77ab12cd34ef         15        15\n    c0ffee123456         15        15\n' +
          '\nExit code 1 when the drain ends failed (deadline, no destination).\n',
      ),
  ).action(drainCommand);

  apiOptions(
    program
      .command('why')
      .description('explain where an instance is, and the migrations that took it there')
      .argument('<instance>', 'instance id (see roam instances)')
      .option('--limit <n>', 'migrations to show', positiveInt('--limit'), 5)
      .addHelpText(
        'after',
        '\nExample:\n  $ roam why kbG9iYnk\n' +
          '  kbG9iYnk (chat) runs on 77ab12cd34ef (up, zone=b, ws://127.0.0.1:40125)\n' +
          '    epoch 2, 3 sessions, 4.1 KiB of state\n' +
          '    It is there because of migration 9a0f3c2b1d4e5f60 (drain) 12 s ago.\n',
      ),
  ).action(whyCommand);
}
