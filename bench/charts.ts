/**
 * Tiny SVG charts for docs/benchmarks.md, drawn from bench/results/*.json (no dependency: a
 * grouped bar chart is a few rectangles).
 */

export interface BarChart {
  title: string;
  groups: string[];
  series: Array<{ name: string; values: number[] }>;
}

const COLORS = ['#2563eb', '#f59e0b', '#9ca3af', '#10b981'];
const esc = (s: string) => s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');

export function barChart(c: BarChart): string {
  const W = 760;
  const H = 320;
  const left = 50;
  const bottom = 60;
  const top = 40;
  const plotH = H - top - bottom;
  const max = Math.max(1, ...c.series.flatMap((s) => s.values.filter((v) => Number.isFinite(v))));
  const nice = 10 ** Math.floor(Math.log10(max));
  const yMax = Math.ceil(max / nice) * nice;
  const groupW = (W - left - 10) / Math.max(1, c.groups.length);
  const barW = (groupW * 0.8) / Math.max(1, c.series.length);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${esc(c.title)}" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<title>${esc(c.title)}</title>`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(c.title)}</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    const y = top + plotH - (plotH * i) / 4;
    parts.push(`<line x1="${left}" x2="${W - 10}" y1="${y}" y2="${y}" stroke="#e5e7eb"/>`);
    parts.push(`<text x="${left - 6}" y="${y + 4}" text-anchor="end">${Math.round(v * 10) / 10}</text>`);
  }
  c.groups.forEach((g, gi) => {
    const x0 = left + gi * groupW + groupW * 0.1;
    c.series.forEach((s, si) => {
      const v = s.values[gi] ?? 0;
      const h = Number.isFinite(v) ? (plotH * v) / yMax : 0;
      const x = x0 + si * barW;
      parts.push(
        `<rect x="${x.toFixed(1)}" y="${(top + plotH - h).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[si % COLORS.length]}"><title>${esc(s.name)}: ${v}</title></rect>`,
      );
    });
    parts.push(
      `<text x="${(x0 + groupW * 0.4).toFixed(1)}" y="${H - bottom + 16}" text-anchor="middle">${esc(g)}</text>`,
    );
  });
  c.series.forEach((s, si) => {
    const x = left + si * 200;
    parts.push(`<rect x="${x}" y="${H - 24}" width="12" height="12" fill="${COLORS[si % COLORS.length]}"/>`);
    parts.push(`<text x="${x + 16}" y="${H - 14}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
