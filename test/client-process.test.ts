import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { it } from 'node:test';
import { builtinServices, SessionServer, silentLogger } from '../src/host/index.js';

const CLIENT = new URL('./support/client-process.ts', import.meta.url).pathname;

it('a Node client stays alive while it resumes, instead of exiting with a suspended session', async (t) => {
  const first = new SessionServer({ services: builtinServices(), logger: silentLogger() });
  const l = await first.listen('tcp://127.0.0.1:0');
  const child = spawn(process.execPath, ['--import', 'tsx', CLIENT, l.url, 'echo'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => child.kill('SIGKILL'));
  const events: string[] = [];
  const lines = createInterface({ input: child.stdout });
  const next = (type: string): Promise<void> =>
    new Promise((resolve) => {
      const on = (line: string): void => {
        events.push((JSON.parse(line) as { type: string }).type);
        if (events.at(-1) === type) {
          lines.off('line', on);
          resolve();
        }
      };
      lines.on('line', on);
    });
  const exited = once(child, 'exit');
  await next('open');
  // The server vanishes without a goodbye: sockets destroyed, nothing listening.
  const suspended = next('suspended');
  await l.close();
  await suspended;
  // A new server on the same port does not know the session: the client must learn that (lost),
  // which it can only do if it stayed alive while nothing was listening.
  const second = new SessionServer({ services: builtinServices(), logger: silentLogger() });
  t.after(() => second.close());
  await second.listen(`tcp://127.0.0.1:${l.port}`);
  await Promise.race([
    next('lost'),
    exited.then(() => assert.fail(`client exited while resuming; events: ${events.join(', ')}`)),
  ]);
  const [code] = await exited;
  assert.equal(code, 0);
  assert.deepEqual(events, ['open', 'suspended', 'lost']);
  await first.close();
});
