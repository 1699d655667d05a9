import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { CODES } from '../src/wire/index.js';

it('docs/protocol.md lists every error and close code with its number and text', () => {
  // Cells are compared with their padding folded, so a formatter may align the table.
  const doc = readFileSync(new URL('../docs/protocol.md', import.meta.url), 'utf8').replace(/ *\| */g, ' | ');
  for (const [name, { n, text }] of Object.entries(CODES)) {
    assert.ok(doc.includes(`| ${n} | \`${name}\` | ${text} |`), `docs/protocol.md is missing ${name} (${n})`);
  }
});
