import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { type TestContext, test } from 'node:test';
import { LinkEmulator, type LinkEmulatorOptions } from './link-emulator.js';

// ---- helpers ---------------------------------------------------------------

interface TestServer {
  port: number;
  /** Every socket the server accepted, in order. */
  accepted: net.Socket[];
  /** Total bytes the server received over all connections. */
  received: () => number;
  /** Resolves once the server has received at least n bytes in total. */
  waitReceived: (n: number) => Promise<void>;
}

/** A TCP server on an ephemeral loopback port; torn down by t.after. */
async function startServer(t: TestContext, mode: 'echo' | 'sink'): Promise<TestServer> {
  const accepted: net.Socket[] = [];
  let received = 0;
  const waiters: Array<{ n: number; resolve: () => void }> = [];
  const server = net.createServer((s) => {
    accepted.push(s);
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      received += d.length;
      for (const w of waiters.filter((w) => received >= w.n)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    });
    if (mode === 'echo') s.pipe(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(async () => {
    for (const s of accepted) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    accepted,
    received: () => received,
    waitReceived: (n) =>
      received >= n ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ n, resolve })),
  };
}

async function startEmulator(
  t: TestContext,
  port: number,
  opts: Omit<LinkEmulatorOptions, 'target'> = {},
): Promise<LinkEmulator> {
  const emu = await LinkEmulator.start({ target: { host: '127.0.0.1', port }, ...opts });
  t.after(() => emu.close());
  return emu;
}

async function connect(t: TestContext, emu: LinkEmulator): Promise<net.Socket> {
  const s = net.connect(emu.port, emu.host);
  s.on('error', () => {});
  t.after(() => {
    s.destroy();
  });
  await once(s, 'connect');
  s.setNoDelay(true);
  return s;
}

/** Collects everything a socket reads; `until(n)` resolves once n bytes arrived. */
function collect(s: net.Socket) {
  const chunks: Buffer[] = [];
  let length = 0;
  let waiter: { n: number; resolve: (b: Buffer) => void } | undefined;
  s.on('data', (d: Buffer) => {
    chunks.push(d);
    length += d.length;
    if (waiter && length >= waiter.n) {
      const w = waiter;
      waiter = undefined;
      w.resolve(Buffer.concat(chunks));
    }
  });
  return {
    length: () => length,
    until: (n: number): Promise<Buffer> =>
      length >= n ? Promise.resolve(Buffer.concat(chunks)) : new Promise((resolve) => (waiter = { n, resolve })),
  };
}

async function roundTrip(s: net.Socket, rx: ReturnType<typeof collect>, msg: string): Promise<void> {
  const before = rx.length();
  s.write(msg);
  const got = await rx.until(before + msg.length);
  assert.equal(got.subarray(before).toString(), msg);
}

/** Resolves on 'close'. (events.once would reject on the ECONNRESET an abort may cause.) */
const closed = (s: net.Socket) => new Promise<void>((r) => s.once('close', () => r()));

/**
 * The emulator's own sockets close a tick or so after the peer sees it; no
 * event exposes that, so poll the counter briefly.
 */
async function noConnections(emu: LinkEmulator): Promise<void> {
  const deadline = performance.now() + 2000;
  while (emu.connections !== 0 && performance.now() < deadline) await new Promise((r) => setImmediate(r));
  assert.equal(emu.connections, 0);
}

/** Negative-check window only: asserts nothing happened during it, never used to wait for an event. */
const window = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---- tests -----------------------------------------------------------------

test('forwards 1 MiB intact and in order with no impairment', async (t) => {
  const echo = await startServer(t, 'echo');
  const emu = await startEmulator(t, echo.port);
  const s = await connect(t, emu);
  const rx = collect(s);
  const payload = randomBytes(1024 * 1024);
  s.write(payload);
  const got = await rx.until(payload.length);
  assert.equal(got.length, payload.length);
  assert.ok(got.equals(payload), 'echoed bytes differ');
  assert.deepEqual(emu.bytesForwarded, { up: payload.length, down: payload.length });
});

test('small maxBufferedBytes applies backpressure without losing data', async (t) => {
  const echo = await startServer(t, 'echo');
  const emu = await startEmulator(t, echo.port, { maxBufferedBytes: 16 * 1024, delayMs: 5 });
  const s = await connect(t, emu);
  const rx = collect(s);
  const payload = randomBytes(4 * 1024 * 1024);
  s.write(payload);
  const got = await rx.until(payload.length);
  assert.ok(got.equals(payload), 'echoed bytes differ');
});

test('delayMs applies in each direction', async (t) => {
  const echo = await startServer(t, 'echo');
  const emu = await startEmulator(t, echo.port, { delayMs: 100 });
  const s = await connect(t, emu);
  const rx = collect(s);
  const t0 = performance.now();
  await roundTrip(s, rx, 'ping');
  const rtt = performance.now() - t0;
  assert.ok(rtt >= 200, `rtt ${rtt.toFixed(1)}ms < 200ms`);
  assert.ok(rtt < 600, `rtt ${rtt.toFixed(1)}ms >= 600ms`);

  // setConditions applies to data sent from now on.
  emu.setConditions({ delayMs: 0 });
  const t1 = performance.now();
  await roundTrip(s, rx, 'pong');
  const rtt2 = performance.now() - t1;
  assert.ok(rtt2 < 150, `rtt after setConditions ${rtt2.toFixed(1)}ms`);
});

test('bandwidthBps serializes data', async (t) => {
  const sink = await startServer(t, 'sink');
  const emu = await startEmulator(t, sink.port, { bandwidthBps: 8_000_000 });
  const s = await connect(t, emu);
  const size = 1024 * 1024; // 8.39 Mbit -> ~1.05 s at 8 Mbit/s
  const t0 = performance.now();
  s.write(randomBytes(size));
  await sink.waitReceived(size);
  const elapsed = performance.now() - t0;
  assert.ok(elapsed >= 900, `1 MiB took only ${elapsed.toFixed(0)}ms`);
  assert.ok(elapsed < 5000, `1 MiB took ${elapsed.toFixed(0)}ms`);
});

for (const [name, random] of [
  ['Math.random', undefined],
  // Adversarial RNG: alternating max/min jitter would reorder every other chunk if unchecked.
  [
    'alternating RNG',
    (() => {
      let i = 0;
      return () => (i++ % 2 === 0 ? 0.999 : 0);
    })(),
  ],
] as const) {
  test(`jitter never reorders bytes (${name})`, async (t) => {
    const echo = await startServer(t, 'echo');
    const emu = await startEmulator(t, echo.port, { jitterMs: 20, ...(random ? { random } : {}) });
    const s = await connect(t, emu);
    const rx = collect(s);
    const lines = Array.from({ length: 2000 }, (_, i) => `${i}\n`);
    const total = lines.reduce((n, l) => n + l.length, 0);
    // Spread writes over event-loop turns so the proxy sees many separate chunks.
    for (let i = 0; i < lines.length; i++) {
      s.write(lines[i] as string);
      if (i % 10 === 9) await new Promise((r) => setImmediate(r));
    }
    const got = (await rx.until(total)).toString();
    assert.equal(got, lines.join(''));
  });
}

test('a clean end (FIN) is delivered after queued data and closes both sides', async (t) => {
  const echo = await startServer(t, 'echo');
  const emu = await startEmulator(t, echo.port, { delayMs: 30 });
  const s = await connect(t, emu);
  const rx = collect(s);
  const ended = once(s, 'end');
  s.end('last words');
  await ended;
  assert.equal((await rx.until(0)).toString(), 'last words');
  await closed(s);
  await noConnections(emu);
});

test('an unreachable target closes the client connection', async (t) => {
  const gone = net.createServer();
  gone.listen(0, '127.0.0.1');
  await once(gone, 'listening');
  const port = (gone.address() as net.AddressInfo).port;
  await new Promise<void>((r) => gone.close(() => r()));
  const emu = await startEmulator(t, port);
  const s = await connect(t, emu);
  await closed(s);
  await noConnections(emu);
});

test('cut() destroys existing connections; new connections still work', async (t) => {
  const echo = await startServer(t, 'echo');
  const emu = await startEmulator(t, echo.port);
  const s = await connect(t, emu);
  const rx = collect(s);
  await roundTrip(s, rx, 'hello');
  const serverSide = echo.accepted[0] as net.Socket;
  assert.equal(emu.connections, 1);

  const clientClosed = closed(s);
  const serverClosed = closed(serverSide);
  emu.cut();
  await Promise.all([clientClosed, serverClosed]);

  const s2 = await connect(t, emu);
  await roundTrip(s2, collect(s2), 'again');
  assert.equal(echo.accepted.length, 2);
});

test('partition() holds data and new connections; heal() delivers in order', async (t) => {
  const echo = await startServer(t, 'echo');
  const emu = await startEmulator(t, echo.port, { delayMs: 10 });
  const s = await connect(t, emu);
  const rx = collect(s);
  await roundTrip(s, rx, 'warmup');
  const before = { client: rx.length(), server: echo.received() };

  emu.partition();
  const parts = ['one,', 'two,', 'three,', 'four'];
  for (const p of parts) s.write(p);
  const late = await connect(t, emu); // accepted by the emulator, but held
  const lateRx = collect(late);
  late.write('late');

  await window(300);
  assert.equal(echo.received(), before.server, 'server received data during partition');
  assert.equal(rx.length(), before.client, 'client received data during partition');
  assert.equal(echo.accepted.length, 1, 'held connection reached the target during partition');
  assert.equal(emu.connections, 2);

  emu.heal();
  const msg = parts.join('');
  const got = await rx.until(before.client + msg.length);
  assert.equal(got.subarray(before.client).toString(), msg);
  assert.equal((await lateRx.until(4)).toString(), 'late');
  assert.equal(echo.accepted.length, 2);
});

test('close() destroys all connections and stops listening', async (t) => {
  const echo = await startServer(t, 'echo');
  const emu = await startEmulator(t, echo.port, { delayMs: 20 });
  const seen: number[] = [];
  emu.onConnection((info) => seen.push(info.remotePort));
  const clients = await Promise.all([connect(t, emu), connect(t, emu), connect(t, emu)]);
  await Promise.all(clients.map((c) => roundTrip(c, collect(c), 'x')));
  assert.equal(emu.connections, 3);
  assert.deepEqual(
    seen.sort((a, b) => a - b),
    clients.map((c) => c.localPort as number).sort((a, b) => a - b),
  );

  const clientsClosed = clients.map(closed);
  for (const c of clients) c.write('in flight'); // queued data is discarded
  await emu.close();
  await Promise.all(clientsClosed);
  assert.equal(emu.connections, 0);

  const refused = net.connect(emu.port, emu.host);
  const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
  assert.equal(err.code, 'ECONNREFUSED');
});
