import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { it } from 'node:test';
import { clusterFetch, parseClusterSecret } from '../src/transport/cluster.js';
import { NODE_ARGS, ROAM, roam } from './support/cli.js';
import { tempDir } from './support/server.js';

it('roam directory --help shows an example', async () => {
  const { code, stdout } = await roam(['directory', '--help']);
  assert.equal(code, 0);
  assert.match(stdout, /--store <path>/);
  assert.match(stdout, /Example:\n {2}\$ export ROAM_CLUSTER_SECRET/);
});

it('roam directory serves until SIGTERM, with the secret from the environment', async (t) => {
  const tmp = await tempDir('roam-directory-cli-');
  t.after(() => tmp.cleanup());
  const secret = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
  const child = spawn(
    process.execPath,
    [...NODE_ARGS, ROAM, 'directory', '--store', join(tmp.path, 'd.db'), '--listen', '127.0.0.1:0', '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ROAM_CLUSTER_SECRET: secret, ROAM_LOG_LEVEL: 'warn' } },
  );
  const exited = once(child, 'exit');
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const [line] = (await once(createInterface({ input: child.stdout }), 'line')) as [string];
  const info = JSON.parse(line) as { url: string; secret?: string };
  assert.equal(info.secret, undefined, 'no secret printed when one was given');
  assert.deepEqual(await clusterFetch(info.url, '/api/hosts', { secret: parseClusterSecret(secret) }), { hosts: [] });
  // The operator API has no token here: open (loopback).
  assert.deepEqual(await clusterFetch(info.url, '/api/hosts'), { hosts: [] });
  child.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0);
});

it('roam directory generates a secret and says so when none is given', async (t) => {
  const tmp = await tempDir('roam-directory-cli-');
  t.after(() => tmp.cleanup());
  const env: NodeJS.ProcessEnv = { ...process.env, ROAM_LOG_LEVEL: 'warn' };
  delete env.ROAM_CLUSTER_SECRET;
  const child = spawn(
    process.execPath,
    [...NODE_ARGS, ROAM, 'directory', '--store', join(tmp.path, 'd.db'), '--listen', '127.0.0.1:0', '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'], env },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = once(child, 'exit');
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const [line] = (await once(createInterface({ input: child.stdout }), 'line')) as [string];
  const info = JSON.parse(line) as { url: string; secret: string };
  assert.match(info.secret, /^[0-9a-f]{64}$/);
  assert.deepEqual(await clusterFetch(info.url, '/api/hosts', { secret: parseClusterSecret(info.secret) }), {
    hosts: [],
  });
  child.kill('SIGINT');
  await exited;
  assert.match(stderr, /warning: no --secret or ROAM_CLUSTER_SECRET given/);
  assert.ok(stderr.includes(info.secret));
});
