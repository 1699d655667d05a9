import { defineService, type InstanceContext } from '../../src/service/index.js';
// In your own project: import { defineService } from 'roam/service';

/**
 * stream — a steady flow of messages at the rate the client asks for.
 *
 * `rate <perSecond> [payloadBytes]` starts (or changes) the flow: `perSecond` messages a second
 * (1..1000), each `<index> <payload>` on channel 0, where the index counts 1, 2, 3, … and the
 * payload is `payloadBytes` (0..65536, default 64) filler bytes. `stop` ends it. A client checks
 * the indices are contiguous and the payloads the size it asked for.
 *
 * It shows a streaming service's one duty: do not produce while the client is away. Messages sent
 * to a disconnected session wait in its replay window (4 MiB by default) and overflowing it loses
 * the session; so a tick with the client away is skipped — the index only moves when a message
 * really goes out, and the flow resumes where it left off.
 */
export const MAX_RATE = 1000;
export const MAX_PAYLOAD = 65536;

function arm(ctx: InstanceContext): void {
  const rate = ctx.state.get<number>('rate') ?? 1;
  ctx.timers.setInterval('tick', Math.max(1, Math.round(1000 / rate)), { catchUp: 'skip' });
}

export default defineService({
  name: 'stream',
  version: '1.0.0',
  compat: ['stream-example/1'],

  message(ctx, session, data) {
    const [cmd, a, b] = new TextDecoder().decode(data).trim().split(/\s+/);
    if (cmd === 'rate') {
      const rate = Number(a);
      const size = Number(b ?? 64);
      if (!Number.isInteger(rate) || rate < 1 || rate > MAX_RATE) {
        session.send(`error: rate wants 1..${MAX_RATE} messages a second, got ${a}`, 1);
        return;
      }
      if (!Number.isInteger(size) || size < 0 || size > MAX_PAYLOAD) {
        session.send(`error: payload wants 0..${MAX_PAYLOAD} bytes, got ${b}`, 1);
        return;
      }
      ctx.state.set('rate', rate);
      ctx.state.set('size', size);
      arm(ctx);
    } else if (cmd === 'stop') {
      ctx.timers.clear('tick');
    } else {
      session.send(`error: unknown command ${JSON.stringify(cmd)} (rate <perSecond> [payloadBytes] | stop)`, 1);
    }
  },

  timer(ctx) {
    const session = ctx.sessions()[0];
    if (!session?.connected) return; // client away: produce nothing rather than fill the replay window
    const i = (ctx.state.get<number>('i') ?? 0) + 1;
    ctx.state.set('i', i);
    session.send(`${i} ${'x'.repeat(ctx.state.get<number>('size') ?? 0)}`);
  },

  resume(_ctx, session, how) {
    session.send(`resumed:${how}`, 1);
  },
});
