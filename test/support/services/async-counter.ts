import { defineService } from '../../../src/service/index.js';

/** A counter whose timer hook is async and slow: its firings queue up behind suspensions. */
export default defineService({
  name: 'acounter',
  version: '1.0.0',
  message(ctx) {
    ctx.timers.setInterval('tick', 4);
  },
  async timer(ctx) {
    await new Promise((r) => setTimeout(r, Math.random() * 8));
    const i = (ctx.state.get<number>('i') ?? 0) + 1;
    ctx.state.set('i', i);
    ctx.broadcast(String(i));
  },
});
