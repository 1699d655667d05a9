import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { builtinServices, createLogger, SessionServer } from '../host/index.js';
import { RoamError } from '../wire/index.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/** Exit codes, documented in docs/cli.md. */
export const ExitCode = { OK: 0, FAILURE: 1, USAGE: 2 } as const;

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('a port is an integer in 0..65535');
  return n;
}

export function buildProgram(): Command {
  const program = new Command()
    .name('roam')
    .description('Migratable stateful network services: sessions that survive drops, address changes and moves.')
    .version(pkg.version)
    .showHelpAfterError();

  program
    .command('dev')
    .description('run a local roam server with the built-in services (echo, counter)')
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'WebSocket port; raw TCP listens on the next one (0 = free ports)', port, 7071)
    .option('--json', 'print the endpoints as one JSON line')
    .addHelpText(
      'after',
      '\nExample:\n  $ roam dev --port 0\n  ws   ws://127.0.0.1:40123\n  tcp  tcp://127.0.0.1:40124\n',
    )
    .action(async (opts: { host: string; port: number; json?: boolean }) => {
      const server = new SessionServer({ services: builtinServices(), logger: createLogger('roam-dev') });
      let ws: { url: string };
      let tcp: { url: string };
      try {
        ws = await server.listen(`ws://${opts.host}:${opts.port}`);
        tcp = await server.listen(`tcp://${opts.host}:${opts.port === 0 ? 0 : opts.port + 1}`);
      } catch (err) {
        await server.close();
        const msg = err instanceof Error ? err.message : String(err);
        process.stderr.write(`roam dev: ${msg}\n  (another roam dev running? pass --port 0 for free ports)\n`);
        process.exitCode = ExitCode.FAILURE;
        return;
      }
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ ws: ws.url, tcp: tcp.url, services: ['echo', 'counter'] })}\n`);
      } else {
        process.stdout.write(
          `roam dev ${pkg.version}\n  ws   ${ws.url}\n  tcp  ${tcp.url}\n  services: echo, counter\nCtrl-C to stop.\n`,
        );
      }
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          resolve();
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
      await server.close();
      if (!opts.json) process.stdout.write('roam dev stopped.\n');
    });

  return program;
}

const isMain = process.argv[1] !== undefined && /(?:roam(?:\.js)?|main\.[jt]s)$/.test(process.argv[1]);
if (isMain) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((err: unknown) => {
      if (err instanceof RoamError) process.stderr.write(`roam: ${err.code}: ${err.message}\n`);
      else process.stderr.write(`roam: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = ExitCode.FAILURE;
    });
}
