import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { RoamError } from '../wire/index.js';
import {
  MAX_TIMER_DELAY_MS,
  MigratableTimers,
  type MigratableTimersOptions,
  systemWallClock,
  type WallClock,
} from './timers.js';

const T0 = 1_700_000_000_000;

/**
 * A wall clock that moves only when told. `advance` runs platform callbacks in deadline order,
 * setting `now` to each one's due time; `tick` runs only what is due right now and was pending
 * before the call, like one turn of an event loop.
 */
class ManualWallClock implements WallClock {
  private t: number;
  private seq = 0;
  readonly timers = new Map<number, { at: number; fn: () => void }>();
  /** Every delay ever requested, to check the 2^31-1 cap. */
  readonly delays: number[] = [];

  constructor(start = T0) {
    this.t = start;
  }
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    this.delays.push(ms);
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers.delete(h as number);
  }
  get pending(): number {
    return this.timers.size;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (let guard = 0; ; guard++) {
      assert.ok(guard < 100_000, 'timer loop does not settle');
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = end;
  }
  /** Moves time without running anything, like a host frozen or busy. */
  jump(ms: number): void {
    this.t += ms;
  }
  tick(): void {
    const due = [...this.timers].filter(([, e]) => e.at <= this.t);
    for (const [id, e] of due) {
      this.timers.delete(id);
      e.fn();
    }
  }
}

interface Fired {
  name: string;
  at: number;
}

function setup(extra: Partial<MigratableTimersOptions> = {}, clock = new ManualWallClock()) {
  const fired: Fired[] = [];
  const opts: MigratableTimersOptions = {
    clock,
    fire: (name) => {
      fired.push({ name, at: clock.now() });
    },
    ...extra,
  };
  return { clock, fired, opts, timers: new MigratableTimers(opts) };
}

function rejects(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: unknown) => err instanceof RoamError && err.code === code);
}

describe('systemWallClock', () => {
  it('reads Date.now and arms timers that do not keep the process alive', () => {
    const before = Date.now();
    const now = systemWallClock.now();
    assert.ok(now >= before && now <= Date.now());
    const h = systemWallClock.setTimeout(() => assert.fail('a cleared timer fired'), 5) as { hasRef(): boolean };
    assert.equal(h.hasRef(), false);
    systemWallClock.clearTimeout(h);
  });

  it('fires a deadline already past on the next turn (not after the 1 ms minimum), and cancels it too', async () => {
    const fired: string[] = [];
    const cancelled = systemWallClock.setTimeout(() => fired.push('cancelled'), 0);
    systemWallClock.clearTimeout(cancelled);
    systemWallClock.setTimeout(() => fired.push('due'), 0);
    // Immediates run first in, first out: one queued now runs after the due timer's turn.
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(fired, ['due']);
  });
});

describe('MigratableTimers basics', () => {
  it('fires a timeout once, at its deadline', () => {
    const { clock, fired, timers } = setup();
    timers.setTimeout('t', 1000);
    clock.advance(999);
    assert.equal(fired.length, 0);
    clock.advance(1);
    assert.deepEqual(fired, [{ name: 't', at: T0 + 1000 }]);
    assert.equal(timers.has('t'), false);
    clock.advance(10_000);
    assert.equal(fired.length, 1);
    assert.equal(clock.pending, 0);
  });

  it('fires intervals on a fixed grid even when each firing takes time', () => {
    const clock = new ManualWallClock();
    const fired: number[] = [];
    const timers = new MigratableTimers({
      clock,
      fire: () => {
        fired.push(clock.now());
        clock.jump(37); // slow handler: must not push later deadlines back
      },
    });
    timers.setInterval('i', 100);
    clock.advance(1000);
    assert.deepEqual(
      fired,
      Array.from({ length: 10 }, (_, k) => T0 + 100 * (k + 1)),
    );
    assert.equal(timers.list()[0]?.deadline, T0 + 1100);
  });

  it('replaces a timer when its name is set again, and clears by name', () => {
    const { clock, fired, timers } = setup();
    timers.setTimeout('x', 100);
    timers.setTimeout('x', 500);
    timers.setInterval('y', 50);
    timers.setTimeout('y', 60); // an interval replaced by a timeout
    assert.equal(timers.clear('nope'), false);
    clock.advance(200);
    assert.deepEqual(fired, [{ name: 'y', at: T0 + 60 }]);
    assert.equal(timers.clear('x'), true);
    clock.advance(1000);
    assert.equal(fired.length, 1);
  });

  it('fires equal deadlines in the order they were set', () => {
    const { clock, fired, timers } = setup();
    for (const n of ['c', 'a', 'b']) timers.setTimeout(n, 10);
    clock.advance(10);
    assert.deepEqual(
      fired.map((f) => f.name),
      ['c', 'a', 'b'],
    );
  });

  it('keeps at most one platform timer, whatever the number of timers', () => {
    const { clock, fired, timers } = setup();
    for (let i = 0; i < 1000; i++) timers.setTimeout(`t${i}`, 1000 - i);
    for (let i = 0; i < 10; i++) timers.setInterval(`i${i}`, 7 + i);
    assert.equal(clock.pending, 1);
    for (let step = 0; step < 1200; step += 13) {
      clock.advance(13);
      assert.ok(clock.pending <= 1);
    }
    assert.equal(fired.filter((f) => f.name.startsWith('t')).length, 1000);
    for (let i = 0; i < 10; i++) timers.clear(`i${i}`);
    clock.advance(1);
    assert.equal(clock.pending, 0);
  });

  it('treats negative delays as zero and refuses bad arguments', () => {
    const { clock, fired, timers } = setup();
    timers.setTimeout('neg', -5);
    clock.advance(0);
    assert.deepEqual(fired, [{ name: 'neg', at: T0 }]);
    rejects(() => timers.setTimeout('n', Number.NaN), 'INVALID_ARGUMENT');
    rejects(() => timers.setTimeout('n', Number.POSITIVE_INFINITY), 'INVALID_ARGUMENT');
    rejects(() => timers.setInterval('n', 0), 'INVALID_ARGUMENT');
    rejects(() => timers.setInterval('n', -1), 'INVALID_ARGUMENT');
    rejects(() => timers.setInterval('n', 10, { catchUp: 'all' as 'skip' }), 'INVALID_ARGUMENT');
    rejects(() => timers.setTimeout('x'.repeat(1025), 1), 'INVALID_ARGUMENT');
    rejects(() => timers.setTimeout('\udc00', 1), 'INVALID_ARGUMENT');
    rejects(() => new MigratableTimers({ clock, fire: () => {}, maxBurst: 0 }), 'INVALID_ARGUMENT');
  });

  it('caps platform delays at 2^31-1 ms and still fires at the real deadline', () => {
    const { clock, fired, timers } = setup();
    const far = 3 * MAX_TIMER_DELAY_MS + 5;
    timers.setTimeout('far', far);
    assert.ok(clock.delays.every((d) => d >= 0 && d <= MAX_TIMER_DELAY_MS));
    clock.advance(far - 1);
    assert.equal(fired.length, 0);
    clock.advance(1);
    assert.deepEqual(fired, [{ name: 'far', at: T0 + far }]);
    assert.ok(clock.delays.every((d) => d >= 0 && d <= MAX_TIMER_DELAY_MS));
  });

  it('limits the number of timers with STATE_LIMIT', () => {
    const { timers } = setup({ maxTimers: 2 });
    timers.setTimeout('a', 1);
    timers.setTimeout('b', 1);
    timers.setTimeout('a', 5); // replacing is not growing
    rejects(() => timers.setTimeout('c', 1), 'STATE_LIMIT');
  });
});

describe('MigratableTimers errors and re-entrancy', () => {
  it('a throwing or rejecting fire does not stop other timers; onError hears about it', async () => {
    const clock = new ManualWallClock();
    const errors: Array<[unknown, string]> = [];
    const fired: string[] = [];
    const timers = new MigratableTimers({
      clock,
      fire: (name) => {
        fired.push(name);
        if (name === 'boom') throw new Error('boom');
        if (name === 'async') return Promise.reject(new Error('later')) as unknown as undefined;
      },
      onError: (err, name) => {
        errors.push([err, name]);
        throw new Error('a broken error handler must not matter either');
      },
    });
    timers.setTimeout('boom', 10);
    timers.setTimeout('async', 10);
    timers.setInterval('tick', 10);
    timers.setTimeout('after', 10);
    clock.advance(20);
    assert.deepEqual(fired, ['boom', 'async', 'tick', 'after', 'tick']);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(
      errors.map(([e, n]) => [(e as Error).message, n]),
      [
        ['boom', 'boom'],
        ['later', 'async'],
      ],
    );
  });

  it('a callback re-setting a zero-delay timer yields instead of spinning', () => {
    const clock = new ManualWallClock();
    let count = 0;
    const timers = new MigratableTimers({
      clock,
      fire: () => {
        count++;
        timers.setTimeout('again', 0);
      },
    });
    timers.setTimeout('again', 0);
    clock.tick();
    assert.equal(count, 1);
    clock.tick();
    assert.equal(count, 2);
    timers.dispose();
  });

  it('callbacks may clear, replace, suspend or dispose mid-batch', () => {
    const { clock, timers } = setup();
    const fired: string[] = [];
    const t2 = new MigratableTimers({
      clock,
      fire: (name) => {
        fired.push(name);
        if (name === 'a') t2.clear('b');
        if (name === 'c') t2.suspend();
      },
    });
    for (const n of ['a', 'b', 'c', 'd']) t2.setTimeout(n, 5);
    clock.advance(5);
    assert.deepEqual(fired, ['a', 'c']);
    assert.deepEqual(
      t2.list().map((r) => r.name),
      ['d'],
    );
    t2.resume();
    clock.advance(0);
    assert.deepEqual(fired, ['a', 'c', 'd']);
    timers.dispose();
  });

  it('dispose cancels everything and ignores later sets', () => {
    const { clock, fired, timers } = setup();
    timers.setInterval('i', 10);
    timers.dispose();
    assert.equal(clock.pending, 0);
    timers.setTimeout('late', 1);
    clock.advance(100);
    assert.equal(fired.length, 0);
    assert.deepEqual(timers.list(), []);
  });
});

describe('MigratableTimers suspend and restore', () => {
  it('suspend stops platform timers and returns absolute deadlines', () => {
    const { clock, fired, timers } = setup();
    timers.setTimeout('t', 500);
    timers.setInterval('i', 200, { catchUp: 'burst' });
    clock.advance(250);
    const records = timers.suspend();
    assert.equal(clock.pending, 0);
    assert.deepEqual(records, [
      { name: 'i', deadline: T0 + 400, periodMs: 200, catchUp: 'burst' },
      { name: 't', deadline: T0 + 500, catchUp: 'skip' },
    ]);
    clock.advance(10_000);
    assert.deepEqual(
      fired.map((f) => f.name),
      ['i'],
    );
    assert.equal(timers.suspended, true);
  });

  it('restores on another host with a different clock reading, honouring deadlines', () => {
    const src = setup();
    src.timers.setTimeout('t', 1000);
    src.timers.setInterval('i', 300);
    src.clock.advance(100);
    const records = src.timers.suspend();
    const dstClock = new ManualWallClock(T0 + 150); // moving took 50 ms
    const dst = setup({}, dstClock);
    const timers = MigratableTimers.restore(records, dst.opts);
    dstClock.advance(T0 + 1000 - dstClock.now());
    assert.deepEqual(dst.fired, [
      { name: 'i', at: T0 + 300 },
      { name: 'i', at: T0 + 600 },
      { name: 'i', at: T0 + 900 },
      { name: 't', at: T0 + 1000 },
    ]);
    timers.dispose();
  });

  it('an overdue timeout fires once, soon, and not inside restore', () => {
    const clock = new ManualWallClock(T0 + 60_000);
    const { fired, opts } = setup({}, clock);
    const timers = MigratableTimers.restore([{ name: 'late', deadline: T0, catchUp: 'skip' }], opts);
    assert.equal(fired.length, 0);
    clock.tick();
    assert.deepEqual(fired, [{ name: 'late', at: T0 + 60_000 }]);
    clock.advance(100_000);
    assert.equal(fired.length, 1);
    timers.dispose();
  });

  it("an overdue 'skip' interval fires once and continues on its original grid", () => {
    const clock = new ManualWallClock(T0 + 1050);
    const { fired, opts } = setup({}, clock);
    const timers = MigratableTimers.restore([{ name: 'i', deadline: T0 + 100, periodMs: 100, catchUp: 'skip' }], opts);
    clock.tick();
    assert.equal(fired.length, 1);
    assert.deepEqual(timers.list(), [{ name: 'i', deadline: T0 + 1100, periodMs: 100, catchUp: 'skip' }]);
    clock.advance(150);
    assert.deepEqual(
      fired.map((f) => f.at),
      [T0 + 1050, T0 + 1100, T0 + 1200],
    );
    timers.dispose();
  });

  it("an overdue 'burst' interval fires once per missed period, at most maxBurst times", () => {
    const clock = new ManualWallClock(T0 + 1000);
    const { fired, opts } = setup({ maxBurst: 100 }, clock);
    // Deadlines T0+100 .. T0+1000 were missed: 10 firings, then on to T0+1100.
    const timers = MigratableTimers.restore([{ name: 'b', deadline: T0 + 100, periodMs: 100, catchUp: 'burst' }], opts);
    clock.tick();
    assert.equal(fired.length, 10);
    assert.equal(timers.list()[0]?.deadline, T0 + 1100);

    const clock2 = new ManualWallClock(T0 + 1_000_000);
    const capped = setup({ maxBurst: 5 }, clock2);
    const t2 = MigratableTimers.restore([{ name: 'b', deadline: T0, periodMs: 10, catchUp: 'burst' }], capped.opts);
    clock2.tick();
    assert.equal(capped.fired.length, 5);
    assert.equal(t2.list()[0]?.deadline, T0 + 1_000_010);
    timers.dispose();
    t2.dispose();
  });

  it('a host that stalls gets the same catch-up as a restore', () => {
    const { clock, fired, timers } = setup({ maxBurst: 3 });
    timers.setInterval('s', 100);
    timers.setInterval('b', 100, { catchUp: 'burst' });
    clock.jump(1000); // event loop blocked for a second
    clock.tick();
    assert.deepEqual(
      fired.map((f) => f.name),
      ['s', 'b', 'b', 'b'],
    );
    assert.deepEqual(
      timers.list().map((r) => r.deadline),
      [T0 + 1100, T0 + 1100],
    );
  });

  it('resume after suspend re-arms and catches up', () => {
    const { clock, fired, timers } = setup();
    timers.setTimeout('t', 100);
    timers.suspend();
    timers.setTimeout('while-suspended', 50);
    clock.advance(500);
    assert.equal(fired.length, 0);
    timers.resume();
    clock.advance(0);
    assert.deepEqual(
      fired.map((f) => f.name),
      ['while-suspended', 't'],
    );
  });

  it('restore refuses malformed records', () => {
    const { opts } = setup();
    const bad: unknown[] = [
      [{ name: 1, deadline: T0, catchUp: 'skip' }],
      [{ name: 'x', deadline: Number.NaN, catchUp: 'skip' }],
      [{ name: 'x', deadline: T0, periodMs: 0, catchUp: 'skip' }],
      [{ name: 'x', deadline: T0, catchUp: 'never' }],
      [null],
      'nope',
    ];
    for (const records of bad) {
      rejects(() => MigratableTimers.restore(records as never, opts), 'INVALID_ARGUMENT');
    }
  });

  it('suspend → restore round-trips records exactly (property)', () => {
    const rec = fc.record({
      name: fc.string({ maxLength: 8 }).filter((s) => !/\p{Cs}/u.test(s)),
      offset: fc.integer({ min: -10_000, max: 10_000 }),
      periodMs: fc.option(fc.integer({ min: 1, max: 5000 }), { nil: undefined }),
      catchUp: fc.constantFrom('skip' as const, 'burst' as const),
    });
    fc.assert(
      fc.property(fc.uniqueArray(rec, { selector: (r) => r.name, maxLength: 20 }), (rs) => {
        const clock = new ManualWallClock();
        const { opts } = setup({}, clock);
        const records = rs.map((r) =>
          r.periodMs === undefined
            ? { name: r.name, deadline: T0 + r.offset, catchUp: r.catchUp }
            : { name: r.name, deadline: T0 + r.offset, periodMs: r.periodMs, catchUp: r.catchUp },
        );
        const timers = MigratableTimers.restore(records, opts);
        const back = timers.suspend();
        const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
        assert.deepEqual([...back].sort(byName), [...records].sort(byName));
        assert.deepEqual(
          back.map((r) => r.deadline),
          back.map((r) => r.deadline).sort((a, b) => a - b),
        );
      }),
    );
  });

  it('timeouts fire exactly once, at their deadline, in deadline order (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 5000 }), fc.boolean()), { maxLength: 50 }),
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 20 }),
        (specs, steps) => {
          const { clock, fired, timers } = setup();
          const expected = new Map<string, number>();
          specs.forEach(([ms, cancel], i) => {
            timers.setTimeout(`t${i}`, ms);
            expected.set(`t${i}`, T0 + ms);
            if (cancel && i % 3 === 0) {
              timers.clear(`t${i}`);
              expected.delete(`t${i}`);
            }
          });
          for (const s of steps) clock.advance(s);
          clock.advance(5000);
          assert.equal(fired.length, expected.size);
          for (const f of fired) assert.equal(f.at, expected.get(f.name));
          for (let i = 1; i < fired.length; i++) assert.ok((fired[i - 1] as Fired).at <= (fired[i] as Fired).at);
          assert.equal(clock.pending, 0);
        },
      ),
    );
  });
});
