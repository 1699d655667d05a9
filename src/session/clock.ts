/** Opaque timer handle returned by a Clock. */
export type TimerHandle = { readonly __timer: unique symbol } | number | object;

/**
 * Time source injected into the session layer so tests can drive timers deterministically
 * (see ManualClock) instead of sleeping.
 */
export interface Clock {
  /** Milliseconds, monotonic, arbitrary origin. */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
  /**
   * Keeps the process alive until the returned function is called (Node); session timers are
   * unref'd, so a client that is reconnecting holds one of these instead.
   */
  keepAlive?(): () => void;
}

/** The real clock: `performance.now()` and the platform timers (works in Node and browsers). */
export const systemClock: Clock = Object.freeze({
  now: () => performance.now(),
  setTimeout: (fn: () => void, ms: number): TimerHandle => {
    const t = setTimeout(fn, ms);
    // Session timers must never keep a Node process alive on their own.
    (t as { unref?: () => void }).unref?.();
    return t as unknown as TimerHandle;
  },
  clearTimeout: (h: TimerHandle) => clearTimeout(h as Parameters<typeof clearTimeout>[0]),
  keepAlive: () => {
    const t = setInterval(() => {}, 1 << 30);
    return () => clearInterval(t);
  },
});

/** A clock that only moves when told to; for deterministic tests. */
export class ManualClock implements Clock {
  private t = 0;
  private seq = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(h: TimerHandle): void {
    this.timers.delete(h as number);
  }
  /** Number of pending timers. */
  get pending(): number {
    return this.timers.size;
  }
  /** Moves time forward, firing due timers in deadline order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
  }
}
