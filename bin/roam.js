#!/usr/bin/env node
// Runs the built CLI; in a source checkout without a build, runs the TypeScript through tsx.
// `roam dev` always runs from source when it is there: its example services are TypeScript
// (examples/services/*.ts), which only load in workers under tsx.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = new URL('../dist/cli/main.js', import.meta.url);
const source = new URL('../src/cli/main.ts', import.meta.url);
const dev = process.argv[2] === 'dev' && existsSync(fileURLToPath(source));
if (existsSync(fileURLToPath(built)) && !dev) {
  await import(built.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(source.href);
}
