import { parentPort, workerData } from 'node:worker_threads';
import { RoamError } from '../wire/index.js';
import type { InstanceContext, ResumeHow, ServiceDefinition, ServiceSession } from './define.js';
import { packOwned, packRoundFrame, splitRound, unpackFrozen, unpackRoundFrame } from './precopy.js';
import type {
  FromWorker,
  FrozenBatch,
  FrozenInstance,
  InstanceDelta,
  InstanceInfo,
  InstanceSnapshot,
  PrecopyMark,
  PrecopyRound,
  SessionSnapshot,
  StateDeltaMsg,
  ToWorker,
  WorkerInit,
  WorkerStats,
} from './protocol.js';
import { StateStore } from './state.js';
import { MigratableTimers, systemWallClock, type TimerRecord } from './timers.js';

/**
 * The service side of a host: runs in a worker thread, holds every instance of one service with
 * its state stores and timers, and talks to the main thread only through messages.
 */

const port = parentPort;
if (!port) throw new Error('roam service worker must run in a worker thread');
const init = workerData as WorkerInit;
const enc = new TextEncoder();

function post(m: FromWorker, transfer?: ArrayBuffer[]): void {
  (port as NonNullable<typeof port>).postMessage(m, transfer ?? []);
}

function toBuffer(data: Uint8Array | string): ArrayBuffer {
  const bytes = typeof data === 'string' ? enc.encode(data) : data;
  // A fresh buffer we own, so it can be transferred instead of copied again.
  const out = new ArrayBuffer(bytes.byteLength);
  new Uint8Array(out).set(bytes);
  return out;
}

class WSession implements ServiceSession {
  readonly dependencies = new Set<string>();
  connected = true;
  constructor(
    readonly id: string,
    readonly state: StateStore,
  ) {}
  send(data: Uint8Array | string, channel = 0): void {
    if (!Number.isInteger(channel) || channel < 0 || channel >= RESERVED_CHANNELS) {
      throw new RoamError('INVALID_ARGUMENT', `channel must be an integer in 0..${RESERVED_CHANNELS - 1}`);
    }
    this.post(data, channel);
  }
  /** @internal also used for roam's own reserved channels. */
  post(data: Uint8Array | string, channel: number): void {
    const buf = toBuffer(data);
    post({ t: 'send', sid: this.id, ch: channel, data: buf }, [buf]);
  }
  export(key: string): void {
    this.state.export(key);
  }
  dependsOn(other: string): void {
    if (other === this.id || this.dependencies.has(other)) return;
    this.dependencies.add(other);
    post({ t: 'depends', sid: this.id, on: other });
  }
  close(reason = ''): void {
    post({ t: 'close', sid: this.id, reason });
  }
  snapshot(): SessionSnapshot {
    return { state: this.state.snapshot(), exported: this.state.exported(), dependsOn: [...this.dependencies] };
  }
}

class Instance {
  readonly sessions = new Map<string, WSession>();
  readonly ctx: InstanceContext;
  readonly timers: MigratableTimers;
  private queue: Array<() => unknown> = [];
  private running = false;
  /** Set by a migration's stop-and-copy: hooks no longer run (they wait, or are dropped on release). */
  frozen = false;
  /** Delay before each hook while a migration throttles this instance (auto-converge). */
  throttleMs = 0;

  constructor(
    readonly id: string,
    readonly key: string | undefined,
    readonly state: StateStore,
    timers: TimerRecord[] | undefined,
  ) {
    const opts = {
      clock: systemWallClock,
      fire: (name: string) =>
        this.run(() => {
          // A firing queued behind a suspension must not run once the timers are frozen: it would
          // change state no session sees. A one-shot timer is put back so the continuation keeps it.
          if (this.timers.suspended) {
            if (!this.timers.has(name)) this.timers.setTimeout(name, 0);
            return;
          }
          return def.timer?.(this.ctx, name);
        }),
      onError: (err: unknown) => report(err, this.id),
    };
    this.timers = timers ? MigratableTimers.restore(timers, opts) : new MigratableTimers(opts);
    const self = this;
    this.ctx = {
      service: def.name,
      key,
      state,
      timers: {
        setTimeout: (n, ms) => self.timers.setTimeout(n, ms),
        setInterval: (n, ms, o) => self.timers.setInterval(n, ms, o),
        clear: (n) => self.timers.clear(n),
        has: (n) => self.timers.has(n),
      },
      sessions: () => [...self.sessions.values()],
      broadcast(data, o = {}) {
        for (const s of self.sessions.values()) if (s !== o.except) s.send(data, o.channel ?? 0);
      },
      log(msg, fields = {}) {
        post({ t: 'log', level: 'info', msg, fields: { ...fields, instance: self.id } });
      },
      moveTo(target) {
        post({ t: 'moveTo', inst: self.id, target });
      },
    };
  }

  /** Runs hooks one at a time, in arrival order, even when they are async. */
  run<T>(fn: () => T | Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push(async () => {
        try {
          resolve(await fn());
        } catch (err) {
          reject(err);
        }
      });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    for (let job = this.queue.shift(); job; job = this.queue.shift()) {
      if (this.throttleMs > 0) await new Promise((r) => setTimeout(r, this.throttleMs));
      await job();
    }
    this.running = false;
  }
}

function report(err: unknown, instance: string): void {
  const e = err as Error;
  post({ t: 'log', level: 'error', msg: 'service hook threw', fields: { instance, err: e?.message ?? String(err) } });
}

async function load(): Promise<ServiceDefinition> {
  const mod = (await import(init.module)) as { default?: ServiceDefinition };
  const d = mod.default;
  if (!d || typeof d.message !== 'function') {
    throw new Error(`${init.module} has no default export made with defineService()`);
  }
  if (d.name !== init.service) throw new Error(`${init.module} defines service ${d.name}, expected ${init.service}`);
  return d;
}
const def: ServiceDefinition = await load();

const instances = new Map<string, Instance>();
/** Destination side of migrations under way: copies built round by round, not running yet. */
const staged = new Map<string, { key: string | undefined; state: StateStore; sessions: Map<string, StateStore> }>();
/** Which instance each session belongs to, so the main thread can address sessions alone. */
const bySession = new Map<string, Instance>();

function instanceOf(inst: string): Instance {
  const i = instances.get(inst);
  if (!i) throw new RoamError('INVALID_STATE', `no running instance ${inst}`);
  return i;
}

function sessionOf(sid: string): [Instance, WSession] {
  const i = bySession.get(sid);
  const s = i?.sessions.get(sid);
  if (!i || !s) throw new RoamError('INVALID_STATE', `no session ${sid}`);
  return [i, s];
}

/** The service's key rules applied to a client's key; a refusal is INVALID_ARGUMENT. */
function normalizeKey(raw: string | undefined): string | undefined {
  try {
    return def.key ? def.key(raw) : raw;
  } catch (err) {
    throw new RoamError('INVALID_ARGUMENT', `instance key refused: ${(err as Error)?.message ?? err}`);
  }
}

/** Instance ids are Store-key safe: `k` + base64url(key) for keyed instances, `s` + session id otherwise. */
function instanceId(key: string | undefined, sid: string): string {
  return key === undefined ? `s${sid}` : `k${Buffer.from(key, 'utf8').toString('base64url')}`;
}

async function ensureInstance(inst: string, key: string | undefined): Promise<Instance> {
  let i = instances.get(inst);
  if (!i) {
    i = new Instance(inst, key, new StateStore(), undefined);
    instances.set(inst, i);
    const fresh = i;
    await fresh.run(() => def.init?.(fresh.ctx));
  }
  return i;
}

async function handle(m: ToWorker): Promise<unknown> {
  switch (m.op) {
    case 'resolve': {
      const key = normalizeKey(m.key);
      const inst = instanceId(key, m.sid);
      return { inst, key, running: instances.has(inst) };
    }
    case 'open': {
      const key = normalizeKey(m.key);
      const inst = instanceId(key, m.sid);
      if (instances.get(inst)?.frozen || staged.has(inst)) {
        // Session-fatal on purpose: a transient code would have the client resume a session that
        // never opened, forever. The application opens a new session (it lands where the room went).
        throw new RoamError('SERVICE_ERROR', `instance ${inst} is moving between hosts; open a new session`);
      }
      const i = await ensureInstance(inst, key);
      const s = new WSession(m.sid, new StateStore());
      i.sessions.set(m.sid, s);
      bySession.set(m.sid, i);
      await i.run(() => def.open?.(i.ctx, s));
      return inst;
    }
    case 'msg': {
      const i = bySession.get(m.sid);
      const s = i?.sessions.get(m.sid);
      if (!i || !s) return undefined;
      i.run(() => def.message(i.ctx, s, new Uint8Array(m.data), m.ch)).catch((err) => report(err, i.id));
      return undefined;
    }
    case 'reconnected': {
      const i = bySession.get(m.sid);
      const s = i?.sessions.get(m.sid);
      if (i && s) {
        i.run(() => {
          s.connected = true;
          return def.resume?.(i.ctx, s, 'reconnected');
        }).catch((err) => report(err, i.id));
      }
      return undefined;
    }
    case 'away': {
      const i = bySession.get(m.sid);
      const s = i?.sessions.get(m.sid);
      if (i && s) {
        void i.run(() => {
          s.connected = false;
        });
      }
      return undefined;
    }
    case 'suspendSession': {
      const [i, s] = sessionOf(m.sid);
      return i.run(async () => {
        try {
          await def.suspend?.(i.ctx, s);
        } catch (err) {
          report(err, i.id);
        }
        i.sessions.delete(m.sid);
        bySession.delete(m.sid);
        // A per-session instance stops with its session: ticking on alone would change state no
        // client ever sees (a counter would skip indices).
        if (i.key === undefined && i.sessions.size === 0) i.timers.suspend();
        return s.snapshot();
      });
    }
    case 'restoreSession': {
      const i = instanceOf(m.inst);
      const s = new WSession(m.sid, StateStore.restore(m.snapshot.state, { exported: m.snapshot.exported }));
      for (const d of m.snapshot.dependsOn) s.dependencies.add(d);
      i.sessions.set(m.sid, s);
      bySession.set(m.sid, i);
      i.timers.resume();
      await i.run(async () => {
        for (const k of s.state.exported()) {
          const value = s.state.encoded(k);
          if (value) s.post(encodeExport(k, value), EXPORT_CHANNEL);
        }
        await def.resume?.(i.ctx, s, m.how as ResumeHow);
      });
      return undefined;
    }
    case 'closeSession': {
      const i = bySession.get(m.sid);
      const s = i?.sessions.get(m.sid);
      if (!i || !s) return undefined;
      bySession.delete(m.sid);
      return i.run(async () => {
        i.sessions.delete(m.sid);
        await def.close?.(i.ctx, s, m.reason);
      });
    }
    case 'endInstance': {
      const i = instances.get(m.inst);
      if (!i) return undefined;
      return i.run(() => {
        i.timers.dispose();
        for (const sid of i.sessions.keys()) bySession.delete(sid);
        instances.delete(m.inst);
      });
    }
    case 'suspendInstance': {
      const i = instanceOf(m.inst);
      return i.run((): InstanceSnapshot => {
        if (i.sessions.size > 0) throw new RoamError('INVALID_STATE', `instance ${i.id} still has sessions`);
        const timers = i.timers.suspend();
        i.timers.dispose();
        instances.delete(m.inst);
        return { state: i.state.snapshot(), timers };
      });
    }
    case 'restoreInstance': {
      if (instances.has(m.inst)) throw new RoamError('INVALID_STATE', `instance ${m.inst} is already running`);
      const i = new Instance(m.inst, m.key, StateStore.restore(m.snapshot.state), m.snapshot.timers);
      // A per-session instance waits for its session before its timers run (see suspendSession).
      if (m.key === undefined) i.timers.suspend();
      instances.set(m.inst, i);
      return undefined;
    }
    case 'instances': {
      const out: InstanceInfo[] = [];
      for (const i of instances.values()) {
        let stateBytes = i.state.sizeBytes;
        for (const s of i.sessions.values()) stateBytes += s.state.sizeBytes;
        out.push({ inst: i.id, key: i.key, sessions: i.sessions.size, stateBytes });
      }
      return out;
    }
    case 'precopy': {
      const deltas: InstanceDelta[] = [];
      for (let k = 0; k < m.insts.length; k++) {
        const i = instanceOf(m.insts[k] as string);
        deltas.push(await i.run(() => deltaOf(i, m.since[k])));
      }
      let keys = 0;
      for (const d of deltas) keys += d.instance.set.length + d.sessions.reduce((a, [, x]) => a + x.set.length, 0);
      const bytes = deltas.reduce((a, d) => a + d.bytes, 0);
      const round: PrecopyRound = { parts: 0, skipped: false, marks: deltas.map((d) => d.mark), bytes, keys };
      if (m.skipBelow !== undefined && bytes <= m.skipBelow) return { ...round, skipped: true };
      // Values are immutable once stored (a write replaces them), so packing after the instance
      // ran on still sends the state as of each mark; whatever it wrote since is in the next round.
      // Each part goes to the main thread as soon as it is packed, which writes it to the link
      // while this thread packs the next one, after the instance's timers had their turn.
      const split = splitRound(deltas, m.partBytes);
      for (let p = 0; p < split.length; p++) {
        if (p > 0) await new Promise((r) => setImmediate(r));
        const part = packRoundFrame(split[p] as InstanceDelta[], m.n, p === split.length - 1);
        post({ t: 'part', id: m.id, part }, [part.buffer as ArrayBuffer]);
      }
      round.parts = split.length;
      return round;
    }
    case 'freeze': {
      const out: FrozenInstance[] = [];
      for (let k = 0; k < m.insts.length; k++) {
        const i = instanceOf(m.insts[k] as string);
        out.push(
          await i.run((): FrozenInstance => {
            i.frozen = true;
            i.throttleMs = 0;
            const timers = i.timers.suspend();
            const members = [...i.sessions.values()].map((s) => ({
              sid: s.id,
              exported: s.state.exported(),
              dependsOn: [...s.dependencies],
            }));
            return { ...deltaOf(i, m.since[k]), timers, members };
          }),
        );
      }
      const frozen = packOwned(out);
      const batch: FrozenBatch = {
        frozen,
        bytes: out.reduce((a, f) => a + f.bytes, 0),
        instances: out.map((f) => ({ inst: f.inst, key: f.key, sids: f.members.map((x) => x.sid) })),
      };
      return new Transfer(batch, [frozen.buffer as ArrayBuffer]);
    }
    case 'thaw': {
      for (const inst of m.insts) {
        const i = instanceOf(inst);
        i.frozen = false;
        i.throttleMs = 0;
        i.timers.resume();
      }
      return undefined;
    }
    case 'release': {
      for (const inst of m.insts) release(inst);
      return undefined;
    }
    case 'throttle': {
      const i = instances.get(m.inst);
      if (i && !i.frozen) i.throttleMs = Math.max(0, Math.min(1000, m.ms));
      return undefined;
    }
    case 'stage': {
      for (const d of unpackRoundFrame(m.part)) stage(d);
      return undefined;
    }
    case 'install': {
      const list = unpackFrozen(m.frozen);
      for (const f of list) stage(f);
      for (const f of list) {
        const st = staged.get(f.inst) as NonNullable<ReturnType<typeof staged.get>>;
        staged.delete(f.inst);
        const i = new Instance(f.inst, f.key, st.state, f.timers);
        i.timers.suspend();
        i.frozen = true;
        for (const mem of f.members) {
          const ss = st.sessions.get(mem.sid) ?? new StateStore();
          const ws = new WSession(mem.sid, StateStore.restore(ss.snapshot(), { exported: mem.exported }));
          for (const d of mem.dependsOn) ws.dependencies.add(d);
          i.sessions.set(mem.sid, ws);
          bySession.set(mem.sid, i);
        }
        instances.set(f.inst, i);
      }
      return undefined;
    }
    case 'activate': {
      for (const inst of m.insts) {
        const i = instanceOf(inst);
        i.frozen = false;
        i.timers.resume();
        for (const s of i.sessions.values()) {
          i.run(() => def.resume?.(i.ctx, s, 'migrated')).catch((err) => report(err, i.id));
        }
      }
      return undefined;
    }
    case 'unstage': {
      for (const inst of m.insts) {
        staged.delete(inst);
        if (instances.get(inst)?.frozen) release(inst);
      }
      return undefined;
    }
    case 'stats': {
      let sessions = 0;
      for (const i of instances.values()) sessions += i.sessions.size;
      const stats: WorkerStats = { instances: instances.size, sessions, heapUsed: process.memoryUsage().heapUsed };
      return stats;
    }
  }
}

/** What changed in a store since `gen` (everything when `gen` is undefined or too old to diff from). */
function storeDelta(store: StateStore, gen: number | undefined): StateDeltaMsg {
  if (gen === undefined || gen < store.trackedSince) return { set: store.snapshot(), deleted: [], full: true };
  const d = store.dirtySince(gen);
  return { set: d.set, deleted: d.deleted, full: false };
}

function deltaBytes(d: StateDeltaMsg): number {
  let n = 0;
  for (const [k, v] of d.set) n += k.length + v.byteLength;
  for (const k of d.deleted) n += k.length;
  return n;
}

/** One pre-copy round: the instance's and each session's changes since `since`. */
function deltaOf(i: Instance, since: PrecopyMark | undefined): InstanceDelta {
  const instance = storeDelta(i.state, since?.inst);
  let bytes = deltaBytes(instance);
  const sessions: InstanceDelta['sessions'] = [];
  const mark: PrecopyMark = { inst: i.state.generation, sessions: {} };
  for (const s of i.sessions.values()) {
    const d = storeDelta(s.state, since?.sessions[s.id]);
    mark.sessions[s.id] = s.state.generation;
    if (d.full || d.set.length > 0 || d.deleted.length > 0) {
      sessions.push([s.id, d]);
      bytes += deltaBytes(d);
    }
  }
  return { inst: i.id, key: i.key, instance, sessions, mark, bytes };
}

function applyInto(store: StateStore, d: StateDeltaMsg): void {
  if (d.full) for (const k of store.keys()) store.delete(k);
  // From a cluster member's own store, over an authenticated link: values are adopted as they
  // are (views into the received part) instead of being decoded and copied one by one.
  store.applyDelta({ set: d.set, deleted: d.deleted }, { trusted: true });
}

/** Adds one instance's pre-copy delta to its staged (inactive) copy. */
function stage(d: InstanceDelta): void {
  if (instances.has(d.inst)) throw new RoamError('INVALID_STATE', `instance ${d.inst} already runs here`);
  let st = staged.get(d.inst);
  if (!st) {
    st = { key: d.key, state: new StateStore(), sessions: new Map() };
    staged.set(d.inst, st);
  }
  applyInto(st.state, d.instance);
  for (const [sid, delta] of d.sessions) {
    let ss = st.sessions.get(sid);
    if (!ss) {
      ss = new StateStore();
      st.sessions.set(sid, ss);
    }
    applyInto(ss, delta);
  }
}

/** Drops an instance without calling any hook (it runs elsewhere now, or never ran here). */
function release(inst: string): void {
  const i = instances.get(inst);
  if (!i) return;
  i.timers.dispose();
  for (const sid of i.sessions.keys()) bySession.delete(sid);
  instances.delete(inst);
}

/** A reply whose buffers are handed to the main thread rather than copied. */
class Transfer<T> {
  constructor(
    readonly value: T,
    readonly list: ArrayBuffer[],
  ) {}
}

/** Channels from 0xff00 up are roam's own; exported values travel on 0xffff as `key\0msgpack-bytes`. */
const RESERVED_CHANNELS = 0xff00;
const EXPORT_CHANNEL = 0xffff;
function encodeExport(key: string, v: Uint8Array): Uint8Array {
  const k = enc.encode(key);
  const out = new Uint8Array(k.length + 1 + v.length);
  out.set(k, 0);
  out.set(v, k.length + 1);
  return out;
}

port.on('message', (m: ToWorker) => {
  const id = 'id' in m ? m.id : undefined;
  handle(m).then(
    (value) => {
      if (id === undefined) return;
      if (value instanceof Transfer) post({ t: 'reply', id, ok: true, value: value.value }, value.list);
      else post({ t: 'reply', id, ok: true, value });
    },
    (err: unknown) => {
      const e = err instanceof RoamError ? err : new RoamError('SERVICE_ERROR', (err as Error)?.message ?? String(err));
      if (id !== undefined) post({ t: 'reply', id, ok: false, code: e.code, message: e.message });
      else report(err, 'inst' in m ? m.inst : '-');
    },
  );
});
post({
  t: 'ready',
  meta: {
    name: def.name,
    version: def.version,
    compat: def.compat ?? [],
    idleMs: def.idleMs ?? 60_000,
    requires: def.requires ?? {},
  },
});
