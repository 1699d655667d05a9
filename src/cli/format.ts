/**
 * Human output of the `roam` command: aligned tables, sizes, durations, short ids and (on a
 * terminal only) a little colour. No dependency: plain ANSI escape codes.
 *
 * @module
 */

/** Colour only on a terminal, and never when `NO_COLOR` is set (https://no-color.org). */
export function colourEnabled(stream: { isTTY?: boolean } = process.stdout): boolean {
  const noColor = process.env.NO_COLOR;
  return stream.isTTY === true && (noColor === undefined || noColor === '');
}

const ANSI = {
  bold: [1, 22],
  dim: [2, 22],
  red: [31, 39],
  green: [32, 39],
  yellow: [33, 39],
  cyan: [36, 39],
} as const;

export type Style = keyof typeof ANSI;

/** Wraps text in an ANSI style, or returns it unchanged when colour is off. */
export function paint(style: Style, text: string, on = colourEnabled()): string {
  if (!on) return text;
  const [open, close] = ANSI[style];
  return `\u001b[${open}m${text}\u001b[${close}m`;
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching ANSI escapes is the point
const ESCAPES = /\u001b\[[0-9;]*m/g;

/** Length as the terminal shows it (ANSI escapes take no room). */
export function visibleLength(s: string): number {
  return s.replace(ESCAPES, '').length;
}

export type Align = 'left' | 'right';

export interface TableOptions {
  /** Per column; default left. */
  align?: Align[];
  /** Prefix of every line. Default none. */
  indent?: string;
  /** Between columns. Default two spaces. */
  gap?: string;
  /** Bold headers (on a terminal). Default: colour rules. */
  colour?: boolean;
}

/**
 * An aligned text table: one header line, then one line per row; cells are padded to the widest
 * of their column (trailing spaces trimmed). Returns the lines joined with `\n`, ending in `\n`.
 */
export function table(headers: string[], rows: string[][], opts: TableOptions = {}): string {
  const gap = opts.gap ?? '  ';
  const indent = opts.indent ?? '';
  const colour = opts.colour ?? colourEnabled();
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => visibleLength(r[i] ?? ''))));
  const line = (cells: string[], head: boolean) =>
    indent +
    cells
      .map((c, i) => {
        const pad = ' '.repeat(Math.max(0, (widths[i] ?? 0) - visibleLength(c)));
        const cell = opts.align?.[i] === 'right' ? pad + c : c + pad;
        return head ? paint('bold', cell, colour) : cell;
      })
      .join(gap)
      .trimEnd();
  return `${[
    line(headers, true),
    ...rows.map((r) =>
      line(
        headers.map((_, i) => r[i] ?? ''),
        false,
      ),
    ),
  ].join('\n')}\n`;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** `0 B`, `512 B`, `4.0 KiB`, `12 MiB`, … (binary units). */
export function bytes(n: number): string {
  if (!Number.isFinite(n)) return '-';
  let v = Math.abs(n);
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  const text = u === 0 ? String(Math.round(v)) : v < 10 ? v.toFixed(1) : String(Math.round(v));
  return `${n < 0 ? '-' : ''}${text} ${UNITS[u]}`;
}

/** A duration in milliseconds: `0.4 ms`, `12 ms`, `1840 ms`. */
export function ms(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return '-';
  return `${n < 10 && n !== Math.round(n) ? n.toFixed(1) : Math.round(n)} ms`;
}

/** The first 12 characters of a host id: unique enough to read, and a valid prefix to type. */
export function shortId(id: string): string {
  return id.slice(0, 12);
}

/** `zone=a,role=edge` (or `-`). */
export function labels(l: Record<string, string> | undefined): string {
  const entries = Object.entries(l ?? {});
  return entries.length === 0 ? '-' : entries.map(([k, v]) => `${k}=${v}`).join(',');
}

/** `0.42` → `42%`. */
export function percent(fraction: number): string {
  return Number.isFinite(fraction) ? `${Math.round(fraction * 100)}%` : '-';
}

/** Seconds, two decimals below 10: `0.42 s`, `12.3 s`. */
export function seconds(s: number): string {
  if (!Number.isFinite(s)) return '-';
  return `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`;
}

/** How long ago, coarse: `3 s ago`, `12 min ago`, `2 h ago`, `4 d ago`. */
export function ago(at: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172_800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86_400)} d ago`;
}
