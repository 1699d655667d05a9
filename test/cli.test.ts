import assert from 'node:assert/strict';
import { it } from 'node:test';
import { roam } from './support/cli.js';

// `roam dev` (the local cluster) is covered by test/dev.test.ts, the operator commands by
// test/cli-cluster.test.ts.

it('roam rejects bad arguments with a message and a non-zero exit code', async () => {
  const bad = await roam(['dev', '--port', '70000']);
  assert.equal(bad.code, 2, 'usage errors exit 2');
  assert.match(bad.stderr, /port is an integer in 0\.\.65535/);
  const unknown = await roam(['frobnicate']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown command/);
  const help = await roam(['dev', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Example:/);
});

it('roam bench runs the repository suites and refuses an unknown one', async () => {
  const help = await roam(['bench', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /roam bench migration --quick/);
  const unknown = await roam(['bench', 'nope']);
  assert.equal(unknown.code, 2, 'the runner says the suite is unknown and exits 2');
  assert.match(unknown.stderr, /unknown suite "nope"; available suites: session, suspend, migration, drain/);
});
