import { defineService } from '../../src/service/index.js';
// In your own project: import { defineService } from 'roam/service';

/**
 * chat — rooms as keyed instances.
 *
 * Every client that connects with the same key joins the same instance, the room:
 *
 *   const s = connect('ws://127.0.0.1:7080', { service: 'chat', key: 'lobby' });
 *
 * A line a member sends is numbered and broadcast to everyone in the room (the sender included,
 * so every member sees the same numbered sequence) on channel 0 as JSON
 * `{"n": 42, "from": "ab12cd34", "text": "hi"}`. The room keeps its last {@link HISTORY} lines in
 * instance state, and a member who joins gets them first, on channel 1, as one JSON array.
 * `/name <name>` changes how a member is shown; it lives in the member's own session state.
 *
 * The whole room — lines, counter, members' names — is in `ctx.state` and `session.state`, so the
 * room moves between hosts, or is suspended to the Store when nobody is there (after `idleMs`),
 * with nothing to write by hand.
 */
export const HISTORY = 50;

export interface Line {
  n: number;
  from: string;
  text: string;
  at: number;
}

const MAX_LINE = 2000;

export default defineService({
  name: 'chat',
  version: '1.0.0',
  compat: ['chat/1'],
  // A room nobody is attached to for a minute is suspended to the Store (and restored on the next join).
  idleMs: 60_000,

  // Room names are case-insensitive and short; throwing refuses the client's HELLO.
  key(key) {
    const room = (key ?? 'lobby').trim().toLowerCase();
    if (!/^[a-z0-9_-]{1,64}$/.test(room)) throw new Error('room names are 1-64 of a-z 0-9 _ -');
    return room;
  },

  open(ctx, session) {
    session.state.set('name', session.id.slice(0, 8));
    session.send(JSON.stringify(ctx.state.get<Line[]>('lines') ?? []), 1);
  },

  message(ctx, session, data) {
    const text = new TextDecoder().decode(data).slice(0, MAX_LINE);
    if (text.startsWith('/name ')) {
      session.state.set('name', text.slice(6).trim().slice(0, 32) || session.id.slice(0, 8));
      return;
    }
    const n = (ctx.state.get<number>('n') ?? 0) + 1;
    const line: Line = { n, from: session.state.get<string>('name') ?? '?', text, at: Date.now() };
    // Bounded however long the room lives: only the last HISTORY lines are kept.
    const lines = [...(ctx.state.get<Line[]>('lines') ?? []), line].slice(-HISTORY);
    ctx.state.set('n', n);
    ctx.state.set('lines', lines);
    ctx.broadcast(JSON.stringify(line));
  },
});
