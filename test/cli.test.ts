import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { it } from 'node:test';
import { connect } from '../src/client/node.js';
import { NODE_ARGS, ROAM, roam } from './support/cli.js';

it('roam dev serves echo and counter, and stops cleanly on SIGINT', async (t) => {
  const p = spawn(process.execPath, [...NODE_ARGS, ROAM, 'dev', '--port', '0', '--json'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => p.kill('SIGKILL'));
  const lines = createInterface({ input: p.stdout });
  const [line] = (await once(lines, 'line')) as [string];
  const endpoints = JSON.parse(line) as { ws: string; tcp: string; services: string[] };
  assert.deepEqual(endpoints.services, ['echo', 'counter']);

  const s = connect(endpoints.tcp, { service: 'counter' });
  await s.ready;
  const got: number[] = [];
  s.send('start 5');
  while (got.length < 3) {
    got.push(Number(new TextDecoder().decode(await new Promise<Uint8Array>((r) => s.once('message', r)))));
  }
  assert.deepEqual(got, [1, 2, 3]);

  const closed = new Promise((r) => s.once('closed', r));
  p.kill('SIGINT');
  const [code] = await once(p, 'close');
  assert.equal(code, 0);
  const ev = (await closed) as { code: string; byPeer: boolean };
  assert.deepEqual([ev.code, ev.byPeer], ['GOING_AWAY', true], 'clients are told the server is going away');
});

it('roam rejects bad arguments with a message and a non-zero exit code', async () => {
  const bad = await roam(['dev', '--port', '70000']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /port is an integer in 0\.\.65535/);
  const unknown = await roam(['frobnicate']);
  assert.notEqual(unknown.code, 0);
  assert.match(unknown.stderr, /unknown command/);
  const help = await roam(['dev', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Example:/);
});
