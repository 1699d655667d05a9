// The migrations timeline: one row per migration record, a horizontal bar split into its phases
// (negotiate, each pre-copy round, freeze, commit) with the client-observed gap as a thin bar
// under it starting where the freeze starts. Plain SVG: a few rects per row, no chart library.

import { h, reconcile, s, setAttr, setText } from './dom.js';
import { bytes, clock, ms, short } from './format.js';

/** Segments of a record's bar: `[class, start ms, length ms, tooltip]`. */
function segments(m) {
  const p = m.phases ?? {};
  const out = [];
  let t = 0;
  const add = (cls, len, tip) => {
    if (len > 0) out.push([cls, t, len, tip]);
    t += len;
  };
  add('ph-negotiate', p.negotiateMs ?? 0, `negotiate ${ms(p.negotiateMs)}`);
  const rounds = Array.isArray(m.rounds) ? m.rounds : [];
  const precopy = p.precopyMs ?? 0;
  if (rounds.length > 0 && precopy > 0) {
    // The rounds' own times, scaled to fill the pre-copy phase (they exclude waiting between rounds).
    const sum = rounds.reduce((a, r) => a + (r.ms ?? 0), 0);
    rounds.forEach((r, i) => {
      const len = sum > 0 ? (precopy * (r.ms ?? 0)) / sum : precopy / rounds.length;
      add(
        `ph-precopy${i % 2 ? ' odd' : ''}`,
        len,
        `pre-copy round ${i}: ${bytes(r.bytes)}, ${r.keys} keys, ${ms(r.ms)}`,
      );
    });
  } else {
    add('ph-precopy', precopy, `pre-copy ${ms(precopy)}`);
  }
  const freezeAt = t;
  add('ph-freeze', p.freezeMs ?? 0, `freeze (stop-and-copy) ${ms(p.freezeMs)}, ${bytes(m.finalDirtyBytes)} last dirty`);
  add('ph-commit', p.commitMs ?? 0, `commit ${ms(p.commitMs)}`);
  return { out, total: t, freezeAt, gap: p.clientGapMs };
}

function bar(m) {
  const { out, total, freezeAt, gap } = segments(m);
  const scale = Math.max(total, gap === undefined ? 0 : freezeAt + gap, 1e-9);
  const pct = (v) => `${((100 * v) / scale).toFixed(3)}%`;
  const svg = s('svg', { role: 'img', 'aria-label': `phases of migration ${m.id}` });
  for (const [cls, start, len, tip] of out) {
    svg.append(s('rect', { class: cls, x: pct(start), y: 0, width: pct(len), height: 12 }, s('title', {}, tip)));
  }
  if (gap !== undefined) {
    svg.append(
      s(
        'rect',
        { class: 'ph-gap', x: pct(freezeAt), y: 14, width: pct(gap), height: 4 },
        s('title', {}, `client gap ${ms(gap)}: freeze until the client resumed at the destination`),
      ),
    );
  }
  return svg;
}

function instancesText(list) {
  if (!Array.isArray(list) || list.length === 0) return '';
  return list.length === 1 ? list[0] : `${list[0]} +${list.length - 1} more`;
}

function createRow() {
  return h('li', { 'data-testid': 'migration-row' });
}

/** Rebuilds a row only when its record changed (the same id is re-sent with the client gap). */
function updateRow(li, m) {
  const sig = `${m.outcome}|${m.endedAt}|${m.phases?.clientGapMs}|${m.message ?? ''}`;
  if (li.dataset.sig === sig) return;
  li.dataset.sig = sig;
  setAttr(li, 'data-id', m.id);
  setAttr(li, 'data-outcome', m.outcome);
  const took = m.endedAt - m.startedAt;
  const rounds = Array.isArray(m.rounds) ? m.rounds : [];
  const gap = m.phases?.clientGapMs;
  const parts = [
    h(
      'div',
      { class: 'head' },
      h('span', { class: 'outcome' }, m.outcome),
      h('time', { datetime: new Date(m.endedAt).toISOString() }, clock(m.endedAt)),
      h('span', { class: 'mono', title: (m.instances ?? []).join(', ') }, instancesText(m.instances)),
      h('span', {}, m.service),
      h(
        'span',
        { class: 'mono' },
        h('span', { title: m.from }, short(m.from)),
        ' → ',
        h('span', { title: m.to }, short(m.to)),
      ),
      h('span', {}, m.reason),
      h('span', {}, `${ms(took)} total`),
      h('span', {}, `${m.sessions} session${m.sessions === 1 ? '' : 's'}`),
      h('span', {}, `${bytes(m.bytesSent)} sent`),
      gap === undefined ? null : h('span', {}, `client gap ${ms(gap)}`),
      m.throttleSteps > 0 ? h('span', {}, `throttled ×${m.throttleSteps}`) : null,
    ),
    bar(m),
    rounds.length > 0
      ? h('div', { class: 'rounds' }, `rounds: ${rounds.map((r) => bytes(r.bytes)).join(' · ')}`)
      : null,
    m.outcome !== 'committed'
      ? h('div', { class: 'message' }, [m.code, m.message].filter(Boolean).join(': ') || 'no reason given')
      : null,
  ];
  li.replaceChildren(...parts.filter((p) => p !== null));
}

function createProgress() {
  return h('li', { 'data-testid': 'migration-progress' }, h('span', { class: 'progress' }));
}

function updateProgress(li, p) {
  const parts = [`moving ${instancesText(p.instances)}: ${p.phase}`];
  if (p.round !== undefined) parts.push(`round ${p.round}`);
  if (p.etaMs !== undefined) parts.push(`ETA ${ms(p.etaMs)}`);
  setText(li.firstChild, parts.join(', '));
}

/**
 * Renders migrations in flight (latest `migration.progress` of each) above the finished ones
 * (newest first) into the `<ol>`.
 */
export function renderTimeline(ol, records, inFlight) {
  const items = [
    ...[...inFlight.values()].map((p) => ({ kind: 'p', key: `p:${p.id}`, v: p })),
    ...records.map((m) => ({ kind: 'm', key: `m:${m.id}`, v: m })),
  ];
  reconcile(
    ol,
    items,
    (i) => i.key,
    (i) => (i.kind === 'p' ? createProgress() : createRow()),
    (el, i) => (i.kind === 'p' ? updateProgress(el, i.v) : updateRow(el, i.v)),
  );
}
