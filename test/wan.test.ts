import assert from 'node:assert/strict';
import { it } from 'node:test';
import { connect } from '../src/client/node.js';
import { LinkEmulator } from './support/link-emulator.js';
import { startTestServer } from './support/server.js';

const DELAY_MS = 200; // each way: a 400 ms round trip, a bad intercontinental mobile link
const BANDWIDTH = 20_000_000;

it(`works over ${DELAY_MS} ms one-way delay and 20 Mbit/s, and its RTT estimate tracks the link`, async (t) => {
  const srv = await startTestServer();
  const target = new URL(srv.ws);
  const emu = await LinkEmulator.start({
    target: { host: target.hostname, port: Number(target.port) },
    delayMs: DELAY_MS,
    bandwidthBps: BANDWIDTH,
  });
  t.after(async () => {
    await srv.close();
    await emu.close();
  });
  const s = connect(`ws://127.0.0.1:${emu.port}`, { service: 'echo' });
  t.after(() => s.close());
  const suspensions: unknown[] = [];
  s.on('suspended', (e) => suspensions.push(e));
  await s.ready;

  const echo = (payload: Uint8Array): Promise<Uint8Array> => {
    const p = new Promise<Uint8Array>((r) => s.once('message', (d) => r(d)));
    s.send(payload);
    return p;
  };

  // Application round trips until the heartbeat has sampled the link a few times.
  const appRtts: number[] = [];
  const start = performance.now();
  while (performance.now() - start < 4500) {
    const t0 = performance.now();
    await echo(new Uint8Array(64));
    appRtts.push(performance.now() - t0);
  }
  appRtts.sort((a, b) => a - b);
  const appMedian = appRtts[appRtts.length >> 1] as number;
  assert.ok(appMedian >= 2 * DELAY_MS, `application RTT ${appMedian} ms is at least the emulated ${2 * DELAY_MS} ms`);
  const rtt = s.rtt;
  assert.ok(rtt, 'heartbeats produced an RTT estimate');
  t.diagnostic(
    `srtt ${rtt.srtt.toFixed(1)} ms, rttvar ${rtt.rttvar.toFixed(1)} ms, app median ${appMedian.toFixed(1)} ms`,
  );
  assert.ok(rtt.srtt >= 2 * DELAY_MS - 5, `srtt ${rtt.srtt} should not undercut the link`);
  assert.ok(Math.abs(rtt.srtt - appMedian) < 100, `srtt ${rtt.srtt} tracks application RTT ${appMedian}`);

  // Bulk data is paced by the emulated bandwidth and arrives intact.
  const big = new Uint8Array(512 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
  const t0 = performance.now();
  const back = await echo(big);
  const elapsed = performance.now() - t0;
  assert.deepEqual(back, big);
  const floorMs = ((2 * big.length * 8) / BANDWIDTH) * 1000 + 2 * DELAY_MS;
  assert.ok(elapsed >= floorMs * 0.9, `512 KiB round trip took ${elapsed} ms, link allows no less than ${floorMs}`);
  assert.equal(suspensions.length, 0, 'a slow link is not mistaken for a dead one');
});
