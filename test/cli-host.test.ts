import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { it } from 'node:test';
import { connect } from '../src/client/node.js';
import { ROAM, roam } from './support/cli.js';
import { SERVICES } from './support/host.js';
import { nextEvent, tempDir } from './support/server.js';

const dec = new TextDecoder();

it('roam host serves a service; roam suspend moves a live session into the Store and the client resumes it', async (t) => {
  const dir = await tempDir();
  t.after(() => dir.cleanup());
  const host = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      ROAM,
      'host',
      '--store',
      `${dir.path}/roam.db`,
      '--listen',
      'tcp://127.0.0.1:0',
      '--service',
      `counter=${SERVICES.counter}`,
      '--admin',
      '127.0.0.1:0',
    ],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  t.after(() => host.kill('SIGKILL'));
  const [line] = (await once(createInterface({ input: host.stdout }), 'line')) as [string];
  const { listen, admin } = JSON.parse(line) as { listen: string[]; admin: string };

  const s = connect(listen[0] as string, { service: 'counter', reconnect: { initialDelayMs: 5 } });
  t.after(() => s.close());
  const got: number[] = [];
  const control: string[] = [];
  s.on('message', (d, ch) => (ch === 0 ? got.push(Number(dec.decode(d))) : control.push(dec.decode(d))));
  await s.ready;
  s.send('start 5');
  while (got.length < 5) await new Promise<void>((r) => s.once('message', () => r()));

  const resumed = nextEvent(s, 'resumed');
  const out = await roam(['suspend', s.id as string, '--host', admin, '--json']);
  assert.equal(out.code, 0, out.stderr);
  assert.deepEqual(JSON.parse(out.stdout), { suspended: { session: s.id } });
  await resumed;
  const n = got.length;
  while (got.length < n + 5) await new Promise<void>((r) => s.once('message', () => r()));
  assert.deepEqual(
    got,
    Array.from({ length: got.length }, (_, i) => i + 1),
    'contiguous across the suspension',
  );
  assert.deepEqual(control, ['resumed:restored']);

  const missing = await roam(['suspend', 'ffffffffffffffffffffffffffffffff', '--host', admin]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /UNKNOWN_SESSION/);

  host.kill('SIGTERM');
  const [code] = await once(host, 'exit');
  assert.equal(code, 0);
});
