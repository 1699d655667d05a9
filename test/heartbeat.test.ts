import assert from 'node:assert/strict';
import { it } from 'node:test';
import { connect } from '../src/client/node.js';
import type { Transport } from '../src/session/transport.js';
import { connectTransport } from '../src/transport/index.js';
import { type Frame, FrameDecoder, FrameType } from '../src/wire/index.js';
import { within } from './support/deadline.js';
import { spawnHost } from './support/host-spawn.js';

type Kind = Frame['type'];

/**
 * Counts the frames each way on a client's transports (decoded from the bytes themselves, below
 * the session engine), and resolves `until` promises as counts are reached.
 */
function frameTap() {
  const fromHost = new Map<Kind, number>();
  const fromClient = new Map<Kind, number>();
  const waiters: Array<{ test: () => boolean; resolve: () => void }> = [];
  const count = (m: Map<Kind, number>, frames: Frame[]) => {
    for (const f of frames) m.set(f.type, (m.get(f.type) ?? 0) + 1);
    for (const w of waiters.splice(0)) {
      if (w.test()) w.resolve();
      else waiters.push(w);
    }
  };
  // Patched in place, as recordingConnector (support/server.ts) does, so the transport keeps
  // everything else it has (abort included).
  const tap = (t: Transport): Transport => {
    const inbound = new FrameDecoder();
    const outbound = new FrameDecoder();
    const bind = t.bind.bind(t);
    const send = t.send.bind(t);
    t.bind = (h) =>
      bind({
        data: (b) => {
          count(fromHost, inbound.push(b));
          h.data(b);
        },
        close: (e) => h.close(e),
      });
    t.send = (b) => {
      count(fromClient, outbound.push(b));
      send(b);
    };
    return t;
  };
  return {
    connector: async (u: string, o: { localAddress?: string | undefined }) =>
      tap(await connectTransport(u, { localAddress: o.localAddress })),
    host: (k: Kind) => fromHost.get(k) ?? 0,
    client: (k: Kind) => fromClient.get(k) ?? 0,
    until: (test: () => boolean) =>
      test() ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ test, resolve })),
  };
}

it('a real host follows the client heartbeat: no PINGs of its own while the client pings, probes once it goes quiet', async (t) => {
  const h = await spawnHost();
  t.after(() => h.cleanup());

  /** A client of the room `key` that sends a PING of its own every `heartbeatMs`, tapped. */
  const client = (key: string, heartbeatMs: number) => {
    const tap = frameTap();
    const session = connect(h.url, { service: 'room', key, connector: tap.connector, engine: { heartbeatMs } });
    t.after(() => session.close());
    return { tap, session };
  };
  // The client leads every 200 ms; the host's interval is its default 1 s.
  const { tap: busy, session: leader } = client('busy', 200);
  // The client pings every 5 s: the host hears nothing for whole intervals of its own.
  const { tap: quiet, session: sparse } = client('quiet', 5000);
  await Promise.all([leader.ready, sparse.ready]);

  // 20 client PINGs = 4 s: a host that led would have sent 3 or 4 PINGs of its own by now.
  await within(
    'busy client pings 20 times',
    15_000,
    busy.until(() => busy.host(FrameType.PONG) >= 20),
    () => `busy client: ${busy.client(FrameType.PING)} PINGs sent, ${busy.host(FrameType.PONG)} PONGs back`,
  );
  assert.ok(busy.client(FrameType.PING) >= 20);
  // One PING is tolerated: an event-loop stall of a second on a loaded machine looks like silence.
  assert.ok(
    busy.host(FrameType.PING) <= 1,
    `the host sent ${busy.host(FrameType.PING)} PINGs while it answered ${busy.host(FrameType.PONG)} of the client's`,
  );

  // The quiet session's silence is probed by the host every interval, and the client's PONGs keep
  // the transport alive there: the host did not drop it.
  await within(
    'host probes the quiet client 3 times',
    15_000,
    quiet.until(() => quiet.host(FrameType.PING) >= 3 && quiet.client(FrameType.PONG) >= 3),
    () => `quiet client: ${quiet.host(FrameType.PING)} host PINGs, ${quiet.client(FrameType.PONG)} PONGs`,
  );
  assert.equal(sparse.state, 'open');
  assert.ok(quiet.client(FrameType.PING) <= 1, 'the quiet client itself pinged at most once');
  // Nothing went wrong: the host never told either client to go.
  assert.equal(busy.host(FrameType.ERROR) + quiet.host(FrameType.ERROR), 0);
});
