import type { Clock } from '../session/index.js';
import { systemClock } from '../session/index.js';
import { RoamError } from '../wire/index.js';
import type { ServerSession, SessionHandler } from './server.js';

/** `echo`: every message comes back on the channel it arrived on. */
export const echoService: SessionHandler = {
  open(session) {
    session.on('message', (data, channel) => {
      try {
        session.send(data, channel);
      } catch (err) {
        if (!(err instanceof RoamError)) throw err;
      }
    });
  },
};

const dec = new TextDecoder();

/**
 * `counter`: the Migrate paper's benchmark. After `start <intervalMs>` the server sends 1, 2, 3, …
 * (decimal text) every intervalMs, whether or not the client is connected; the client checks the
 * indices are contiguous. `stop` stops it. `start` with interval 0 sends as fast as backpressure
 * allows (for benchmarks).
 */
export function counterService(clock: Clock = systemClock): SessionHandler {
  return {
    open(session: ServerSession) {
      let index = 0;
      let timer: ReturnType<Clock['setTimeout']> | undefined;
      let interval = 0;
      const stop = (): void => {
        if (timer !== undefined) clock.clearTimeout(timer);
        timer = undefined;
      };
      const tick = (): void => {
        timer = undefined;
        if (session.state === 'lost' || session.state === 'closed') return;
        try {
          session.send(String(++index));
        } catch (err) {
          if (err instanceof RoamError) return;
          throw err;
        }
        timer = clock.setTimeout(tick, interval);
      };
      session.on('message', (data) => {
        const [cmd, arg] = dec.decode(data).trim().split(/\s+/);
        if (cmd === 'start') {
          const ms = Number(arg ?? '100');
          if (!Number.isFinite(ms) || ms < 0 || ms > 3_600_000) return;
          interval = ms;
          stop();
          timer = clock.setTimeout(tick, interval);
        } else if (cmd === 'stop') {
          stop();
        }
      });
      session.on('event', (ev) => {
        if (ev.type === 'lost' || ev.type === 'closed') stop();
      });
    },
  };
}

/** The services the minimal server ships with. */
export function builtinServices(clock?: Clock): Record<string, SessionHandler> {
  return { echo: echoService, counter: counterService(clock) };
}
