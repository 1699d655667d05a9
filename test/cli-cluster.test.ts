import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Api, followEvents, UsageError } from '../src/cli/api.js';
import { bytes, ms, table } from '../src/cli/format.js';
import { describeError } from '../src/cli/main.js';
import { Failure } from '../src/cli/operator.js';
import { phaseText, phaseValue } from '../src/cli/progress.js';
import { connect, type Session } from '../src/client/node.js';
import { Directory, type InstanceInfo } from '../src/directory/index.js';
import { Host, silentLogger } from '../src/host/index.js';
import { openSqliteStore, type Store } from '../src/store/index.js';
import {
  type DrainStatus,
  type HostIdentity,
  type HostRecord,
  loadOrCreateIdentity,
  type MigrationRecord,
  newClusterSecret,
  parseClusterSecret,
} from '../src/transport/cluster.js';
import { RoamError } from '../src/wire/index.js';
import { roam } from './support/cli.js';
import { SERVICES } from './support/host.js';
import { tempDir } from './support/server.js';
import { type StreamClient, streamClient } from './support/stream-client.js';

/**
 * The operator commands against a real cluster: an in-process directory (with an operator token)
 * and two in-process hosts running the stream workload, on one SQLite file. The CLI runs as its
 * own process, as an operator would run it.
 */

const TOKEN = 'cli-test-operator-token';

/** Two host identities whose ids share their first hex digit, so that digit is an ambiguous prefix. */
function twoIdentitiesSharingAPrefix(): [HostIdentity, HostIdentity] {
  const seen = new Map<string, HostIdentity>();
  for (;;) {
    const id = loadOrCreateIdentity();
    const other = seen.get(id.id[0] as string);
    if (other) return [other, id];
    seen.set(id.id[0] as string, id);
  }
}

/** The shortest prefix of `id` that `other` does not share. */
function uniquePrefix(id: string, other: string): string {
  let i = 0;
  while (id[i] === other[i]) i++;
  return id.slice(0, i + 1);
}

interface Env {
  directory: Directory;
  hosts: Host[];
  stores: Store[];
  cleanup(): Promise<void>;
}

async function startEnv(): Promise<Env> {
  const dir = await tempDir('roam-cli-cluster-');
  const dbPath = join(dir.path, 'roam.db');
  const secret = parseClusterSecret(newClusterSecret());
  const stores: Store[] = [];
  const open = async () => {
    const s = await openSqliteStore({ path: dbPath, synchronous: 'normal' });
    stores.push(s);
    return s;
  };
  const directory = await Directory.start({ store: await open(), secret, token: TOKEN, logger: silentLogger() });
  const hosts: Host[] = [];
  for (const [i, identity] of twoIdentitiesSharingAPrefix().entries()) {
    const host = await Host.start({
      store: await open(),
      services: [{ name: 'stream', module: SERVICES.stream }],
      labels: { zone: i === 0 ? 'a' : 'b' },
      logger: silentLogger(),
      cluster: { secret, identity, directory: directory.url },
    });
    hosts.push(host);
    await host.listen('ws://127.0.0.1:0');
    await host.join();
  }
  return {
    directory,
    hosts,
    stores,
    async cleanup() {
      for (const h of hosts) await h.close();
      await directory.close();
      for (const s of stores) await s.close();
      await dir.cleanup();
    },
  };
}

describe('roam operator commands', { timeout: 180_000 }, () => {
  let env: Env;
  let a: Host;
  let b: Host;
  let session: Session;
  let client: StreamClient;
  let instance: string;
  /** `roam <args>` against the test directory, with the operator token. */
  const cli = (...args: string[]) => roam([...args, '--directory', env.directory.url, '--token', TOKEN]);
  const parse = <T>(r: { code: number | null; stdout: string; stderr: string }): T => {
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as T;
  };
  const instances = async () => parse<{ instances: InstanceInfo[] }>(await cli('instances', '--json')).instances;

  before(async () => {
    env = await startEnv();
    [a, b] = env.hosts as [Host, Host];
    const url = (await env.directory.hosts()).find((h) => h.id === a.id)?.clientUrl as string;
    session = connect(url, { service: 'stream', reconnect: { initialDelayMs: 5, maxDelayMs: 100 } });
    client = streamClient(session);
    await session.ready;
    session.send('start 2');
    client.startSending(5);
    await client.until(20);
  });

  after(async () => {
    client?.stopSending();
    session?.close();
    await env?.cleanup();
  });

  it('roam hosts lists both hosts, as JSON and as a table with headers', async () => {
    const { hosts } = parse<{ hosts: HostRecord[] }>(await cli('hosts', '--json'));
    assert.deepEqual(hosts.map((h) => h.id).sort(), [a.id, b.id].sort());
    assert.ok(hosts.every((h) => h.status === 'up'));

    const human = await cli('hosts');
    assert.equal(human.code, 0, human.stderr);
    const lines = human.stdout.trimEnd().split('\n');
    assert.match(lines[0] as string, /^HOST +STATUS +CLIENT URL +LABELS +SESSIONS +CPU +LOOP P99 +RSS$/);
    assert.equal(lines.length, 3);
    for (const h of [a, b]) {
      const row = lines.find((l) => l.startsWith(h.id.slice(0, 12)));
      assert.ok(row, `a row for ${h.id}`);
      assert.match(row, / up +ws:\/\/127\.0\.0\.1:\d+ +zone=[ab] +\d+\/100000 +\d+% +[\d.]+ ms +[\d.]+ [KMG]iB$/);
    }
    assert.ok(!human.stdout.includes('\u001b['), 'no colour when stdout is not a terminal');
  });

  it('roam instances and roam sessions list the client’s instance and session', async () => {
    const list = await instances();
    const mine = list.find((i) => i.host === a.id && i.service === 'stream');
    assert.ok(mine, JSON.stringify(list));
    instance = mine.instance;

    const human = await cli('instances');
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout.split('\n')[0] as string, /^INSTANCE +SERVICE +HOST +SESSIONS +STATE +EPOCH$/);
    assert.match(human.stdout, new RegExp(`^${instance} +stream +${a.id.slice(0, 12)} +1 +[\\d.]+ K?i?B +0$`, 'm'));

    const { sessions } = parse<{ sessions: Array<{ session: string; instance: string; host: string }> }>(
      await cli('sessions', '--json', '--host', uniquePrefix(a.id, b.id)),
    );
    assert.deepEqual(
      sessions.map((s) => [s.session, s.instance, s.host]),
      [[session.id, instance, a.id]],
    );
  });

  it('roam migrate --to <prefix> moves the instance live; the client notices nothing', async () => {
    const moved = new Promise<void>((resolve) => session.once('resumed', () => resolve()));
    // Signed with the cluster secret instead of the token would work too; the token is the operator's way.
    const rec = parse<MigrationRecord>(await cli('migrate', instance, '--to', uniquePrefix(b.id, a.id), '--json'));
    assert.equal(rec.outcome, 'committed');
    assert.deepEqual([rec.from, rec.to, rec.instances, rec.reason], [a.id, b.id, [instance], 'operator']);
    assert.equal(rec.epoch, 1);
    await moved;
    const after = (await instances()).filter((i) => i.instance === instance);
    assert.deepEqual(
      after.map((i) => [i.host, i.epoch]),
      [[b.id, 1]],
    );
    const mark = client.received;
    await client.until(mark + 30);
    await client.untilEchoed();
    assert.deepEqual(client.errors, []);
    assert.ok(client.control.includes('resumed:migrated'), client.control.join(' '));
  });

  it('roam why tells where the instance is and which migration took it there', async () => {
    const j = parse<{ location: InstanceInfo[]; migrations: MigrationRecord[] }>(await cli('why', instance, '--json'));
    assert.deepEqual(
      j.location.map((l) => l.host),
      [b.id],
    );
    assert.equal(j.migrations[0]?.reason, 'operator');
    const human = await cli('why', instance);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, new RegExp(`^${instance} \\(stream\\) runs on ${b.id.slice(0, 12)} \\(up, zone=b,`));
    assert.match(human.stdout, /It is there because of migration [0-9a-f]+ \(operator\)/);
    assert.match(human.stdout, /WHEN +REASON +OUTCOME +FROM +TO +EPOCH +GAP +WHY/);
  });

  it('errors: unknown instance exits 1 with NOT_FOUND; unknown or ambiguous prefixes and bad options exit 2', async () => {
    const [unknown, ambiguous, noSuchHost, badOption, badToken] = await Promise.all([
      cli('migrate', 'no-such-instance'),
      cli('migrate', instance, '--to', a.id[0] as string),
      cli('drain', 'zzzz'),
      cli('drain', b.id, '--concurrency', '0'),
      roam(['hosts', '--directory', env.directory.url, '--token', 'wrong']),
    ]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /^roam: NOT_FOUND: .*no-such-instance/);
    assert.equal(ambiguous.code, 2);
    assert.match(ambiguous.stderr, /^roam: USAGE: destination host prefix "[0-9a-f]" is ambiguous: it matches/);
    assert.ok(ambiguous.stderr.includes(a.id) && ambiguous.stderr.includes(b.id));
    assert.equal(noSuchHost.code, 2);
    assert.match(noSuchHost.stderr, /^roam: USAGE: no host matches "zzzz"/);
    assert.equal(badOption.code, 2);
    assert.match(badOption.stderr, /--concurrency wants a positive integer/);
    assert.equal(badToken.code, 1);
    assert.match(badToken.stderr, /^roam: UNAUTHORIZED: wrong bearer token/);
    // Nothing moved.
    assert.deepEqual(
      (await instances()).filter((i) => i.instance === instance).map((i) => i.host),
      [b.id],
    );
  });

  it('roam drain <prefix> moves everything off the host and reports where it went', async () => {
    const r = await cli('drain', uniquePrefix(b.id, a.id), '--json', '--concurrency', '2');
    const out = parse<{
      drain: DrainStatus;
      placement: Array<{ host: string; instances: number; sessions: number }>;
      left: number;
      frozen: { batches: number; p50Ms: number; maxMs: number } | null;
    }>(r);
    assert.equal(out.drain.state, 'done', JSON.stringify(out.drain));
    // Each committed batch measured how long its sessions were frozen.
    assert.ok(out.frozen && out.frozen.batches >= 1, JSON.stringify(out.frozen));
    assert.ok(out.frozen.p50Ms > 0 && out.frozen.maxMs >= out.frozen.p50Ms, JSON.stringify(out.frozen));
    assert.equal(out.drain.host, b.id);
    assert.ok(out.drain.total >= 1);
    assert.equal(out.drain.moved, out.drain.total);
    assert.equal(out.drain.failed, 0);
    assert.equal(out.left, 0);
    assert.deepEqual(out.placement, [{ host: a.id, instances: out.drain.total, sessions: 1 }]);
    assert.deepEqual(
      (await instances()).filter((i) => i.host === b.id),
      [],
      'nothing left on the drained host',
    );
    await client.flowsOn(30);
    assert.deepEqual(client.errors, []);
  });

  it('a drained host is leaving: it shows in roam hosts, and a second drain finds nothing to move', async () => {
    const human = await cli('hosts');
    assert.match(human.stdout, new RegExp(`^${b.id.slice(0, 12)} +leaving `, 'm'));
    const again = parse<{ drain: DrainStatus; placement: unknown[]; left: number }>(await cli('drain', b.id, '--json'));
    assert.deepEqual([again.drain.state, again.drain.total, again.left, again.placement], ['done', 0, 0, []]);
  });
});

describe('roam CLI pieces', () => {
  it('tables align columns under their headers', () => {
    const t = table(
      ['NAME', 'SIZE'],
      [
        ['a', '1'],
        ['longer', '1234'],
      ],
      { align: ['left', 'right'], colour: false },
    );
    assert.equal(t, 'NAME    SIZE\na          1\nlonger  1234\n');
    assert.equal(bytes(0), '0 B');
    assert.equal(bytes(4096), '4.0 KiB');
    assert.equal(bytes(50 * 1024 * 1024), '50 MiB');
    assert.equal(ms(3.14), '3.1 ms');
    assert.equal(ms(1840.4), '1840 ms');
  });

  it('progress text names the phase, the pre-copy round and the time left', () => {
    assert.equal(phaseText({ phase: 'negotiate' }), 'negotiate');
    assert.equal(phaseText({ phase: 'precopy', round: 2, etaMs: 41.6 }), 'precopy round 2, ~42 ms left');
    assert.ok(phaseValue({ phase: 'precopy', round: 0 }) < phaseValue({ phase: 'precopy', round: 3 }));
    assert.ok(phaseValue({ phase: 'precopy', round: 30 }) < phaseValue({ phase: 'freeze' }));
  });

  it('exit codes: 1 for a failed operation, 2 for a usage mistake', () => {
    assert.deepEqual(describeError(new RoamError('NOT_FOUND', 'no host holds instance x')), {
      code: 1,
      message: 'roam: NOT_FOUND: no host holds instance x',
    });
    assert.deepEqual(describeError(new Failure('DRAIN_FAILED', 'deadline reached')), {
      code: 1,
      message: 'roam: DRAIN_FAILED: deadline reached',
    });
    assert.deepEqual(describeError(new UsageError('ambiguous')), { code: 2, message: 'roam: USAGE: ambiguous' });
  });
});

describe('the CLI event follower', () => {
  it('reconnects when the directory restarts, and says so with a fresh hello', async (t) => {
    const dir = await tempDir('roam-cli-follow-');
    const store = await openSqliteStore({ path: join(dir.path, 'd.db') });
    const secretHex = newClusterSecret();
    const secret = parseClusterSecret(secretHex);
    let directory = await Directory.start({ store, secret, logger: silentLogger() });
    const ac = new AbortController();
    const events = followEvents(new Api({ directory: directory.url, secret: secretHex }), ['drain'], ac.signal);
    t.after(async () => {
      ac.abort();
      await events.return(undefined);
      await directory.close();
      await store.close();
      await dir.cleanup();
    });
    const first = await events.next();
    assert.equal(first.value?.type, 'hello');
    assert.equal(first.value?.reconnected, undefined);

    // Restart on the same port: the stream ends, the follower retries until the new one answers.
    const port = new URL(directory.url).port;
    await directory.close();
    directory = await Directory.start({ store, secret, listen: `127.0.0.1:${port}`, logger: silentLogger() });
    const again = await events.next();
    assert.equal(again.value?.type, 'hello');
    assert.equal(again.value?.reconnected, true);
  });
});
