import { defineService } from '../../src/service/index.js';
// In your own project: import { defineService } from 'roam/service';

/**
 * counter — the smallest useful service, and the one `roam dev` starts first.
 *
 * One instance per session (the client connects without a key). After `start <ms>` it sends
 * 1, 2, 3, … every `ms` milliseconds on channel 0; `stop` stops it. The client only has to check
 * that each number is the previous one plus one: whatever happens to the connection — a dropped
 * transport, a new IP address, a live move to another host — no number is lost or repeated.
 *
 * Everything the instance needs to carry on elsewhere is in two places the runtime moves for it:
 * the last index in `ctx.state`, and the `tick` timer in `ctx.timers` (kept as a deadline and a
 * period, not as a Node timer). There is no variable outside them: a module-level `let i` would
 * be left behind on a migration.
 *
 *   const s = connect('ws://127.0.0.1:7080', { service: 'counter' });
 *   s.on('message', (d) => console.log(new TextDecoder().decode(d)));
 *   await s.ready;
 *   s.send('start 100');
 */
export default defineService({
  name: 'counter',
  version: '1.0.0',
  // A continuation only resumes into a service with the same tags: bump it when the state changes shape.
  compat: ['counter/1'],

  message(ctx, session, data) {
    const [cmd, arg] = new TextDecoder().decode(data).trim().split(/\s+/);
    if (cmd === 'start') {
      const period = Number(arg ?? 100);
      if (!Number.isInteger(period) || period < 1 || period > 3_600_000) {
        session.send(`error: start wants a period in ms (1..3600000), got ${arg}`, 1);
        return;
      }
      // 'skip': after a long suspension, tick once and carry on instead of bursting every missed
      // period. The indices stay contiguous either way: they count ticks, not time.
      ctx.timers.setInterval('tick', period, { catchUp: 'skip' });
    } else if (cmd === 'stop') {
      ctx.timers.clear('tick');
    } else {
      session.send(`error: unknown command ${JSON.stringify(cmd)} (start <ms> | stop)`, 1);
    }
  },

  timer(ctx) {
    const i = (ctx.state.get<number>('i') ?? 0) + 1;
    ctx.state.set('i', i);
    ctx.broadcast(String(i)); // a per-session instance has one session: this is "send to my client"
  },

  resume(_ctx, session, how) {
    // how: 'reconnected' (transport came back), 'restored' (from the Store), 'migrated' (new host).
    session.send(`resumed:${how}`, 1);
  },
});
