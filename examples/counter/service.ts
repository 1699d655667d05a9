import { defineService } from '../../src/service/index.js';

/**
 * The Migrate paper's benchmark service (Snoeren et al., §6): a per-session instance that, after
 * `start <ms>`, sends 1, 2, 3, … every `ms` milliseconds.
 *
 * Its whole continuation is the last index (`ctx.state`) plus the `tick` timer (`ctx.timers`,
 * stored as a deadline and a period). Nothing else is needed for the client to see an unbroken
 * sequence across transport drops, suspension to the Store, host restarts and moves: the runtime
 * replays unacknowledged messages and re-arms the timer.
 *
 * Channel 0 carries the indices; channel 1 carries control notices (`resumed:<how>`, errors).
 */
export default defineService({
  name: 'counter',
  version: '1.0.0',
  compat: ['example-counter/1'],

  message(ctx, session, data) {
    const [cmd, arg] = new TextDecoder().decode(data).trim().split(/\s+/);
    switch (cmd) {
      case 'start': {
        const ms = Number(arg ?? 100);
        if (!Number.isFinite(ms) || ms < 1 || ms > 3_600_000) {
          session.send(`error: start needs a period in ms (1..3600000), got ${arg}`, 1);
          return;
        }
        // `skip`: after a long suspension the counter fires once and carries on, rather than
        // bursting out every period it missed. The indices stay contiguous either way.
        ctx.timers.setInterval('tick', ms, { catchUp: 'skip' });
        return;
      }
      case 'stop':
        ctx.timers.clear('tick');
        return;
      default:
        session.send(`error: unknown command ${JSON.stringify(cmd)} (start <ms> | stop)`, 1);
    }
  },

  timer(ctx) {
    const i = (ctx.state.get<number>('i') ?? 0) + 1;
    ctx.state.set('i', i);
    // A per-session instance has exactly one session; broadcast reaches it.
    ctx.broadcast(String(i));
  },

  resume(_ctx, session, how) {
    session.send(`resumed:${how}`, 1);
  },
});
