import { defineService } from '../../../src/service/index.js';

/**
 * The Migrate paper's benchmark: after `start <ms>` the instance sends 1, 2, 3, … every ms.
 * The continuation is the index plus the timer.
 */
export default defineService({
  name: 'counter',
  version: '1.0.0',
  compat: ['counter/1'],
  message(ctx, session, data) {
    const [cmd, arg] = new TextDecoder().decode(data).split(' ');
    if (cmd === 'start') ctx.timers.setInterval('tick', Number(arg ?? 100), { catchUp: 'skip' });
    if (cmd === 'stop') ctx.timers.clear('tick');
    if (cmd === 'pad') ctx.state.set('pad', new Uint8Array(Number(arg)));
    if (cmd === 'depends') session.dependsOn(arg as string);
  },
  timer(ctx) {
    const i = (ctx.state.get<number>('i') ?? 0) + 1;
    ctx.state.set('i', i);
    ctx.broadcast(String(i));
  },
  resume(_ctx, session, how) {
    session.send(`resumed:${how}`, 1);
  },
});
