/**
 * Summarises V8 .cpuprofile files (from `node --cpu-prof`): top functions by self time, and by
 * total (inclusive) time, with source location. Usage:
 *
 *   npx tsx bench/cpuprofile-top.ts <file.cpuprofile>... [--top=25] [--filter=substring]
 *
 * `--filter` keeps only functions whose url contains the substring (e.g. `/src/` for roam code).
 * `--last=MS` looks only at the profile's last MS milliseconds (e.g. a drain that ends the process).
 * `--window=FROM,TO` looks only at samples between two instants of the monotonic clock, in µs as
 * `process.hrtime.bigint() / 1000n` reads it in any process on the machine (V8 stamps profiles
 * with the same clock), so a benchmark can print the window of interest and every process's
 * profile can be cut to it.
 */
import { readFile } from 'node:fs/promises';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function label(cf: CallFrame): string {
  let where = cf.url;
  if (where.startsWith('file://')) where = relative(ROOT, fileURLToPath(where));
  where = where.replace(/^.*node_modules\//, 'node_modules/');
  const name = cf.functionName || '(anonymous)';
  return where ? `${name}  ${where}:${cf.lineNumber + 1}` : name;
}

async function summarise(
  file: string,
  top: number,
  filter: string | undefined,
  lastMs?: number,
  window?: [number, number],
): Promise<void> {
  const p = JSON.parse(await readFile(file, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const selfUs = new Map<number, number>();
  let from = lastMs === undefined ? p.startTime : Math.max(p.startTime, p.endTime - lastMs * 1000);
  let to = p.endTime;
  if (window) {
    from = Math.max(from, window[0]);
    to = Math.min(to, window[1]);
  }
  let at = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i] as number;
    at += (p.timeDeltas[i] ?? 0) as number;
    if (at < from || at > to) continue;
    // timeDeltas[i] is the time before sample i; attribute the gap after it (standard approach).
    const dt = (p.timeDeltas[i + 1] ?? 0) as number;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
  }
  const totalUs = Math.max(0, to - from);
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const n = byId.get(id);
    if (!n) continue;
    const l = label(n.callFrame);
    self.set(l, (self.get(l) ?? 0) + us);
    // Inclusive: every distinct function on the stack gets the sample once.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const node = byId.get(cur);
      if (!node) break;
      const key = label(node.callFrame);
      if (seen.has(key)) continue;
      seen.add(key);
      incl.set(key, (incl.get(key) ?? 0) + us);
    }
  }
  const idle = [...self].filter(([l]) => l.startsWith('(idle)')).reduce((a, [, v]) => a + v, 0);
  const busy = totalUs - idle;
  const show = (title: string, m: Map<string, number>): void => {
    const rows = [...m]
      .filter(([l]) => !l.startsWith('(idle)') && !l.startsWith('(root)') && (!filter || l.includes(filter)))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top);
    process.stdout.write(`\n${title}\n`);
    for (const [l, us] of rows) {
      process.stdout.write(
        `${((100 * us) / busy).toFixed(1).padStart(6)}%  ${(us / 1000).toFixed(1).padStart(9)} ms  ${l}\n`,
      );
    }
  };
  process.stdout.write(
    `\n== ${file}\nwall ${(totalUs / 1000).toFixed(0)} ms, busy ${(busy / 1000).toFixed(0)} ms (idle ${(idle / 1000).toFixed(0)} ms); percentages are of busy time\n`,
  );
  show('top self time', self);
  show('top total (inclusive) time', incl);
}

async function main(): Promise<void> {
  let top = 25;
  let filter: string | undefined;
  let last: number | undefined;
  let window: [number, number] | undefined;
  const files: string[] = [];
  for (const a of process.argv.slice(2)) {
    if (a.startsWith('--top=')) top = Number(a.slice(6));
    else if (a.startsWith('--filter=')) filter = a.slice(9);
    else if (a.startsWith('--last=')) last = Number(a.slice(7));
    else if (a.startsWith('--window=')) {
      const [f, t] = a.slice(9).split(',').map(Number);
      window = [f ?? 0, t ?? Number.POSITIVE_INFINITY];
    } else files.push(a);
  }
  if (files.length === 0) {
    process.stderr.write(
      'usage: tsx bench/cpuprofile-top.ts <file.cpuprofile>... [--top=N] [--filter=substr] [--last=ms] [--window=from_us,to_us]\n',
    );
    process.exit(2);
  }
  for (const f of files) await summarise(f, top, filter, last, window);
}

void main();
