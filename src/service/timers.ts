import { RoamError } from '../wire/index.js';

/**
 * Wall-clock time and platform timers. Migratable timers use epoch milliseconds rather than a
 * monotonic clock because their deadlines must mean the same instant on another host.
 */
export interface WallClock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /** Calls `fn` once after `ms` milliseconds; returns a handle for {@link WallClock.clearTimeout}. */
  setTimeout(fn: () => void, ms: number): unknown;
  /** Cancels a pending call; ignores handles that already fired. */
  clearTimeout(h: unknown): void;
}

/** `Date.now()` and platform timers that never keep a Node process alive on their own. */
export const systemWallClock: WallClock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn: () => void, ms: number): unknown => {
    // A deadline already past (timers resuming after a migration's freeze, a late interval) fires
    // on the next turn of the event loop rather than after Node's 1 ms minimum timeout. A callback
    // that keeps re-setting a zero-delay timer so runs once per turn, still yielding to I/O.
    // (Not unref'd: an unref'd immediate does not stop the loop from blocking in poll, so it
    // would wait for unrelated I/O. It runs on the next turn, so it holds nothing open for long.)
    if (ms <= 0 && typeof setImmediate === 'function') return { immediate: setImmediate(fn) };
    const t = setTimeout(fn, ms);
    (t as { unref?: () => void }).unref?.();
    return t;
  },
  clearTimeout: (h: unknown) => {
    if (typeof h === 'object' && h !== null && 'immediate' in h) {
      clearImmediate((h as { immediate: Parameters<typeof clearImmediate>[0] }).immediate);
    } else clearTimeout(h as Parameters<typeof clearTimeout>[0]);
  },
});

/**
 * What an interval does about deadlines it missed (the host was busy, or the timer spent time
 * frozen in a continuation): `skip` fires once; `burst` fires once per missed period, at most
 * `maxBurst` times. Both then continue on the interval's original period grid.
 */
export type CatchUp = 'skip' | 'burst';

/** A timer as it travels in a continuation: absolute deadline, so it means the same thing anywhere. */
export interface TimerRecord {
  name: string;
  /** Epoch milliseconds of the next firing. */
  deadline: number;
  /** Present for intervals: the period, in milliseconds (> 0). */
  periodMs?: number;
  /** Catch-up policy; meaningful only for intervals, carried for all so records round-trip. */
  catchUp: CatchUp;
}

/** Construction options of {@link MigratableTimers}. */
export interface MigratableTimersOptions {
  clock: WallClock;
  /** Called with the timer's name each time it fires. May be async; rejections go to `onError`. */
  fire: (name: string) => void;
  /** Upper bound on catch-up firings of a `burst` interval per wake-up. Default 100. */
  maxBurst?: number;
  /** Most timers at once; one more throws `STATE_LIMIT`. Default 10,000. */
  maxTimers?: number;
  /** Receives what `fire` threw or rejected with. Without it such errors are dropped. */
  onError?: (err: unknown, name: string) => void;
}

/** Default {@link MigratableTimersOptions.maxBurst}. */
export const DEFAULT_MAX_BURST = 100;

/** Default {@link MigratableTimersOptions.maxTimers}. */
export const DEFAULT_MAX_TIMERS = 10_000;

/** Longest delay platform timers accept; longer waits re-arm when this one ends. */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/** Longest timer name, in UTF-16 code units. */
export const MAX_TIMER_NAME_LENGTH = 1024;

interface Timer {
  name: string;
  deadline: number;
  periodMs: number | undefined;
  catchUp: CatchUp;
  /** Scheduling order: breaks deadline ties first-come-first-served and fences one wake-up's batch. */
  seq: number;
  heapIndex: number;
}

/** Lone surrogates are refused because UTF-8 cannot carry them: the name would change in transit. */
function checkName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length > MAX_TIMER_NAME_LENGTH || /\p{Cs}/u.test(name)) {
    throw new RoamError(
      'INVALID_ARGUMENT',
      `timer name must be a well-formed string of at most ${MAX_TIMER_NAME_LENGTH} chars`,
    );
  }
}

function checkCatchUp(c: unknown): asserts c is CatchUp {
  if (c !== 'skip' && c !== 'burst') throw new RoamError('INVALID_ARGUMENT', `catchUp must be 'skip' or 'burst'`);
}

function checkPeriod(p: unknown): asserts p is number {
  if (typeof p !== 'number' || !Number.isFinite(p) || p <= 0) {
    throw new RoamError('INVALID_ARGUMENT', `timer period must be a positive finite number, got ${String(p)}`);
  }
}

/**
 * Named timers that can be frozen into {@link TimerRecord}s and re-armed on another host.
 *
 * Timers are identified by name, not by handle, because handles do not survive a migration; the
 * service's `fire` callback dispatches on the name. Setting a name that exists replaces that
 * timer. Intervals keep a fixed grid (each deadline is the previous one plus the period), so they
 * do not drift however late the host runs them.
 *
 * All timers of one instance share a single platform timer aimed at the earliest deadline, so
 * many idle instances cost one pending platform timer each.
 */
export class MigratableTimers {
  private readonly clock: WallClock;
  private readonly fireFn: (name: string) => void;
  private readonly onError: ((err: unknown, name: string) => void) | undefined;
  private readonly maxBurst: number;
  private readonly maxTimers: number;
  private readonly byName = new Map<string, Timer>();
  private readonly heap: Timer[] = [];
  private nextSeq = 0;
  private handle: unknown;
  private armedFor: number | undefined;
  private isSuspended = false;
  private disposed = false;

  /** Creates an empty, running set of timers. */
  constructor(opts: MigratableTimersOptions) {
    this.clock = opts.clock;
    this.fireFn = opts.fire;
    this.onError = opts.onError;
    const maxBurst = opts.maxBurst ?? DEFAULT_MAX_BURST;
    if (!Number.isSafeInteger(maxBurst) || maxBurst < 1) {
      throw new RoamError('INVALID_ARGUMENT', 'maxBurst must be a positive integer');
    }
    const maxTimers = opts.maxTimers ?? DEFAULT_MAX_TIMERS;
    if (!Number.isSafeInteger(maxTimers) || maxTimers < 0) {
      throw new RoamError('INVALID_ARGUMENT', 'maxTimers must be a non-negative integer');
    }
    this.maxBurst = maxBurst;
    this.maxTimers = maxTimers;
  }

  /**
   * Re-arms timers from {@link suspend} output, possibly on another host. Overdue timers fire on
   * the next turn of the event loop (never inside this call): a timeout once, an interval as its
   * catch-up policy says.
   *
   * @throws RoamError `INVALID_ARGUMENT` for a malformed record; `STATE_LIMIT` past `maxTimers`.
   */
  static restore(records: readonly TimerRecord[], opts: MigratableTimersOptions): MigratableTimers {
    const timers = new MigratableTimers(opts);
    if (!Array.isArray(records)) throw new RoamError('INVALID_ARGUMENT', 'timer records are not an array');
    for (const r of records) {
      if (typeof r !== 'object' || r === null) throw new RoamError('INVALID_ARGUMENT', 'timer record is not an object');
      checkName(r.name);
      checkCatchUp(r.catchUp);
      if (typeof r.deadline !== 'number' || !Number.isFinite(r.deadline)) {
        throw new RoamError('INVALID_ARGUMENT', `timer ${JSON.stringify(r.name)} has no finite deadline`);
      }
      if (r.periodMs !== undefined) checkPeriod(r.periodMs);
      timers.schedule(r.name, r.deadline, r.periodMs, r.catchUp);
    }
    return timers;
  }

  /**
   * Fires `name` once, `ms` milliseconds from now (negative counts as 0), replacing any timer of
   * that name.
   *
   * @throws RoamError `INVALID_ARGUMENT` for a bad name or non-finite `ms`; `STATE_LIMIT` past `maxTimers`.
   */
  setTimeout(name: string, ms: number): void {
    checkName(name);
    if (typeof ms !== 'number' || !Number.isFinite(ms)) {
      throw new RoamError('INVALID_ARGUMENT', `timer delay must be finite, got ${String(ms)}`);
    }
    this.schedule(name, this.clock.now() + Math.max(0, ms), undefined, 'skip');
  }

  /**
   * Fires `name` every `periodMs` milliseconds, first one period from now, replacing any timer of
   * that name. `catchUp` (default `skip`) chooses what happens to periods that were missed.
   *
   * @throws RoamError `INVALID_ARGUMENT` for a bad name, period or policy; `STATE_LIMIT` past `maxTimers`.
   */
  setInterval(name: string, periodMs: number, opts: { catchUp?: CatchUp } = {}): void {
    checkName(name);
    checkPeriod(periodMs);
    const catchUp = opts.catchUp ?? 'skip';
    checkCatchUp(catchUp);
    this.schedule(name, this.clock.now() + periodMs, periodMs, catchUp);
  }

  /** Cancels `name`; returns whether it existed. */
  clear(name: string): boolean {
    const t = this.byName.get(name);
    if (t === undefined) return false;
    this.byName.delete(name);
    this.heapRemove(t);
    this.rearm();
    return true;
  }

  /** Whether a timer called `name` is pending. */
  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** Pending timers, earliest deadline first. */
  list(): TimerRecord[] {
    return [...this.heap].sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0)).map(toRecord);
  }

  /** Whether timers are frozen by {@link suspend}. */
  get suspended(): boolean {
    return this.isSuspended;
  }

  /**
   * Freezes the timers: nothing fires until {@link resume}, and no platform timer stays pending.
   * Returns the records to put in a continuation. Timers can still be set and cleared while
   * suspended; they just do not run.
   */
  suspend(): TimerRecord[] {
    this.isSuspended = true;
    this.disarm();
    return this.list();
  }

  /**
   * Unfreezes after {@link suspend} (for instance when a migration aborts and the source keeps
   * the instance). Deadlines that passed meanwhile are caught up as in {@link restore}.
   */
  resume(): void {
    if (this.disposed || !this.isSuspended) return;
    this.isSuspended = false;
    this.rearm();
  }

  /** Cancels everything for good; later calls to set timers are ignored. */
  dispose(): void {
    this.disposed = true;
    this.disarm();
    this.byName.clear();
    this.heap.length = 0;
  }

  private schedule(name: string, deadline: number, periodMs: number | undefined, catchUp: CatchUp): void {
    if (this.disposed) return;
    const old = this.byName.get(name);
    if (old === undefined && this.byName.size >= this.maxTimers) {
      throw new RoamError('STATE_LIMIT', `more than ${this.maxTimers} timers`);
    }
    if (old !== undefined) this.heapRemove(old);
    // A new object rather than an update, so a firing loop holding the old one can tell it was replaced.
    const t: Timer = { name, deadline, periodMs, catchUp, seq: this.nextSeq++, heapIndex: -1 };
    this.byName.set(name, t);
    this.heapPush(t);
    this.rearm();
  }

  /**
   * Points the platform timer at the earliest deadline. A timer aimed too early is left alone:
   * waking once for nothing is cheaper than clearing and re-creating it on every change.
   */
  private rearm(): void {
    const top = this.heap[0];
    if (this.disposed || this.isSuspended || top === undefined) {
      this.disarm();
      return;
    }
    if (this.armedFor !== undefined && this.armedFor <= top.deadline) return;
    this.disarm();
    const delay = Math.min(MAX_TIMER_DELAY_MS, Math.max(0, top.deadline - this.clock.now()));
    this.armedFor = top.deadline;
    this.handle = this.clock.setTimeout(() => this.wake(), delay);
  }

  private disarm(): void {
    if (this.armedFor === undefined) return;
    this.clock.clearTimeout(this.handle);
    this.armedFor = undefined;
    this.handle = undefined;
  }

  private wake(): void {
    this.armedFor = undefined;
    this.handle = undefined;
    const now = this.clock.now();
    // Timers (re)scheduled by a callback during this wake-up wait for the next one, so a callback
    // that keeps re-setting a zero-delay timer yields to the event loop instead of spinning.
    const fence = this.nextSeq;
    for (;;) {
      if (this.disposed || this.isSuspended) return;
      const t = this.heap[0];
      if (t === undefined || t.deadline > now || t.seq >= fence) break;
      if (t.periodMs === undefined) {
        this.byName.delete(t.name);
        this.heapRemove(t);
        this.call(t.name);
        continue;
      }
      const period = t.periodMs;
      const missed = Math.floor((now - t.deadline) / period) + 1;
      // Next grid point strictly after now; computed from the grid origin, not from now, so
      // firing late never shifts later deadlines.
      t.deadline += missed * period;
      if (t.deadline <= now) t.deadline += period; // float rounding on huge ratios
      this.heapFix(t);
      const times = t.catchUp === 'burst' ? Math.min(missed, this.maxBurst) : 1;
      for (let i = 0; i < times; i++) {
        if (this.byName.get(t.name) !== t || this.disposed || this.isSuspended) break;
        this.call(t.name);
      }
    }
    this.rearm();
  }

  private call(name: string): void {
    try {
      const r: unknown = this.fireFn(name);
      if (typeof r === 'object' && r !== null && typeof (r as PromiseLike<unknown>).then === 'function') {
        (r as PromiseLike<unknown>).then(undefined, (err: unknown) => this.report(err, name));
      }
    } catch (err) {
      this.report(err, name);
    }
  }

  private report(err: unknown, name: string): void {
    try {
      this.onError?.(err, name);
    } catch {
      // An error handler that throws has nowhere left to report to; other timers must keep running.
    }
  }

  // Indexed binary min-heap: O(log n) insert, removal and re-keying by name.

  private heapPush(t: Timer): void {
    t.heapIndex = this.heap.length;
    this.heap.push(t);
    this.siftUp(t.heapIndex);
  }

  private heapRemove(t: Timer): void {
    const i = t.heapIndex;
    if (i < 0) return;
    const last = this.heap.pop() as Timer;
    t.heapIndex = -1;
    if (last === t) return;
    this.heap[i] = last;
    last.heapIndex = i;
    this.siftUp(i);
    this.siftDown(last.heapIndex);
  }

  private heapFix(t: Timer): void {
    this.siftUp(t.heapIndex);
    this.siftDown(t.heapIndex);
  }

  private siftUp(i: number): void {
    const h = this.heap;
    const t = h[i] as Timer;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = h[p] as Timer;
      if (!before(t, parent)) break;
      h[i] = parent;
      parent.heapIndex = i;
      i = p;
    }
    h[i] = t;
    t.heapIndex = i;
  }

  private siftDown(i: number): void {
    const h = this.heap;
    const t = h[i] as Timer;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      let c = l;
      if (r < h.length && before(h[r] as Timer, h[l] as Timer)) c = r;
      const child = h[c] as Timer;
      if (!before(child, t)) break;
      h[i] = child;
      child.heapIndex = i;
      i = c;
    }
    h[i] = t;
    t.heapIndex = i;
  }
}

function before(a: Timer, b: Timer): boolean {
  return a.deadline < b.deadline || (a.deadline === b.deadline && a.seq < b.seq);
}

function toRecord(t: Timer): TimerRecord {
  return t.periodMs === undefined
    ? { name: t.name, deadline: t.deadline, catchUp: t.catchUp }
    : { name: t.name, deadline: t.deadline, periodMs: t.periodMs, catchUp: t.catchUp };
}
