/**
 * Bench runner: `npm run bench -- <suite> [--quick] [--only=a,b] [--sides=roam,ws] [--sizes=64,1024] [--diag]`
 *
 * Runs bench/<suite>.ts, writes pretty JSON to bench/results/<suite>.json (or <suite>-partial.json
 * when --quick/--only/--sides/--sizes/--diag or extra node flags for the roam processes changed the run) and prints a
 * short summary. Progress goes to stderr, the summary to stdout. Exit codes: 0 ok, 1 the suite
 * failed, 2 bad usage (unknown suite or flag).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { EXTRA_NODE_ARGS } from '../test/support/cli.js';

export interface SuiteOptions {
  quick: boolean;
  /** Parts of the suite to run (suite-defined names); all when absent. */
  only?: string[] | undefined;
  /** Sides to measure (suite-defined names); all when absent. */
  sides?: string[] | undefined;
  /** Payload sizes in bytes, for suites that have them; the suite's defaults when absent. */
  sizes?: number[] | undefined;
  /** Suite-defined extra instrumentation (may cost a little accuracy elsewhere). */
  diag?: boolean | undefined;
}

interface SuiteModule {
  run(opts: SuiteOptions): Promise<object>;
  summarize?(result: never): string;
}

/** Every suite, by name. Add new ones here. */
const SUITES: Record<string, () => Promise<SuiteModule>> = {
  session: () => import('./session.js'),
  suspend: () => import('./suspend.js'),
  migration: () => import('./migration.js'),
  drain: () => import('./drain.js'),
};

function usage(): string {
  return [
    'usage: npm run bench -- <suite> [--quick] [--only=part,part] [--sides=name,name] [--sizes=bytes,bytes] [--diag]',
    `suites: ${Object.keys(SUITES).join(', ')}`,
  ].join('\n');
}

function fail(msg: string): never {
  process.stderr.write(`bench: ${msg}\n${usage()}\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): { suite: string; opts: SuiteOptions } {
  let suite: string | undefined;
  const opts: SuiteOptions = { quick: false };
  const list = (v: string): string[] =>
    v
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean);
  for (const a of argv) {
    if (a === '--quick') opts.quick = true;
    else if (a === '--diag') opts.diag = true;
    else if (a.startsWith('--only=')) opts.only = list(a.slice('--only='.length));
    else if (a.startsWith('--sides=')) opts.sides = list(a.slice('--sides='.length));
    else if (a.startsWith('--sizes=')) {
      opts.sizes = list(a.slice('--sizes='.length)).map(Number);
      if (opts.sizes.some((n) => !Number.isSafeInteger(n) || n < 8)) fail(`bad --sizes ${a}: integers >= 8`);
    } else if (a === '--help' || a === '-h') {
      process.stdout.write(`${usage()}\n`);
      process.exit(0);
    } else if (a.startsWith('-')) fail(`unknown option ${a}`);
    else if (suite === undefined) suite = a;
    else fail(`unexpected argument ${a}`);
  }
  if (suite === undefined) fail('no suite given');
  if (!Object.hasOwn(SUITES, suite)) {
    fail(`unknown suite ${JSON.stringify(suite)}; available suites: ${Object.keys(SUITES).join(', ')}`);
  }
  return { suite, opts };
}

async function main(): Promise<void> {
  const { suite, opts } = parseArgs(process.argv.slice(2));
  const load = SUITES[suite] as () => Promise<SuiteModule>;
  const mod = await load();
  process.stderr.write(`bench ${suite}${opts.quick ? ' --quick' : ''}\n`);
  const result = await mod.run(opts);
  const dir = fileURLToPath(new URL('./results/', import.meta.url));
  await mkdir(dir, { recursive: true });
  // A quick, partial or instrumented run (--quick/--only/--sides/--sizes/--diag, or roam processes
  // run with extra node flags through ROAM_TEST_NODE_ARGS, a profiler or a V8 setting) must not
  // overwrite the full results the docs are drawn from.
  const partial =
    opts.quick ||
    opts.only !== undefined ||
    opts.sides !== undefined ||
    opts.sizes !== undefined ||
    opts.diag === true ||
    EXTRA_NODE_ARGS;
  const file = `${dir}${suite}${partial ? '-partial' : ''}.json`;
  await writeFile(file, `${JSON.stringify(result, null, 2)}\n`);
  const summary = mod.summarize ? mod.summarize(result as never) : JSON.stringify(result, null, 2);
  process.stdout.write(`\n${summary}\nwrote ${file}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
  // Normally everything is closed already; if a failure left a handle open, don't hang on it.
  setTimeout(() => process.exit(1), 2000).unref();
});
