import assert from 'node:assert/strict';
import { it } from 'node:test';
import {
  FramedConnection,
  importSessionKey,
  ManualClock,
  type MemoryTransport,
  memoryTransportPair,
  newSessionId,
  randomBytes,
  SessionEngine,
  verifyMove,
} from '../session/index.js';
import { encodeFrame, type Frame, FrameDecoder, FrameType } from '../wire/index.js';
import { ServerSession } from './server.js';

type MoveFrame = Extract<Frame, { type: typeof FrameType.MOVE }>;

/** The frames that reach `peer`, and a wait for the first frame of a type. */
function peerOf(peer: MemoryTransport) {
  const frames: Frame[] = [];
  const decoder = new FrameDecoder();
  let onFrame = (): void => {};
  peer.bind({
    data: (b) => {
      frames.push(...decoder.push(b));
      onFrame();
    },
    close: () => {},
  });
  return {
    frames,
    moves: () => frames.filter((f): f is MoveFrame => f.type === FrameType.MOVE),
    until: (type: Frame['type']) =>
      new Promise<void>((resolve) => {
        onFrame = () => frames.some((f) => f.type === type) && resolve();
        onFrame();
      }),
  };
}

it('a repeated MOVE goes once on each transport, with the same id and the same proof', async () => {
  const key = await importSessionKey(randomBytes(32));
  const sid = newSessionId();
  const engine = new SessionEngine({ clock: new ManualClock(), heartbeat: 'follow' });
  const s = new ServerSession(sid, 'svc', undefined, engine, key);
  const url = 'ws://127.0.0.1:9/dest';

  const [first, firstPeer] = memoryTransportPair();
  const onFirst = peerOf(firstPeer);
  engine.attach(new FramedConnection(first), 0);
  assert.equal(await s.move(url), true);
  // The stub's repeat after the commit: this transport already carries it.
  assert.equal(await s.move(url), true);
  // A marker written after both: everything before it has arrived with it.
  engine.writeControl(encodeFrame({ type: FrameType.PING, id: 1, time: 0 }));
  await onFirst.until(FrameType.PING);
  const [sent] = onFirst.moves();
  assert.equal(onFirst.moves().length, 1, 'one MOVE on the first transport');
  assert.ok(sent);
  assert.equal(await verifyMove(key, sid, sent), true);

  // The client came back on a new transport (the move failed at its end): it gets the repeat.
  const [second, secondPeer] = memoryTransportPair();
  const onSecond = peerOf(secondPeer);
  engine.attach(new FramedConnection(second), 0);
  assert.equal(await s.move(url), true);
  await onSecond.until(FrameType.MOVE);
  const [repeat] = onSecond.moves();
  assert.ok(repeat);
  assert.equal(repeat.moveId, sent.moveId, 'a repeat keeps its id');
  assert.deepEqual(repeat.mac, sent.mac);

  // Another endpoint is another MOVE.
  assert.equal(await s.move('ws://127.0.0.1:9/elsewhere'), true);
  engine.writeControl(encodeFrame({ type: FrameType.PING, id: 2, time: 0 }));
  await onSecond.until(FrameType.PING);
  const moves = onSecond.moves();
  assert.equal(moves.length, 2);
  assert.equal(moves[1]?.moveId, sent.moveId + 1);
  assert.equal(moves[1]?.url, 'ws://127.0.0.1:9/elsewhere');

  // Nothing attached: nothing written, and the caller is told.
  engine.detach('TRANSPORT_CLOSED', 'gone');
  assert.equal(await s.move('ws://127.0.0.1:9/elsewhere'), false);
});
