// Number and id formatting for the tables.

/** First 8 hex digits of a host or session id (the full id goes in a title). */
export const short = (id, n = 8) => (typeof id === 'string' ? id.slice(0, n) : '');

export function bytes(n) {
  if (!Number.isFinite(n)) return '–';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function ms(n) {
  if (!Number.isFinite(n)) return '–';
  if (n < 10) return `${n.toFixed(1)} ms`;
  if (n < 10_000) return `${Math.round(n)} ms`;
  return `${(n / 1000).toFixed(1)} s`;
}

export const percent = (f) => (Number.isFinite(f) ? `${Math.round(f * 100)}%` : '–');

export function clock(t) {
  if (!Number.isFinite(t)) return '';
  const d = new Date(t);
  return d.toLocaleTimeString(undefined, { hour12: false });
}

export function seconds(s) {
  if (!Number.isFinite(s)) return '';
  if (s < 60) return `${Math.max(0, Math.ceil(s))} s`;
  return `${Math.floor(s / 60)} min ${Math.ceil(s % 60)} s`;
}
