import { defineService } from '../../../src/service/index.js';

/** Ticks every 5 ms; sends only while its client is connected and counts the ticks it held back. */
export default defineService({
  name: 'presence',
  version: '1.0.0',
  open(ctx) {
    ctx.timers.setInterval('tick', 5);
  },
  message() {},
  timer(ctx) {
    for (const s of ctx.sessions()) {
      if (s.connected) s.send('tick');
      else s.state.set('held', (s.state.get<number>('held') ?? 0) + 1);
    }
  },
  resume(_ctx, session, how) {
    session.send(`${how} connected=${session.connected} held=${session.state.get<number>('held') ?? 0}`, 1);
  },
});
