import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { build } from 'esbuild';
import type { MigrationRecord } from '../src/transport/cluster.js';
import { browserMissing, launchBrowser, openPage } from './support/browser.js';
import { startCluster } from './support/cluster.js';
import { SERVICES } from './support/host.js';

/**
 * The browser client (`roam/client`, src/client/index.ts: no Node imports) in a real Chromium,
 * through the gateway, while the directory moves its instance between hosts.
 */

const ENTRY = new URL('../src/client/index.ts', import.meta.url).pathname;

/**
 * The test page. Before the client loads, it counts WebSocket constructions (the gateway should
 * re-splice: one transport, ever). It opens a `stream` session, sends `start 5` (an index every
 * 5 ms on channel 0) and counts up on its own (echoed on channel 2), checking both sequences.
 */
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>roam browser client</title>
<script>
  window.sockets = 0;
  const Native = WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.sockets++; }
  };
</script>
<script type="module">
  import { connect } from '/client.js';
  const t = { id: undefined, received: [], last: 0, echoed: 0, sent: 0, errors: [], events: [], control: [] };
  window.t = t;
  const dec = new TextDecoder();
  const url = new URLSearchParams(location.search).get('url');
  const s = connect(url, { service: 'stream', reconnect: { initialDelayMs: 5, maxDelayMs: 200 } });
  window.session = s;
  s.on('event', (e) => t.events.push(e.type));
  s.on('message', (data, ch) => {
    const text = dec.decode(data);
    if (ch === 0) {
      const v = Number(text);
      if (v !== t.last + 1) t.errors.push('index ' + v + ' after ' + t.last);
      t.received.push(v);
      t.last = Math.max(t.last, v);
    } else if (ch === 1) t.control.push(text);
    else if (ch === 2) {
      const v = Number(text);
      if (v !== t.echoed + 1) t.errors.push('echo ' + v + ' after ' + t.echoed);
      t.echoed = Math.max(t.echoed, v);
    } else if (ch === 3) t.errors.push('service saw ' + text);
  });
  s.ready.then(
    () => {
      t.id = s.id;
      s.send('start 5');
      setInterval(() => {
        if (s.state === 'lost' || s.state === 'closed') return;
        t.sent++;
        s.send(String(t.sent));
      }, 20);
    },
    (err) => t.errors.push('ready: ' + err.message),
  );
</script>`;

interface PageState {
  id: string | undefined;
  received: number[];
  last: number;
  echoed: number;
  sent: number;
  errors: string[];
  events: string[];
  control: string[];
}

/** What the page puts on `window` (a cast inside each `page.evaluate`, which runs in the page). */
type PageWindow = { t: PageState; sockets: number; session: { state: string; id: string } };

describe('browser client', { skip: browserMissing() }, () => {
  it('keeps a gapless stream in Chromium through the gateway while its instance moves host to host', async (t) => {
    // The browser entry, bundled for the page (msgpackr included) by esbuild, in memory.
    const bundle = await build({
      entryPoints: [ENTRY],
      bundle: true,
      format: 'esm',
      platform: 'browser',
      target: 'es2022',
      write: false,
      logLevel: 'silent',
    });
    const client = bundle.outputFiles[0]?.text as string;
    assert.doesNotMatch(client, /from\s*["']node:/, 'the browser bundle imports nothing from Node');

    const server = createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (path === '/') res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
      else if (path === '/client.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(client);
      else res.writeHead(404).end();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    t.after(() => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    });
    const site = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    const services = [`stream=${SERVICES.stream}`];
    const cluster = await startCluster({ hosts: [{ services }, { services }, { services }] });
    t.after(() => cluster.close());
    const gateway = await cluster.startGateway();
    const wsUrl = gateway.urls[0] as string;
    assert.match(wsUrl, /^ws:\/\//);

    const browser = await launchBrowser(t);
    const { page, errors } = await openPage(browser, t);
    await page.goto(`${site}/?url=${encodeURIComponent(wsUrl)}`);
    await page.waitForFunction(
      () =>
        (window as unknown as PageWindow).t.id !== undefined &&
        (window as unknown as PageWindow).t.last >= 20 &&
        (window as unknown as PageWindow).t.echoed >= 3,
      null,
      {
        timeout: 45_000,
        polling: 50,
      },
    );
    const id = (await page.evaluate(() => (window as unknown as PageWindow).t.id)) as string;
    assert.match(id, /^[0-9a-f]{32}$/);

    type Where = { sessions: Array<{ instance: string; host: string; state: string }> };
    const where = async () => {
      const { sessions } = await cluster.api<Where>(`/api/sessions?id=${id}`);
      assert.equal(sessions.length, 1, `one host serves session ${id}: ${JSON.stringify(sessions)}`);
      return sessions[0] as Where['sessions'][0];
    };
    const { instance, host: first } = await where();
    const hosts = cluster.hosts.map((h) => h.id);
    assert.ok(hosts.includes(first));

    // Around the three hosts and back: a, b, c, a (from wherever it started).
    let at = first;
    for (let move = 0; move < 4; move++) {
      const to = hosts[(hosts.indexOf(at) + 1) % hosts.length] as string;
      const { last, echoed } = await page.evaluate(() => (window as unknown as PageWindow).t);
      const before = { last, echoed };
      const m = await cluster.api<MigrationRecord>('/api/migrate', { instance, to });
      assert.equal(m.outcome, 'committed', `move ${move}: ${m.code} ${m.message}`);
      assert.equal(m.to, to);
      // The stream keeps going after the move, in both directions.
      await page.waitForFunction(
        (b) =>
          (window as unknown as PageWindow).t.last >= b.last + 40 &&
          (window as unknown as PageWindow).t.echoed >= b.echoed + 10,
        before,
        {
          timeout: 45_000,
          polling: 50,
        },
      );
      const now = await where();
      assert.equal(now.host, to, `move ${move}: the session is served by the destination`);
      assert.equal(now.instance, instance);
      at = to;
    }

    const final = (await page.evaluate(() => ({
      ...(window as unknown as PageWindow).t,
      state: (window as unknown as PageWindow).session.state,
      sessionId: (window as unknown as PageWindow).session.id,
      sockets: (window as unknown as PageWindow).sockets,
    }))) as PageState & { state: string; sessionId: string; sockets: number };
    assert.deepEqual(final.errors, []);
    assert.equal(final.state, 'open');
    assert.equal(final.sessionId, id, 'the same session throughout');
    // Every index exactly once, in order: 1, 2, …, last.
    assert.equal(final.received.length, final.last);
    assert.ok(
      final.received.every((v, i) => v === i + 1),
      'indices are contiguous from 1',
    );
    assert.ok(final.echoed >= 40);
    assert.equal(final.sockets, 1, 'the page opened one WebSocket, ever: the gateway re-spliced it');
    assert.ok(!final.events.includes('lost') && !final.events.includes('suspended'), final.events.join(','));
    assert.deepEqual(errors, []);
  });
});
