import { defineService } from '../../../src/service/index.js';

const dec = new TextDecoder();

/**
 * The migration workload. Outbound: after `start <ms> [dirtyBytes]` the instance sends 1, 2, 3, …
 * every `ms` on channel 0 and, with `dirtyBytes`, rewrites one random value of the state on every
 * tick (so the state is dirtied while it moves). `fill <n> <bytes>` gives the instance `n` values
 * of `bytes` each. Inbound: any other message is a number the client counts up from 1; the
 * service checks it follows the last one and echoes `<n>` on channel 2, or `gap <want> <got>` on
 * channel 3 if it does not — so the client sees, in order, exactly what the service received.
 */
export default defineService({
  name: 'stream',
  version: '1.0.0',
  compat: ['stream/1'],
  message(ctx, session, data) {
    const text = dec.decode(data);
    const [cmd, a, b] = text.split(' ');
    if (cmd === 'start') {
      ctx.state.set('dirty', Number(b ?? 0));
      ctx.timers.setInterval('tick', Number(a ?? 1), { catchUp: 'burst' });
      return;
    }
    if (cmd === 'stop') {
      ctx.timers.clear('tick');
      return;
    }
    if (cmd === 'moveto') {
      // Self migration: `moveto host <id>` or `moveto label <k>=<v>`.
      if (a === 'host') ctx.moveTo({ host: b as string });
      else {
        const [k, v] = (b ?? '').split('=');
        ctx.moveTo({ labels: { [k as string]: v as string } });
      }
      return;
    }
    if (cmd === 'fill') {
      const n = Number(a);
      const size = Number(b);
      ctx.state.set('slots', n);
      for (let i = 0; i < n; i++) ctx.state.set(`v${i}`, new Uint8Array(size).fill(i & 0xff));
      session.send(`filled ${n}`, 1);
      return;
    }
    const n = Number(text);
    const last = session.state.get<number>('in') ?? 0;
    if (n !== last + 1) {
      session.send(`gap ${last + 1} ${n}`, 3);
      return;
    }
    session.state.set('in', n);
    session.send(text, 2);
  },
  timer(ctx) {
    const i = (ctx.state.get<number>('i') ?? 0) + 1;
    ctx.state.set('i', i);
    const dirty = ctx.state.get<number>('dirty') ?? 0;
    const slots = ctx.state.get<number>('slots') ?? 0;
    if (dirty > 0 && slots > 0)
      ctx.state.set(`v${Math.floor(Math.random() * slots)}`, new Uint8Array(dirty).fill(i & 0xff));
    ctx.broadcast(String(i));
  },
  resume(_ctx, session, how) {
    session.send(`resumed:${how}`, 1);
  },
});
