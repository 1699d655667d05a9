// The roam dashboard: hosts, instances, sessions, migrations, drains and decisions of one
// directory, live from its event stream (`api/events`) with a 5 s poll as a fallback.

import { ApiError, api, eventsUrl, token } from './api.js';
import { h, reconcile, setAttr, setText } from './dom.js';
import { bytes, clock, ms, percent, seconds, short } from './format.js';
import { renderTimeline } from './timeline.js';

const POLL_MS = 5000;
/** Refreshes caused by events are coalesced: at most one per this period. */
const COALESCE_MS = 250;
const MAX_ROWS = 500;
const MAX_MIGRATIONS = 50;
const MAX_DECISIONS = 50;
/** A migration in flight that reported nothing for this long is dropped from the timeline. */
const PROGRESS_STALE_MS = 60_000;

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

const state = {
  /** id → HostRecord */
  hosts: new Map(),
  instances: [],
  sessions: [],
  unreachable: [],
  /** Newest first. */
  migrations: [],
  /** migration id → latest `migration.progress` event (with `seenAt`). */
  inFlight: new Map(),
  /** host id → DrainStatus */
  drains: new Map(),
  /** Newest first. */
  decisions: [],
};

// ---------------------------------------------------------------------------------------------
// Notices and auth

let noticeTimer;
function notice(text, isError = false) {
  const el = $('notice');
  setText(el, text);
  el.classList.toggle('error', isError);
  clearTimeout(noticeTimer);
  if (!isError) noticeTimer = setTimeout(() => setText(el, ''), 8000);
}

function describe(err) {
  return err instanceof ApiError ? `${err.code}: ${err.message}` : String(err?.message ?? err);
}

let signedOut = false;
/** A 401 anywhere: stop, ask for the token. */
function needToken(message) {
  signedOut = true;
  stopEvents();
  $('main').hidden = true;
  $('token-form').hidden = false;
  setText($('token-error'), message ?? '');
  setLive('signed out');
  $('token-input').focus();
}

function handle(err, what) {
  if (err instanceof ApiError && err.status === 401) {
    needToken(token.get() ? 'That token was refused.' : '');
    return;
  }
  notice(`${what}: ${describe(err)}`, true);
}

// ---------------------------------------------------------------------------------------------
// Refreshing

/**
 * A refresh of one resource: never two requests at once (a call during one runs once more after
 * it), and `soon()` coalesces bursts of events into one request.
 */
function refresher(name, load) {
  let running;
  let again = false;
  let timer;
  const run = async () => {
    if (signedOut) return;
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        try {
          await load();
        } catch (err) {
          handle(err, `loading ${name}`);
        }
      } while (again && !signedOut);
    })();
    try {
      await running;
    } finally {
      running = undefined;
    }
  };
  return {
    now: run,
    soon() {
      if (timer !== undefined) return;
      timer = setTimeout(() => {
        timer = undefined;
        void run();
      }, COALESCE_MS);
    },
  };
}

const hosts = refresher('hosts', async () => {
  const r = await api('api/hosts');
  setHosts(r.hosts);
});

const instances = refresher('instances', async () => {
  const [i, s] = await Promise.all([api('api/instances'), api('api/sessions')]);
  state.instances = i.instances;
  state.sessions = s.sessions;
  state.unreachable = [...new Set([...(i.unreachable ?? []), ...(s.unreachable ?? [])])];
  renderInstances();
  renderSessions();
});

const migrations = refresher('migrations', async () => {
  const r = await api(`api/migrations?limit=${MAX_MIGRATIONS}`);
  state.migrations = r.migrations;
  for (const m of r.migrations) state.inFlight.delete(m.id);
  renderMigrations();
});

const drains = refresher('drains', async () => {
  const r = await api('api/drains');
  for (const d of r.drains) state.drains.set(d.host, d);
  renderHosts();
});

async function loadBundles() {
  const box = $('bundles');
  try {
    const r = await api('api/bundles');
    const list = Array.isArray(r?.bundles) ? r.bundles : [];
    if (list.length === 0) {
      box.replaceChildren(h('p', { class: 'empty' }, 'No bundles published.'));
      return;
    }
    box.replaceChildren(
      h(
        'ul',
        {},
        list.map((b) =>
          h(
            'li',
            {},
            `${b.name ?? '?'} ${b.version ?? ''}`,
            b.digest ? h('code', {}, ` ${short(b.digest, 12)}`) : null,
          ),
        ),
      ),
    );
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      box.replaceChildren(
        h('p', { class: 'empty', 'data-testid': 'bundles-unavailable' }, 'Bundles are not available yet.'),
      );
    } else if (err instanceof ApiError && err.status === 401) {
      handle(err, 'loading bundles');
    } else {
      box.replaceChildren(h('p', { class: 'error' }, `Bundles: ${describe(err)}`));
    }
  }
}

function refreshAll() {
  void hosts.now();
  void instances.now();
}

// ---------------------------------------------------------------------------------------------
// Hosts

function setHosts(list) {
  state.hosts = new Map(list.map((x) => [x.id, x]));
  renderHosts();
}

function drainText(d) {
  if (!d) return '';
  const done = d.moved + d.failed;
  if (d.state === 'running') {
    const eta = d.etaS === undefined ? '' : `, ETA ${seconds(d.etaS)}`;
    return `draining: ${done}/${d.total} moved${eta}`;
  }
  const parts = [`drain ${d.state}: ${d.moved} moved`];
  if (d.failed) parts.push(`${d.failed} failed`);
  if (d.suspended) parts.push(`${d.suspended} suspended`);
  if (d.endedAt) parts.push(`in ${ms(d.endedAt - d.startedAt)}`);
  return parts.join(', ') + (d.message && d.state !== 'done' ? ` (${d.message})` : '');
}

function createHostRow(host) {
  const button = h('button', { type: 'button', 'data-testid': 'drain-button', onclick: () => drain(host.id) }, 'Drain');
  return h(
    'tr',
    { 'data-testid': 'host-row', 'data-host': host.id },
    h('td', {}, h('code', { title: host.id })),
    h('td', {}, h('span', { class: 'status', 'data-testid': 'host-status' })),
    h('td', {}),
    h('td', { class: 'num' }),
    h('td', { class: 'num' }),
    h('td', { class: 'num' }),
    h('td', { class: 'num' }),
    h(
      'td',
      {},
      h(
        'div',
        { class: 'drain' },
        button,
        h('progress', { 'data-testid': 'drain-bar', 'aria-label': 'Drain progress', hidden: true, max: 1, value: 0 }),
        h('span', { class: 'drain-text', 'data-testid': 'drain-progress' }),
      ),
    ),
  );
}

function updateHostRow(tr, host) {
  const c = tr.children;
  const m = host.metrics ?? {};
  setText(c[0].firstChild, short(host.id));
  setAttr(c[0].firstChild, 'title', `${host.id}\n${host.clientUrl}`);
  const st = c[1].firstChild;
  setText(st, host.status);
  setAttr(st, 'class', `status status-${host.status}`);
  setAttr(tr, 'data-status', host.status);
  const labels = Object.entries(host.labels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join('\u0000');
  if (c[2].dataset.labels !== labels) {
    c[2].dataset.labels = labels;
    c[2].replaceChildren(...(labels ? labels.split('\u0000').map((l) => h('span', { class: 'label' }, l)) : []));
  }
  setText(c[3], `${m.sessions ?? 0} / ${host.capacity}`);
  setText(c[4], percent(m.cpu));
  setText(c[5], ms(m.loopDelayP99Ms));
  setText(c[6], bytes(m.rssBytes));
  const d = state.drains.get(host.id);
  const [button, bar, text] = c[7].firstChild.children;
  const running = d?.state === 'running';
  button.disabled = running || host.status === 'leaving';
  setAttr(button, 'aria-label', `Drain host ${short(host.id)}`);
  bar.hidden = !running;
  if (running) {
    bar.max = Math.max(1, d.total);
    bar.value = d.moved + d.failed;
  }
  setText(text, drainText(d));
  setAttr(text, 'data-state', d?.state);
}

function renderHosts() {
  const list = [...state.hosts.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  reconcile($('hosts-table').tBodies[0], list, (x) => x.id, createHostRow, updateHostRow);
  $('hosts-empty').hidden = list.length > 0;
  const up = list.filter((x) => x.status === 'up').length;
  setText($('hosts-count'), `${list.length} (${up} up)`);
}

async function drain(id) {
  const host = state.hosts.get(id);
  const n = host?.metrics?.instances ?? 0;
  const ok = window.confirm(
    `Drain host ${short(id)}?\n\nIts ${n} instance${n === 1 ? '' : 's'} move to other hosts and it takes no new ones.`,
  );
  if (!ok) return;
  try {
    const d = await api('api/drain', { host: id });
    state.drains.set(id, d);
    renderHosts();
    notice(`Draining ${short(id)}: ${d.total} instance${d.total === 1 ? '' : 's'} to move.`);
  } catch (err) {
    handle(err, `drain ${short(id)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Instances and sessions

function createInstanceRow(inst) {
  return h(
    'tr',
    { 'data-testid': 'instance-row', 'data-instance': inst.instance, 'data-host': inst.host },
    h('td', {}, h('code', {}, inst.instance)),
    h('td', {}),
    h('td', {}, h('code', {})),
    h('td', { class: 'num' }),
    h('td', { class: 'num' }),
    h('td', { class: 'num' }),
    h(
      'td',
      {},
      h(
        'button',
        {
          type: 'button',
          'data-testid': 'migrate-button',
          'aria-label': `Migrate ${inst.instance}`,
          onclick: () => openMigrate(inst.instance),
        },
        'Migrate…',
      ),
      h(
        'button',
        {
          type: 'button',
          'data-testid': 'suspend-button',
          'aria-label': `Suspend ${inst.instance}`,
          onclick: () => suspend(inst.instance),
        },
        'Suspend',
      ),
    ),
  );
}

function updateInstanceRow(tr, inst) {
  const c = tr.children;
  setText(c[1], inst.service);
  setText(c[2].firstChild, short(inst.host));
  setAttr(c[2].firstChild, 'title', inst.host);
  setText(c[3], inst.sessions);
  setText(c[4], bytes(inst.stateBytes));
  setText(c[5], inst.epoch);
}

function renderInstances() {
  const all = [...state.instances].sort((a, b) =>
    a.instance < b.instance ? -1 : a.instance > b.instance ? 1 : a.host < b.host ? -1 : 1,
  );
  const shown = all.slice(0, MAX_ROWS);
  reconcile(
    $('instances-table').tBodies[0],
    shown,
    (x) => `${x.host} ${x.instance}`,
    createInstanceRow,
    updateInstanceRow,
  );
  $('instances-empty').hidden = all.length > 0;
  setText($('instances-count'), all.length > shown.length ? `${all.length} (first ${shown.length})` : `${all.length}`);
  const un = $('unreachable');
  un.hidden = state.unreachable.length === 0;
  setText(
    un,
    un.hidden
      ? ''
      : `No answer from host${state.unreachable.length === 1 ? '' : 's'} ${state.unreachable.map((x) => short(x)).join(', ')}: their rows are missing.`,
  );
}

function createSessionRow() {
  return h(
    'tr',
    { 'data-testid': 'session-row' },
    h('td', {}, h('code', {})),
    h('td', {}),
    h('td', {}, h('code', {})),
    h('td', {}, h('code', {})),
    h('td', {}),
    h('td', {}),
  );
}

function updateSessionRow(tr, x) {
  const c = tr.children;
  setText(c[0].firstChild, short(x.session, 12));
  setAttr(c[0].firstChild, 'title', x.session);
  setText(c[1], x.service);
  setText(c[2].firstChild, x.instance);
  setText(c[3].firstChild, short(x.host));
  setAttr(c[3].firstChild, 'title', x.host);
  setText(c[4], x.state);
  setText(c[5], x.remote ?? '–');
  setAttr(tr, 'data-host', x.host);
  setAttr(tr, 'data-state', x.state);
}

function renderSessions() {
  const all = [...state.sessions].sort((a, b) => (a.session < b.session ? -1 : a.session > b.session ? 1 : 0));
  const shown = all.slice(0, MAX_ROWS);
  reconcile($('sessions-table').tBodies[0], shown, (x) => `${x.host} ${x.session}`, createSessionRow, updateSessionRow);
  $('sessions-empty').hidden = all.length > 0;
  setText($('sessions-count'), all.length > shown.length ? `${all.length} (first ${shown.length})` : `${all.length}`);
}

let migrating;
function openMigrate(instance) {
  const inst = state.instances.find((x) => x.instance === instance);
  if (!inst) return;
  migrating = inst;
  setText($('migrate-what'), `Move ${instance} (${inst.service}) from host ${short(inst.host)} to:`);
  const options = [h('option', { value: '' }, 'auto (least loaded compatible host)')];
  for (const host of [...state.hosts.values()].sort((a, b) => (a.id < b.id ? -1 : 1))) {
    if (host.id === inst.host || host.status !== 'up') continue;
    const labels = Object.entries(host.labels ?? {}).map(([k, v]) => `${k}=${v}`);
    options.push(h('option', { value: host.id }, [short(host.id), ...labels].join(' ')));
  }
  $('migrate-destination').replaceChildren(...options);
  const dialog = $('migrate-dialog');
  dialog.returnValue = '';
  dialog.showModal();
}

async function migrate(inst, to) {
  const where = to ? short(to) : 'the least loaded host';
  notice(`Migrating ${inst.instance} to ${where}…`);
  try {
    const m = await api('api/migrate', { instance: inst.instance, ...(to ? { to } : {}) });
    if (m.outcome === 'committed') {
      notice(`Migrated ${inst.instance} to ${short(m.to)} in ${ms(m.endedAt - m.startedAt)}.`);
    } else notice(`Migration of ${inst.instance} ${m.outcome}: ${m.message ?? m.code ?? ''}`, true);
    addMigration(m);
  } catch (err) {
    handle(err, `migrate ${inst.instance}`);
  }
  instances.soon();
}

async function suspend(instance) {
  if (!window.confirm(`Suspend ${instance}?\n\nIt is written to the Store; its clients resume it when they return.`))
    return;
  try {
    await api('api/suspend', { instance });
    notice(`Suspended ${instance}.`);
  } catch (err) {
    handle(err, `suspend ${instance}`);
  }
  instances.soon();
}

// ---------------------------------------------------------------------------------------------
// Migrations and decisions

function addMigration(m) {
  if (!m || typeof m.id !== 'string') return;
  state.inFlight.delete(m.id);
  state.migrations = [m, ...state.migrations.filter((x) => x.id !== m.id)]
    .sort((a, b) => b.endedAt - a.endedAt)
    .slice(0, MAX_MIGRATIONS);
  renderMigrations();
}

function renderMigrations() {
  const now = Date.now();
  for (const [id, p] of state.inFlight) if (now - p.seenAt > PROGRESS_STALE_MS) state.inFlight.delete(id);
  renderTimeline($('migrations'), state.migrations, state.inFlight);
  $('migrations-empty').hidden = state.migrations.length + state.inFlight.size > 0;
}

function renderDecisions() {
  const ol = $('decisions');
  reconcile(
    ol,
    state.decisions,
    (d) => d.key,
    () => h('li', { 'data-testid': 'decision' }),
    (li, d) => {
      if (li.childElementCount > 0) return;
      const target = [d.instance, d.host ? `host ${short(d.host)}` : undefined].filter(Boolean).join(' on ');
      li.append(
        h('time', { datetime: new Date(d.at).toISOString() }, clock(d.at)),
        ` ${d.action}`,
        target ? ` ${target}` : '',
        d.reason ? ` — ${d.reason}` : '',
      );
    },
  );
  $('decisions-empty').hidden = state.decisions.length > 0;
}

// ---------------------------------------------------------------------------------------------
// Live events

let events;
let retryTimer;
let retryMs = 1000;
let decisionSeq = 0;

function setLive(text) {
  const el = $('live-status');
  setText(el, text);
  setAttr(el, 'data-state', text === 'live' ? 'live' : 'down');
}

function stopEvents() {
  clearTimeout(retryTimer);
  events?.close();
  events = undefined;
}

function on(type, fn) {
  events.addEventListener(type, (e) => {
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      return;
    }
    fn(data);
  });
}

function startEvents() {
  stopEvents();
  events = new EventSource(eventsUrl());
  on('hello', (e) => {
    retryMs = 1000;
    setLive('live');
    setHosts(e.hosts);
    // Anything may have happened while the stream was down.
    void instances.now();
    void migrations.now();
    void drains.now();
  });
  on('host.registered', (e) => {
    state.hosts.set(e.host.id, e.host);
    renderHosts();
    instances.soon();
  });
  on('host.suspect', (e) => {
    const host = state.hosts.get(e.host);
    if (host) host.status = 'suspect';
    renderHosts();
  });
  on('host.left', (e) => {
    state.hosts.delete(e.host);
    renderHosts();
    instances.soon();
  });
  on('migration', (e) => {
    addMigration(e.migration);
    instances.soon();
  });
  on('migration.progress', (e) => {
    if (state.migrations.some((m) => m.id === e.id)) return;
    state.inFlight.set(e.id, { ...e, seenAt: Date.now() });
    renderMigrations();
  });
  on('drain', (e) => {
    state.drains.set(e.drain.host, e.drain);
    renderHosts();
    instances.soon();
    if (e.drain.state === 'running') hosts.soon();
  });
  on('decision', (e) => {
    state.decisions = [{ ...e, key: String(++decisionSeq) }, ...state.decisions].slice(0, MAX_DECISIONS);
    renderDecisions();
  });
  events.onerror = () => {
    if (!events) return;
    setLive('reconnecting…');
    // EventSource retries by itself unless the directory refused the stream (a non-200 reply):
    // then find out why (a 401 asks for the token) and open a new one later.
    if (events.readyState === EventSource.CLOSED) {
      events = undefined;
      api('api/hosts').then(
        () => {
          retryTimer = setTimeout(startEvents, retryMs);
          retryMs = Math.min(retryMs * 2, 30_000);
        },
        (err) => {
          handle(err, 'event stream');
          if (!signedOut) retryTimer = setTimeout(startEvents, retryMs);
          retryMs = Math.min(retryMs * 2, 30_000);
        },
      );
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Start

async function start() {
  try {
    setHosts((await api('api/hosts')).hosts);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      needToken(token.get() ? 'That token was refused.' : '');
      return;
    }
    notice(`loading hosts: ${describe(err)}`, true);
  }
  signedOut = false;
  $('token-form').hidden = true;
  $('main').hidden = false;
  startEvents();
  void instances.now();
  void migrations.now();
  void drains.now();
  void loadBundles();
  renderDecisions();
}

setText($('directory-url'), location.host);

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  token.set($('token-input').value.trim());
  $('token-input').value = '';
  void start();
});

$('migrate-dialog').addEventListener('close', () => {
  const dialog = $('migrate-dialog');
  const inst = migrating;
  migrating = undefined;
  if (dialog.returnValue === 'migrate' && inst) void migrate(inst, $('migrate-destination').value);
});

setInterval(() => {
  if (!document.hidden && !signedOut && $('main').hidden === false) {
    refreshAll();
    renderMigrations();
  }
}, POLL_MS);

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && !signedOut && !$('main').hidden) refreshAll();
});

void start();
