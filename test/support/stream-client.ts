import { connect, type NodeConnectOptions, type Session } from '../../src/client/node.js';

const dec = new TextDecoder();

/**
 * Drives a `stream` session (test/support/services/stream.ts) and checks both directions:
 * indices from the service must arrive 1, 2, 3, … and the echoes of what the client sent must come
 * back 1, 2, 3, … Anything else (lost, duplicated, reordered) is recorded in `errors`.
 */
export interface StreamClient {
  session: Session;
  /** Last index received from the service. */
  readonly received: number;
  /** Last number the service echoed (= received, in order, exactly once). */
  readonly echoed: number;
  /** Numbers sent so far. */
  readonly sent: number;
  readonly errors: string[];
  /** Control messages on channel 1 (e.g. `resumed:migrated`). */
  readonly control: string[];
  /** Longest silence between two consecutive indices, in ms (after the first `since` index). */
  maxGapMs(since?: number): number;
  /** The session's recent events (`type` or `type:code`), for failure messages. */
  readonly events: readonly string[];
  /** Arrival times of the indices, for gap analysis. */
  readonly times: number[];
  /** Sends the next number every `everyMs` until `stopSending`. */
  startSending(everyMs: number): void;
  stopSending(): void;
  /**
   * Resolves once `received >= n` (and, with `echoed`, once the echo caught up with `sent`); rejects
   * if the session is lost or closed first, naming its code and the session's recent events.
   */
  until(n: number): Promise<void>;
  untilEchoed(): Promise<void>;
  /** Waits for `more` further indices, stops sending, and waits until every number sent was echoed. */
  flowsOn(more: number): Promise<void>;
  sendNext(): void;
}

export function streamClient(session: Session): StreamClient {
  const errors: string[] = [];
  const control: string[] = [];
  const times: number[] = [];
  let received = 0;
  let echoed = 0;
  let sent = 0;
  let timer: NodeJS.Timeout | undefined;
  const waiters = new Set<() => void>();
  const wake = () => {
    for (const w of waiters) w();
  };
  // A session that ends can never deliver what a wait is for: the wait fails with the reason, so a
  // broken move shows up as its error code rather than as a test that hangs until its timeout.
  let ended: Error | undefined;
  const events: string[] = [];
  session.on('event', (ev) => {
    events.push('code' in ev ? `${ev.type}:${ev.code}` : ev.type);
    if (events.length > 200) events.splice(0, 100);
    if (ev.type === 'lost' || ev.type === 'closed') {
      ended = new Error(
        `session ${ev.type} (${ev.code}: ${ev.type === 'lost' ? ev.message : ev.reason}) at index ${received}, echo ${echoed}; events: ${events.join(' ')}`,
      );
      wake();
    }
  });
  session.on('message', (d, ch) => {
    const text = dec.decode(d);
    if (ch === 0) {
      const v = Number(text);
      if (v !== received + 1) errors.push(`index ${v} after ${received}`);
      received = Math.max(received, v);
      times[v] = performance.now();
    } else if (ch === 1) {
      control.push(text);
    } else if (ch === 2) {
      const v = Number(text);
      if (v !== echoed + 1) errors.push(`echo ${v} after ${echoed}`);
      echoed = Math.max(echoed, v);
    } else if (ch === 3) {
      errors.push(`service saw ${text}`);
    }
    wake();
  });
  const c: StreamClient = {
    session,
    get received() {
      return received;
    },
    get echoed() {
      return echoed;
    },
    get sent() {
      return sent;
    },
    errors,
    control,
    events,
    times,
    maxGapMs(since = 1) {
      let gap = 0;
      for (let i = since + 1; i <= received; i++) {
        const a = times[i - 1];
        const b = times[i];
        if (a !== undefined && b !== undefined) gap = Math.max(gap, b - a);
      }
      return gap;
    },
    sendNext() {
      // A session that ended (lost, closed) takes no more; the test asserts on why it ended.
      if (session.state === 'lost' || session.state === 'closed') {
        c.stopSending();
        return;
      }
      sent++;
      session.send(String(sent));
    },
    startSending(everyMs) {
      timer = setInterval(() => c.sendNext(), everyMs);
    },
    stopSending() {
      if (timer) clearInterval(timer);
      timer = undefined;
    },
    until(n) {
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (received >= n) {
            waiters.delete(check);
            resolve();
          } else if (ended) {
            waiters.delete(check);
            reject(ended);
          }
        };
        waiters.add(check);
        check();
      });
    },
    untilEchoed() {
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (echoed >= sent) {
            waiters.delete(check);
            resolve();
          } else if (ended) {
            waiters.delete(check);
            reject(ended);
          }
        };
        waiters.add(check);
        check();
      });
    },
    async flowsOn(more) {
      await c.until(received + more);
      c.stopSending();
      await c.untilEchoed();
    },
  };
  return c;
}

/**
 * Opens a `stream` session, starts the service ticking every `tickMs` (with `dirtyBytes`, it also
 * rewrites a state value per tick) and the client sending every `sendMs`, and waits for `upTo`
 * indices. The session is closed after the test.
 */
export async function openStream(
  t: { after(fn: () => unknown): void },
  url: string,
  opts: { tickMs?: number; dirtyBytes?: number; sendMs?: number; upTo?: number } & Partial<NodeConnectOptions> = {},
): Promise<StreamClient> {
  const { tickMs = 2, dirtyBytes, sendMs = tickMs, upTo = 10, ...connectOpts } = opts;
  const s = connect(url, { service: 'stream', reconnect: { initialDelayMs: 5, maxDelayMs: 50 }, ...connectOpts });
  t.after(() => s.close());
  const c = streamClient(s);
  await s.ready;
  s.send(dirtyBytes ? `start ${tickMs} ${dirtyBytes}` : `start ${tickMs}`);
  c.startSending(sendMs);
  await c.until(upTo);
  return c;
}
