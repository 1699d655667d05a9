import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { it } from 'node:test';

const SRC = resolve(import.meta.dirname, '../src');

/**
 * Which of our layers each layer may import. Hosts, directory and gateway never import each
 * other: they talk through the protocol (wire) and the Store interface (store).
 */
const ALLOWED: Record<string, readonly string[]> = {
  wire: [],
  session: ['wire'],
  client: ['wire', 'session', 'transport'],
  transport: ['wire', 'session'],
  service: ['wire', 'session'],
  store: ['wire'],
  bundle: ['wire'],
  policy: ['wire'],
  host: ['wire', 'session', 'transport', 'service', 'store', 'bundle'],
  directory: ['wire', 'session', 'transport', 'store', 'bundle', 'policy', 'dashboard'],
  gateway: ['wire', 'session', 'transport', 'store'],
  dashboard: ['wire'],
  cli: [
    'wire',
    'session',
    'transport',
    'client',
    'service',
    'host',
    'directory',
    'gateway',
    'store',
    'bundle',
    'policy',
    'dashboard',
  ],
};

/** Layers whose code must run in a browser: no Node built-ins, no Node-only packages. */
const BROWSER_SAFE = new Set(['wire', 'session']);
const BROWSER_ENTRY = join(SRC, 'client/index.ts');
/** Packages known to run in browsers, allowed in the browser client. */
const BROWSER_PACKAGES = new Set(['msgpackr']);

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? files(join(dir, e.name))
      : e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')
        ? [join(dir, e.name)]
        : [],
  );
}

function imports(file: string): string[] {
  const src = readFileSync(file, 'utf8');
  return [
    ...src.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]/gm),
    ...src.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g),
  ].map((m) => m[1] as string);
}

const layerOf = (file: string): string => relative(SRC, file).split('/')[0] as string;

it('every layer imports only the layers it may', () => {
  const violations: string[] = [];
  for (const file of files(SRC)) {
    const layer = layerOf(file);
    const allowed = ALLOWED[layer];
    if (!allowed) {
      violations.push(`${relative(SRC, file)}: folder ${layer} is not in the architecture table`);
      continue;
    }
    for (const spec of imports(file)) {
      if (!spec.startsWith('.')) continue;
      const target = resolve(dirname(file), spec);
      const other = layerOf(target);
      if (other !== layer && !allowed.includes(other)) {
        violations.push(`${relative(SRC, file)} imports ${other} (${spec})`);
      }
    }
  }
  assert.deepEqual(violations, []);
});

it('wire and session use no Node built-ins, packages or Buffer', () => {
  const violations: string[] = [];
  for (const file of files(SRC).filter((f) => BROWSER_SAFE.has(layerOf(f)))) {
    for (const spec of imports(file))
      if (!spec.startsWith('.')) violations.push(`${relative(SRC, file)} imports ${spec}`);
    if (/\bBuffer\b/.test(readFileSync(file, 'utf8').replace(/\/\/.*$|\/\*[\s\S]*?\*\//gm, ''))) {
      violations.push(`${relative(SRC, file)} uses Buffer`);
    }
  }
  assert.deepEqual(violations, []);
});

it('roam/client (browser entry) reaches no Node-only module', () => {
  const seen = new Set<string>();
  const bad: string[] = [];
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const spec of imports(file)) {
      if (spec.startsWith('.')) visit(resolve(dirname(file), spec).replace(/\.js$/, '.ts'));
      else if (!BROWSER_PACKAGES.has(spec)) bad.push(`${relative(SRC, file)} imports ${spec}`);
    }
  };
  visit(BROWSER_ENTRY);
  assert.ok(seen.size > 5, 'the walk followed the imports');
  assert.deepEqual(bad, []);
});

it('package.json exports point at files the build produces from src', () => {
  const pkg = JSON.parse(readFileSync(resolve(SRC, '../package.json'), 'utf8')) as {
    exports: Record<string, string | Record<string, string>>;
    bin: Record<string, string>;
  };
  for (const [sub, target] of Object.entries(pkg.exports)) {
    if (sub === './package.json') continue;
    const paths = typeof target === 'string' ? [target] : Object.values(target);
    for (const p of paths) {
      const srcFile = p.replace(/^\.\/dist\//, '').replace(/\.d\.ts$|\.js$/, '.ts');
      assert.doesNotThrow(() => readFileSync(join(SRC, srcFile)), `${sub} -> ${p} has no source src/${srcFile}`);
    }
  }
});
