import { randomBytes } from 'node:crypto';
import { pack, Unpackr } from 'msgpackr';
import type { WebSocket } from 'ws';
import { compatMatches, type Requirements } from '../service/define.js';
import { ROUND_PART_BYTES, roundFrameHeader } from '../service/precopy.js';
import type { FrozenBatch, PrecopyMark, PrecopyRound, ServiceMeta } from '../service/protocol.js';
import type { Clock, SessionEngine, TransportSnapshot } from '../session/index.js';
import type { Store } from '../store/index.js';
import {
  type ClusterEvent,
  ClusterKeys,
  decodeJson,
  encodeJson,
  type FreezeSteps,
  type HostRecord,
  type LocationRecord,
  type MigrationOutcome,
  type MigrationReason,
  type MigrationRecord,
  signRequest,
} from '../transport/cluster.js';
import { nodeSessionCrypto } from '../transport/crypto-node.js';
import { openPeerLink } from '../transport/peer.js';
import { type CodeName, RoamError } from '../wire/index.js';
import type { Logger } from './logger.js';
import { ServerSession } from './server.js';
import type { ServiceWorker } from './service-worker.js';

/**
 * Live migration of instances, with their sessions, from this host to another (DESIGN.md,
 * "Migration, step by step"). Both ends of the host-to-host link live here.
 *
 * Source: offer → pre-copy rounds (round 0 everything, then what was dirtied since; throttle the
 * instance when the dirty set stops shrinking) → freeze (inbound held, timers stopped) → final
 * remainder with timers and transport state → wait for the destination's commit → MOVE every
 * client to the destination.
 *
 * Destination: checks compat and requirements, stages each round in the service worker (so the
 * freeze only applies a small delta), installs the frozen copy, then commits with one
 * compare-and-set of every instance's location (epoch + 1) in the Store. Only then do the
 * instances run and the sessions accept resumes.
 *
 * Either end may die at any step. The Store decides: the destination commits with a CAS from the
 * epoch the source read; a source that lost its destination before hearing the verdict claims
 * the same revisions for itself (epoch + 1, itself as owner). Exactly one CAS wins, so an instance
 * is never served by two hosts and never by none (short of the winner crashing afterwards).
 */

/** Tunables of the pre-copy loop. Defaults follow the issue: 64 KiB, 30 rounds. */
export interface MigrationOptions {
  /** Stop pre-copy when a round would carry at most this many bytes. Default 64 KiB. */
  dirtyThresholdBytes?: number;
  /** Stop pre-copy after this many rounds whatever the dirty set. Default 30. */
  maxRounds?: number;
  /** Give up on a destination that does not answer a step within this long. Default 15 s. */
  stepTimeoutMs?: number;
  /** How long a source keeps a moved session to redirect a late client. Default 60 s. */
  movedTtlMs?: number;
  /**
   * A destination reports the gap its clients saw once all resumed, or this long after the freeze
   * with the ones still away counted as late (their resumes are reported later). Default 10 s.
   */
  gapReportMs?: number;
  /**
   * Crash tests only: the process kills itself (SIGKILL) at this point of a migration, so tests can
   * check what the other end and the Store make of it. `roam host` reads it from ROAM_TEST_FAULT.
   */
  fault?: MigrationFault;
}

/** Where a crash test kills a host in the middle of a migration. */
export type MigrationFault =
  | 'destination-on-round'
  | 'destination-on-final'
  | 'source-after-commit'
  /**
   * Not a crash: the destination hands its worker a corrupt final copy, so the install fails for
   * real after the commit's compare-and-set and after the clients resumed there; the destination
   * must send them back, and the source claim the instance back over the destination's epoch.
   */
  | 'destination-install-fails';

/** How long a destination answers MIGRATION_ABORTED for the sessions of an aborted migration. */
const ABORTED_MEMORY_MS = 30_000;

/** Per-hook delays of the auto-converge steps (ms). */
const THROTTLE_STEPS = [0, 1, 2, 4, 8, 16, 32];

/** What the migration code needs from its host. */
export interface MigrationHost {
  readonly id: string;
  /** Where this host's clients connect (a destination sends them back here if it fails). */
  clientUrl(): string | undefined;
  readonly store: Store;
  readonly log: Logger;
  readonly secret: Uint8Array;
  readonly clock: Clock;
  /** A session engine continuing from a snapshot, as the host's session server builds them. */
  restoreEngine(snapshot: TransportSnapshot): SessionEngine;
  worker(service: string): { worker: ServiceWorker; meta: ServiceMeta };
  hasService(service: string): boolean;
  checkRequirements(requires: Requirements, service: string): void;
  instance(inst: string): { service: string; key: string | undefined } | undefined;
  session(sid: string): ServerSession | undefined;
  /** Why this host refuses incoming migrations right now (draining, closing), if it does. */
  refusal(): string | undefined;
  /** The migrated instance left: drop it from the host's tables; its sessions stay as stubs. */
  detachMigrated(inst: string): void;
  /** A migrated instance arrived and committed: register it and its sessions. */
  attachMigrated(
    inst: string,
    service: string,
    key: string | undefined,
    sessions: ServerSession[],
    epoch: number,
  ): void;
  /** Session ids of an instance, as the host tracks them. */
  membersOf(inst: string): string[];
  /** This host claimed its instance back at `epoch` (a migration failed after `final`). */
  adoptEpoch(inst: string, epoch: number): void;
  /**
   * A moved session's stub is no longer needed: drop it from the session server — unless the
   * session came back meanwhile and the server now holds a newer object under the same id.
   */
  forgetStub(sid: string, stub: ServerSession): void;
  emit(ev: ClusterEvent): void;
  /** An incoming migration ended here, as destination (metrics; the source has its MigrationRecord). */
  incoming?(ev: IncomingMigration): void;
}

/** How an incoming migration ended on the destination. Fields come from the source's offer. */
export interface IncomingMigration {
  id: string;
  from: string;
  service: string;
  instances: number;
  sessions: number;
  /** Why the source moves it, as its offer says (unchecked; absent from older sources). */
  reason?: string;
  outcome: MigrationOutcome;
  code?: string;
  message?: string;
  /** Bytes of migration messages received on the link. */
  bytesReceived: number;
}

interface SessionTransfer {
  sid: string;
  inst: string;
  service: string;
  key: string | null;
  sessionId: Uint8Array;
  sessionKey: Uint8Array;
  transport: TransportSnapshot;
  attached: boolean;
  moveId: number;
}

/** The sessions of one incoming migration, from its offer until its verdict. */
interface Arrival {
  add(sid: string): void;
  settle(sessions: Map<string, ServerSession> | undefined): void;
}

interface LocationClaim {
  inst: string;
  revision: number;
  epoch: number;
}

type ToDestination =
  | {
      t: 'offer';
      mid: string;
      from: string;
      /** The source's client URL: where a destination that fails after its commit sends the clients. */
      fromUrl: string;
      service: { name: string; version: string; compat: string[] };
      requires: Requirements;
      instances: Array<{ inst: string; key: string | null }>;
      sessions: number;
      /** The sessions that may come: their clients get a tentative MOVE before the commit. */
      sids?: string[];
      reason?: MigrationReason;
    }
  /**
   * One part of a pre-copy round; the destination acknowledges the round after its `last` part.
   * On the link it is a round frame (precopy.ts), not msgpack: `part` is the whole frame.
   */
  | { t: 'round'; n: number; part: Uint8Array; last: boolean }
  /** `frozen`: the packed FrozenInstance[] (precopy.ts), which only the destination's worker unpacks. */
  | { t: 'final'; frozenAt: number; frozen: Uint8Array; sessions: SessionTransfer[]; claims: LocationClaim[] }
  | { t: 'abort'; reason: string };

type ToSource =
  | { t: 'accept' }
  | { t: 'refuse'; code: CodeName; message: string }
  | { t: 'ack'; n: number }
  /** `steps`: the destination's part of the freeze (FreezeSteps' destination fields), ms. */
  | {
      t: 'committed';
      epochs: number[];
      steps?: { installMs: number; casMs: number; servingMs: number; destinationMs: number };
    }
  | { t: 'failed'; code: CodeName; message: string }
  | { t: 'resumed'; sids: string[]; gapMs: number }
  /** `late`: clients not resumed yet when the gap was reported (their resumes follow). */
  | { t: 'gap'; ms: number | undefined; late?: number };

/** One end of a migration link: msgpack messages in order, awaited one at a time. */
class Link<In, Out> {
  private readonly queue: In[] = [];
  private waiter: { resolve: (m: In) => void; reject: (e: Error) => void } | undefined;
  private closedWith: Error | undefined;
  bytesSent = 0;
  bytesReceived = 0;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      this.bytesReceived += data.length;
      let m: In;
      try {
        if (!isBinary) throw new Error('text message');
        const frame = roundFrameHeader(data);
        // A round frame stays as it came: the destination hands the whole buffer to its worker.
        if (frame) m = { t: 'round', n: frame.n, last: frame.last, part: data } as In;
        else m = linkUnpackr.unpack(data) as In;
        if (typeof m !== 'object' || m === null || typeof (m as { t?: unknown }).t !== 'string') {
          throw new Error('not a message');
        }
      } catch (err) {
        this.fail(new RoamError('MALFORMED_FRAME', `bad migration message: ${(err as Error).message}`));
        ws.terminate();
        return;
      }
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w.resolve(m);
      } else {
        this.queue.push(m);
      }
    });
    ws.on('close', () => this.fail(new RoamError('UNAVAILABLE', 'migration link closed')));
    ws.on('error', (err) => this.fail(new RoamError('UNAVAILABLE', `migration link: ${err.message}`)));
  }

  private fail(err: Error): void {
    this.closedWith ??= err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.closedWith);
  }

  get open(): boolean {
    return this.closedWith === undefined;
  }

  send(m: Out): void {
    this.sendRaw(pack(m));
  }

  /** Writes bytes that already are a link message (a round frame from the worker). */
  sendRaw(bytes: Uint8Array): void {
    this.bytesSent += bytes.length;
    this.ws.send(bytes);
  }

  /** The next message, or a rejection when the link closes or `timeoutMs` passes. */
  next(timeoutMs: number): Promise<In> {
    const m = this.queue.shift();
    if (m !== undefined) return Promise.resolve(m);
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise<In>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new RoamError('UNAVAILABLE', `migration peer silent for ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  close(): void {
    this.ws.close();
  }
}

const locValue = (r: LocationRecord): Uint8Array => encodeJson(r);
/** Wall-clock ms with sub-ms precision, comparable across processes on one machine (step logs). */
const wall = (): number => performance.timeOrigin + performance.now();

/** Reads the location rows of `insts`: revision 0 and epoch 0 for an instance never moved. */
export async function readLocations(
  store: Store,
  insts: string[],
): Promise<Array<{ inst: string; revision: number; record: LocationRecord | undefined }>> {
  return Promise.all(
    insts.map(async (inst) => {
      const e = await store.get(ClusterKeys.location(inst));
      return { inst, revision: e?.revision ?? 0, record: e ? decodeJson<LocationRecord>(e.value) : undefined };
    }),
  );
}

/**
 * Link messages decode with values copied into their own buffers. Views into the whole message
 * would be structured-cloned whole, once per value, when staged into the service worker (a 1 MiB
 * part × 1,000 values = 1 GiB copied), and would pin the message in memory besides.
 */
const linkUnpackr = new Unpackr({ copyBuffers: true, mapsAsObjects: true });

/** `b` with a buffer of its own, exactly its size, that can be transferred to a worker. */
function ownedBytes(b: unknown): Uint8Array {
  if (!(b instanceof Uint8Array)) throw new RoamError('MALFORMED_FRAME', 'migration payload is not bytes');
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b : new Uint8Array(b);
}

/** The destination's step timings from its verdict, as far as they are numbers. */
function destinationSteps(v: unknown): Partial<FreezeSteps> {
  const out: Partial<FreezeSteps> = {};
  if (typeof v !== 'object' || v === null) return out;
  for (const k of ['installMs', 'casMs', 'servingMs', 'destinationMs'] as const) {
    const x = (v as Record<string, unknown>)[k];
    if (typeof x === 'number' && Number.isFinite(x) && x >= 0) out[k] = x;
  }
  return out;
}

const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');

/** What is wrong with an offer's shape, if anything (members are trusted, but bugs happen). */
function offerProblem(o: Extract<ToDestination, { t: 'offer' }>): string | undefined {
  const svc = o.service as Partial<typeof o.service> | undefined;
  if (!svc || typeof svc.name !== 'string' || typeof svc.version !== 'string' || !isStrings(svc.compat)) {
    return 'service must be { name, version, compat[] }';
  }
  if (typeof o.requires !== 'object' || o.requires === null) return 'requires must be an object';
  if (typeof o.fromUrl !== 'string' || o.fromUrl.length === 0 || o.fromUrl.length > 2048) {
    return 'fromUrl must be the source client URL';
  }
  if (!Array.isArray(o.instances) || o.instances.length === 0 || o.instances.length > 10_000) {
    return 'instances must be a non-empty array of at most 10,000';
  }
  if (o.sids !== undefined && (!isStrings(o.sids) || o.sids.length > 1_000_000 || o.sids.some((x) => x.length > 64))) {
    return 'sids must be an array of session ids';
  }
  for (const i of o.instances as unknown[]) {
    const x = i as { inst?: unknown; key?: unknown } | null;
    if (!x || typeof x.inst !== 'string' || !(x.key === null || typeof x.key === 'string')) {
      return 'each instance must be { inst, key }';
    }
  }
  return undefined;
}

export class Migrations {
  private readonly threshold: number;
  private readonly maxRounds: number;
  private readonly stepTimeoutMs: number;
  private readonly movedTtlMs: number;
  private readonly gapReportMs: number;
  /** Instances on their way out; fencing and suspension leave them alone. */
  readonly outgoing = new Set<string>();
  /** Sessions arriving: a RESUME that races the commit waits for it. */
  readonly incoming = new Map<string, Promise<ServerSession | undefined>>();
  /** Moved sessions kept as stubs to redirect late clients: sid → expiry timer. */
  private readonly stubs = new Map<string, { session: ServerSession; url: string; timer: NodeJS.Timeout }>();
  private readonly links = new Set<WebSocket>();
  private readonly fault: MigrationFault | undefined;
  private readonly stubWaiters: Array<() => void> = [];

  constructor(
    private readonly host: MigrationHost,
    opts: MigrationOptions = {},
  ) {
    this.threshold = opts.dirtyThresholdBytes ?? 64 * 1024;
    this.maxRounds = opts.maxRounds ?? 30;
    this.stepTimeoutMs = opts.stepTimeoutMs ?? 15_000;
    this.movedTtlMs = opts.movedTtlMs ?? 60_000;
    this.gapReportMs = opts.gapReportMs ?? 10_000;
    this.fault = opts.fault;
  }

  private crashAt(point: MigrationFault): void {
    if (this.fault !== point) return;
    this.host.log.warn({ fault: point }, 'fault injection: killing this process');
    process.kill(process.pid, 'SIGKILL');
  }

  /** The stub kept for moved session `sid` and where it sends its client; undefined if none. */
  stub(sid: string): { session: ServerSession; url: string } | undefined {
    return this.stubs.get(sid);
  }

  get stubCount(): number {
    return this.stubs.size;
  }

  /**
   * Moves `insts` (all of one service) to `dest`. Resolves with the record once the destination
   * committed and every attached client was sent its MOVE; rejects (with the record in
   * `cause`-free form on the error's `record`) when it was refused or aborted — the instances
   * then still run here.
   */
  async migrateOut(
    insts: string[],
    dest: HostRecord,
    reason: MigrationReason,
    /**
     * `precopy: false`: stop-and-copy only (the benchmark's baseline). `hint: false`: no MOVE
     * hints, so clients open their new transport only at the MOVE (the benchmark's comparison).
     */
    opts: { precopy?: boolean; hint?: boolean } = {},
  ): Promise<MigrationRecord> {
    const h = this.host;
    const first = h.instance(insts[0] ?? '');
    if (!first) throw new RoamError('NOT_FOUND', `no instance ${insts[0]} on this host`);
    for (const inst of insts) {
      const ie = h.instance(inst);
      if (!ie) throw new RoamError('NOT_FOUND', `no instance ${inst} on this host`);
      if (ie.service !== first.service) throw new RoamError('INVALID_ARGUMENT', 'one migration moves one service');
      if (this.outgoing.has(inst)) throw new RoamError('INVALID_STATE', `instance ${inst} is already moving`);
    }
    if (dest.id === h.id) throw new RoamError('INVALID_ARGUMENT', 'an instance cannot move to the host it is on');
    for (const inst of insts) this.outgoing.add(inst);
    const { worker, meta } = h.worker(first.service);
    const rec: MigrationRecord = {
      id: randomBytes(8).toString('hex'),
      instances: insts,
      service: first.service,
      from: h.id,
      to: dest.id,
      reason,
      outcome: 'aborted',
      startedAt: Date.now(),
      endedAt: 0,
      sessions: 0,
      stateBytes: 0,
      bytesSent: 0,
      rounds: [],
      finalDirtyBytes: 0,
      throttleSteps: 0,
      phases: { negotiateMs: 0, precopyMs: 0, freezeMs: 0, commitMs: 0 },
    };
    const t0 = performance.now();
    h.log.info(
      { migration: rec.id, instances: insts, to: dest.id, reason, precopy: opts.precopy !== false },
      'migration started',
    );
    let link: Link<ToSource, ToDestination> | undefined;
    let frozenAt: number | undefined;
    let finalSent = false;
    /** The destination answered `failed`: whatever it wrote to the Store, it serves nothing. */
    let destFailed = false;
    let throttle = 0;
    const progress = (phase: string, round?: number, etaMs?: number) =>
      h.emit({ type: 'migration.progress', id: rec.id, instances: insts, phase, round, etaMs });
    try {
      const locs = await readLocations(h.store, insts);
      for (const l of locs) {
        if (l.record && l.record.host !== h.id) {
          throw new RoamError('FENCED', `instance ${l.inst} belongs to ${l.record.host} (epoch ${l.record.epoch})`);
        }
      }
      progress('negotiate');
      const ws = await openPeerLink(dest.peerUrl, '/peer/migrate', h.secret, (m, p) => signRequest(h.secret, m, p));
      this.links.add(ws);
      ws.once('close', () => this.links.delete(ws));
      link = new Link<ToSource, ToDestination>(ws);
      const sids = insts.flatMap((inst) => this.membersOf(inst));
      link.send({
        t: 'offer',
        mid: rec.id,
        from: h.id,
        fromUrl: h.clientUrl() ?? '',
        service: { name: meta.name, version: meta.version, compat: meta.compat },
        requires: meta.requires,
        instances: insts.map((inst) => ({ inst, key: h.instance(inst)?.key ?? null })),
        sessions: sids.length,
        sids,
        reason,
      });
      const answer = await link.next(this.stepTimeoutMs);
      if (answer.t === 'refuse') {
        rec.outcome = 'refused';
        throw new RoamError('MIGRATION_REFUSED', `${dest.id} refused: ${answer.message}`, {
          cause: new RoamError(answer.code, answer.message),
        });
      }
      if (answer.t !== 'accept') throw new RoamError('INTERNAL', `unexpected ${answer.t} instead of accept`);
      const tNeg = performance.now();
      rec.phases.negotiateMs = tNeg - t0;
      if (opts.precopy !== false && opts.hint !== false) {
        // While the state is pre-copied, attached clients open their transport to the destination
        // (a MOVE hint), so the MOVE at the freeze finds it ready: no connection setup in the gap.
        for (const sid of sids) {
          const s = h.session(sid);
          if (s?.state === 'attached') void s.hintMove(dest.clientUrl);
        }
      }

      // Pre-copy.
      let marks: Array<PrecopyMark | undefined> = insts.map(() => undefined);
      let previous = Number.POSITIVE_INFINITY;
      // Without pre-copy (the baseline the benchmark compares against), everything goes in the
      // stop-and-copy.
      const maxRounds = opts.precopy === false ? 0 : this.maxRounds;
      for (let n = 0; n < maxRounds; n++) {
        const tr = performance.now();
        h.log.debug({ migration: rec.id, step: `round-${n}`, at: wall() }, 'migration step');
        // Parts go out as the worker packs them (round frames, written as they are), so this
        // thread only passes bytes along while a big round leaves.
        const round = await worker.request<PrecopyRound>(
          {
            op: 'precopy',
            n,
            insts,
            since: marks,
            partBytes: ROUND_PART_BYTES,
            // Small enough: leave it for the stop-and-copy, which recomputes it from the same marks.
            ...(n > 0 ? { skipBelow: this.threshold } : {}),
          },
          undefined,
          (part) => link?.sendRaw(part),
        );
        const { bytes, keys } = round;
        if (n === 0) rec.stateBytes = bytes;
        if (round.skipped) break;
        h.log.debug({ migration: rec.id, step: `round-${n}-sent`, at: wall() }, 'migration step');
        const ack = await link.next(this.stepTimeoutMs);
        if (ack.t !== 'ack' || ack.n !== n) throw new RoamError('INTERNAL', `expected ack of round ${n}`);
        marks = round.marks;
        const ms = performance.now() - tr;
        rec.rounds.push({ bytes, keys, ms });
        // The dirty set is not shrinking: the instance dirties state faster than the link carries
        // it. Slow its hooks down a step (QEMU's auto-converge) until it converges.
        if (n > 0 && bytes >= previous && throttle < THROTTLE_STEPS.length - 1) {
          throttle++;
          rec.throttleSteps = throttle;
          for (const inst of insts) worker.notify({ op: 'throttle', inst, ms: THROTTLE_STEPS[throttle] as number });
        }
        // Time left: the next round is about as big as this one, at this round's rate.
        progress('precopy', n, Math.round(ms * Math.min(1, bytes / Math.max(1, rec.stateBytes))));
        previous = bytes;
      }
      const tPre = performance.now();
      rec.phases.precopyMs = tPre - tNeg;

      // Stop-and-copy.
      progress('freeze');
      frozenAt = Date.now();
      h.log.debug({ migration: rec.id, step: 'freeze', at: wall() }, 'migration step');
      const members: ServerSession[] = [];
      for (const inst of insts) {
        for (const sid of this.membersOf(inst)) {
          const s = h.session(sid);
          if (!s) continue;
          // Inbound DATA is held from here on, so the worker's frozen copy misses none of it.
          s.engine.freeze();
          members.push(s);
        }
      }
      // The worker freezes while this thread tells the clients.
      const tFreeze = performance.now();
      const frozen = worker.request<FrozenBatch>({ op: 'freeze', insts, since: marks });
      frozen.catch(() => {});
      // Clients first: each attached client gets its MOVE now, before the final copy and the
      // commit, so that its new transport and handshake overlap them. The destination holds the
      // client's RESUME until it has committed; if the migration aborts, it answers
      // MIGRATION_ABORTED and the client resumes here again (the MOVE is tentative until then).
      const attached = new Set<string>();
      for (const s of members) {
        // Reserved even for a detached session: its stub sends this MOVE if the client returns.
        s.prepareMove(dest.clientUrl);
        if (s.state === 'attached') {
          attached.add(s.id);
          void s.move(dest.clientUrl);
        }
      }
      h.log.debug({ migration: rec.id, step: 'moves-queued', at: wall() }, 'migration step');
      const batch = await frozen;
      const tFrozen = performance.now();
      h.log.debug({ migration: rec.id, step: 'worker-frozen', at: wall() }, 'migration step');
      rec.finalDirtyBytes = batch.bytes;
      const transfers: SessionTransfer[] = [];
      for (const f of batch.instances) {
        for (const sid of f.sids) {
          const s = h.session(sid);
          if (!s) continue;
          // Exported after the worker answered: every `send` it made is already in the engine.
          transfers.push({
            sid,
            inst: f.inst,
            service: first.service,
            key: f.key ?? null,
            sessionId: s.sessionId,
            sessionKey: s.keyForResume.raw,
            transport: s.engine.exportTransport(),
            attached: attached.has(sid),
            // The destination's MOVEs continue after the one this host prepared.
            moveId: s.moveId,
          });
        }
      }
      rec.sessions = transfers.length;
      // Without pre-copy the stop-and-copy carried the whole state.
      if (rec.rounds.length === 0) rec.stateBytes = rec.finalDirtyBytes;
      const claims = locs.map((l) => ({ inst: l.inst, revision: l.revision, epoch: l.record?.epoch ?? 0 }));
      // Taken before the write: the destination may answer before this thread runs again.
      const tFinal = performance.now();
      link.send({ t: 'final', frozenAt, frozen: batch.frozen, sessions: transfers, claims });
      finalSent = true;
      h.log.debug({ migration: rec.id, step: 'final-sent', at: wall() }, 'migration step');
      const verdict = await link.next(this.stepTimeoutMs);
      if (verdict.t === 'failed') {
        destFailed = true;
        throw new RoamError(verdict.code, verdict.message);
      }
      if (verdict.t !== 'committed') throw new RoamError('INTERNAL', `unexpected ${verdict.t} instead of commit`);
      const tCommit = performance.now();
      h.log.debug({ migration: rec.id, step: 'committed', at: wall() }, 'migration step');
      rec.phases.freezeMs = tCommit - tPre;
      rec.phases.commitMs = tCommit - tFinal;
      const steps: FreezeSteps = {
        workerMs: tFrozen - tFreeze,
        sendMs: tFinal - tFrozen,
        waitMs: tCommit - tFinal,
        ...destinationSteps(verdict.steps),
      };
      if (steps.servingMs !== undefined && steps.destinationMs !== undefined) {
        // The two hosts' clocks are not compared: the link's one-way time is taken as half of the
        // round trip the destination did not spend.
        const transit = Math.max(0, steps.waitMs - steps.destinationMs) / 2;
        steps.downtimeMs = tFinal - tPre + transit + steps.servingMs;
      }
      rec.phases.freezeSteps = steps;
      rec.epoch = verdict.epochs[0];
      this.crashAt('source-after-commit');
      await this.afterCommit(insts, worker, dest, transfers, link, rec);
      return rec;
    } catch (err) {
      let e = err instanceof RoamError ? err : new RoamError('INTERNAL', (err as Error).message, { cause: err });
      if (finalSent) {
        // We may not know the verdict, or the destination failed after its commit: settle it in the
        // Store.
        const owner = await this.claimBack(insts, destFailed ? dest.id : undefined).catch((err: unknown) => {
          // With the verdict lost, the destination may be serving: staying frozen is the safe side
          // of the one-owner rule. After `failed` it serves nothing, so this host goes on serving.
          if (!destFailed) throw err;
          h.log.error({ migration: rec.id, err: (err as Error).message }, 'could not claim the instance back');
          return undefined;
        });
        if (owner === dest.id) {
          rec.phases.freezeMs = performance.now() - t0 - rec.phases.negotiateMs - rec.phases.precopyMs;
          await this.afterCommit(insts, worker, dest, [], undefined, rec);
          h.log.warn({ migration: rec.id, err: e.message }, 'lost the destination after it committed');
          return rec;
        }
      }
      if (frozenAt !== undefined) {
        await worker.request({ op: 'thaw', insts }).catch(() => {});
        for (const inst of insts) {
          for (const sid of this.membersOf(inst)) {
            const s = h.session(sid);
            if (!s) continue;
            // A destination that failed after its commit sent the clients that had resumed there
            // back here with the next MOVE id: this host's next MOVE must come after that one.
            if (destFailed) s.moveId += 1;
            s.engine.thaw();
          }
        }
      } else if (throttle > 0) {
        for (const inst of insts) worker.notify({ op: 'throttle', inst, ms: 0 });
      }
      link?.send({ t: 'abort', reason: e.message });
      link?.close();
      if (rec.outcome !== 'refused') {
        rec.outcome = 'aborted';
        if (e.code !== 'FENCED') e = new RoamError('MIGRATION_ABORTED', e.message, { cause: e });
      }
      rec.code = e.code;
      rec.message = e.message;
      rec.endedAt = Date.now();
      rec.bytesSent = link?.bytesSent ?? 0;
      h.emit({ type: 'migration', migration: rec });
      for (const inst of insts) this.outgoing.delete(inst);
      throw Object.assign(e, { record: rec });
    }
  }

  private membersOf(inst: string): string[] {
    return this.host.membersOf(inst);
  }

  /**
   * The verdict was lost, or the destination failed after committing: make it. Claims every
   * instance back at the next epoch, over the revisions read now; losing that CAS means the
   * destination committed first. `failed`: the destination said it serves nothing, so its own
   * commit is taken over too (anyone else's is not).
   */
  private async claimBack(insts: string[], failed?: string): Promise<string | undefined> {
    const h = this.host;
    const locs = await readLocations(h.store, insts);
    const mine = locs.every((l) => !l.record || l.record.host === h.id || l.record.host === failed);
    if (!mine) return locs.find((l) => l.record && l.record.host !== h.id && l.record.host !== failed)?.record?.host;
    const svc = h.instance(insts[0] ?? '')?.service ?? '';
    const epochs = locs.map((l) => (l.record?.epoch ?? 0) + 1);
    try {
      await h.store.compareAndSetMany(
        locs.map((l, i) => ({
          key: ClusterKeys.location(l.inst),
          expectedRevision: l.revision,
          value: locValue({ instance: l.inst, service: svc, host: h.id, epoch: epochs[i] as number }),
        })),
      );
      // Before the instances stop being outgoing: the location watch, which may still bring the
      // failed destination's epoch, must take it as the past, not as a new owner to yield to.
      for (const [i, l] of locs.entries()) h.adoptEpoch(l.inst, epochs[i] as number);
      return h.id;
    } catch (err) {
      if ((err as RoamError).code !== 'STORE_CONFLICT') throw err;
      const again = await readLocations(h.store, insts);
      return again.find((l) => l.record && l.record.host !== h.id)?.record?.host ?? h.id;
    }
  }

  private async afterCommit(
    insts: string[],
    worker: ServiceWorker,
    dest: HostRecord,
    transfers: SessionTransfer[],
    link: Link<ToSource, ToDestination> | undefined,
    rec: MigrationRecord,
  ): Promise<void> {
    const h = this.host;
    const url = dest.clientUrl;
    const moved: ServerSession[] = [];
    for (const inst of insts) {
      for (const sid of this.membersOf(inst)) {
        const s = h.session(sid);
        if (s) moved.push(s);
      }
      h.detachMigrated(inst);
    }
    // Clients first: every millisecond before their MOVE is part of the gap they see.
    for (const s of moved) this.keepStub(s, url);
    await worker.request({ op: 'release', insts }).catch(() => {});
    for (const inst of insts) this.outgoing.delete(inst);
    h.log.debug({ migration: rec.id, step: 'moves-sent', at: wall() }, 'migration step');
    rec.outcome = 'committed';
    rec.endedAt = Date.now();
    rec.bytesSent = link?.bytesSent ?? 0;
    h.emit({ type: 'migration', migration: rec });
    if (!link) return;
    // The destination reports which sessions resumed there (stubs can go) and the clients' gap;
    // clients late for the gap report still resume, and their stubs go then.
    const wanted = new Set(transfers.filter((t) => t.attached).map((t) => t.sid));
    const hadClients = wanted.size > 0;
    void (async () => {
      try {
        let gapHeard = false;
        while (!gapHeard || wanted.size > 0) {
          const m = await link.next(this.movedTtlMs);
          if (m.t === 'resumed') {
            for (const sid of m.sids) {
              wanted.delete(sid);
              this.dropStub(sid);
            }
          } else if (m.t === 'gap') {
            gapHeard = true;
            if (m.ms !== undefined && hadClients) {
              rec.phases.clientGapMs = m.ms;
              if (m.late) rec.phases.clientsLate = m.late;
              h.emit({ type: 'migration', migration: rec });
            }
          }
        }
      } catch {
        // Link gone: stubs expire on their own.
      } finally {
        link.close();
      }
    })();
  }

  /** Keeps a moved session answering its client with MOVE until the client resumed elsewhere. */
  private keepStub(s: ServerSession, url: string): void {
    const sid = s.id;
    const timer = setTimeout(() => this.dropStub(sid), this.movedTtlMs);
    timer.unref();
    this.stubs.set(sid, { session: s, url, timer });
    s.engine.freeze();
    s.on('event', (ev) => {
      if (ev.type === 'resumed' && this.stubs.has(sid)) void s.move(url);
    });
    if (s.state === 'attached') void s.move(url);
  }

  private dropStub(sid: string): void {
    const stub = this.stubs.get(sid);
    if (!stub) return;
    clearTimeout(stub.timer);
    this.stubs.delete(sid);
    this.host.forgetStub(sid, stub.session);
    if (this.stubs.size === 0) for (const w of this.stubWaiters.splice(0)) w();
  }

  /**
   * Resolves when every moved client has resumed at its destination (no stub left), or after
   * `timeoutMs`: a draining host waits for this so no client is left pointing at a dead process.
   */
  whenStubsGone(timeoutMs: number): Promise<boolean> {
    if (this.stubs.size === 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.stubWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** Forgets every stub (the host is closing: stubs must not send CLOSE to clients that moved). */
  dropAllStubs(): void {
    for (const sid of [...this.stubs.keys()]) this.dropStub(sid);
  }

  // -------------------------------------------------------------------------------------------
  // Destination

  /** Serves one incoming migration link. */
  accept(ws: WebSocket): void {
    this.links.add(ws);
    ws.once('close', () => this.links.delete(ws));
    const link = new Link<ToDestination, ToSource>(ws);
    this.serveIncoming(link).catch((err: unknown) => {
      this.host.log.warn({ err: (err as Error).message }, 'incoming migration failed');
      link.close();
    });
  }

  private async serveIncoming(link: Link<ToDestination, ToSource>): Promise<void> {
    const h = this.host;
    const offer = await link.next(this.stepTimeoutMs);
    if (offer.t !== 'offer') throw new RoamError('UNEXPECTED_FRAME', `expected offer, got ${offer.t}`);
    const report = (outcome: MigrationOutcome, err?: { code?: string; message: string }): void => {
      const ev: IncomingMigration = {
        id: String(offer.mid),
        from: String(offer.from),
        service: String(offer.service?.name),
        instances: Array.isArray(offer.instances) ? offer.instances.length : 0,
        sessions: Number(offer.sessions) || 0,
        ...(typeof offer.reason === 'string' ? { reason: offer.reason } : {}),
        outcome,
        ...(err ? { code: err.code ?? 'INTERNAL', message: err.message } : {}),
        bytesReceived: link.bytesReceived,
      };
      const { bytesReceived, id, ...fields } = ev;
      h.log[outcome === 'committed' ? 'info' : 'warn'](
        { migration: id, ...fields, bytes: bytesReceived },
        `incoming migration ${outcome}`,
      );
      h.incoming?.(ev);
    };
    const malformed = offerProblem(offer);
    if (malformed) {
      link.send({ t: 'refuse', code: 'INVALID_ARGUMENT', message: `malformed offer: ${malformed}` });
      link.close();
      report('refused', { code: 'INVALID_ARGUMENT', message: `malformed offer: ${malformed}` });
      return;
    }
    const refusal = this.checkOffer(offer);
    if (refusal) {
      link.send({ t: 'refuse', code: refusal.code, message: refusal.message });
      link.close();
      report('refused', refusal);
      return;
    }
    const { worker } = h.worker(offer.service.name);
    const insts = offer.instances.map((i) => i.inst);
    const arrival = this.expect(offer.sids ?? []);
    link.send({ t: 'accept' });
    let staged = false;
    const pending: Array<Promise<unknown>> = [];
    try {
      for (;;) {
        const m = await link.next(this.stepTimeoutMs);
        if (m.t === 'abort') {
          throw new RoamError('MIGRATION_ABORTED', m.reason);
        } else if (m.t === 'round') {
          this.crashAt('destination-on-round');
          staged = true;
          // Pipelined: the worker takes parts in order anyway; the round is acknowledged once all
          // of its parts are staged.
          const part = ownedBytes(m.part);
          const done = worker.request({ op: 'stage', part }, [part.buffer as ArrayBuffer]);
          done.catch(() => {});
          pending.push(done);
          if (m.last) {
            await Promise.all(pending.splice(0));
            link.send({ t: 'ack', n: m.n });
          }
        } else if (m.t === 'final') {
          this.crashAt('destination-on-final');
          staged = true;
          await Promise.all(pending.splice(0));
          await this.install(link, offer, worker, m, arrival);
          report('committed');
          return;
        } else {
          throw new RoamError('UNEXPECTED_FRAME', `unexpected ${m.t} in a migration`);
        }
      }
    } catch (err) {
      arrival.settle(undefined);
      await Promise.allSettled(pending);
      if (staged) await worker.request({ op: 'unstage', insts }).catch(() => {});
      report('aborted', err as RoamError);
      throw err;
    }
  }

  /**
   * Sessions an incoming migration brings: a RESUME for one of them (its client got a tentative
   * MOVE as the source froze) waits for the verdict. Committed: the session, or undefined if it
   * did not come after all. Aborted: MIGRATION_ABORTED, which sends the client back.
   */
  private expect(sids: readonly string[]): Arrival {
    let settle!: (sessions: Map<string, ServerSession> | undefined) => void;
    const verdict = new Promise<Map<string, ServerSession> | undefined>((r) => {
      settle = r;
    });
    const waits = new Map<string, Promise<ServerSession | undefined>>();
    const add = (sid: string) => {
      if (waits.has(sid)) return;
      const p = verdict.then((sessions) => {
        if (!sessions) {
          throw new RoamError(
            'MIGRATION_ABORTED',
            'the migration bringing this session here was aborted; resume where you came from',
          );
        }
        return sessions.get(sid);
      });
      // Nobody may be waiting: an abort must not become an unhandled rejection.
      p.catch(() => {});
      waits.set(sid, p);
      this.incoming.set(sid, p);
    };
    for (const sid of sids) add(sid);
    let settled = false;
    return {
      add,
      settle: (sessions) => {
        if (settled) return;
        settled = true;
        settle(sessions);
        const forget = () => {
          for (const [sid, p] of waits) if (this.incoming.get(sid) === p) this.incoming.delete(sid);
        };
        // After an abort, a late RESUME (a slow client, a gateway's re-splice) still hears
        // MIGRATION_ABORTED, which sends it back, rather than UNKNOWN_SESSION, which ends it.
        if (sessions) forget();
        else setTimeout(forget, ABORTED_MEMORY_MS).unref();
      },
    };
  }

  private checkOffer(offer: Extract<ToDestination, { t: 'offer' }>): { code: CodeName; message: string } | undefined {
    const h = this.host;
    const why = h.refusal();
    if (why) return { code: 'MIGRATION_REFUSED', message: why };
    try {
      h.checkRequirements(offer.requires, offer.service.name);
    } catch (err) {
      return { code: (err as RoamError).code ?? 'INCOMPATIBLE', message: (err as Error).message };
    }
    if (!h.hasService(offer.service.name)) {
      return { code: 'UNKNOWN_SERVICE', message: `no service ${offer.service.name} on ${h.id}` };
    }
    const { meta } = h.worker(offer.service.name);
    if (!compatMatches(offer.service.compat, meta.compat)) {
      return {
        code: 'INCOMPATIBLE',
        message: `instance needs compat [${offer.service.compat.join(', ')}], ${meta.name} ${meta.version} here offers [${meta.compat.join(', ')}]`,
      };
    }
    for (const i of offer.instances) {
      if (h.instance(i.inst)) return { code: 'INVALID_STATE', message: `instance ${i.inst} already runs on ${h.id}` };
    }
    return undefined;
  }

  private async install(
    link: Link<ToDestination, ToSource>,
    offer: Extract<ToDestination, { t: 'offer' }>,
    worker: ServiceWorker,
    m: Extract<ToDestination, { t: 'final' }>,
    arrival: Arrival,
  ): Promise<void> {
    const h = this.host;
    const mid = String(offer.mid);
    const service = offer.service.name;
    const insts = offer.instances;
    const tReceived = performance.now();
    h.log.debug({ migration: mid, step: 'final-received', at: wall() }, 'migration step');
    // The worker installs while this thread commits (the Store write is an fsync) and rebuilds the
    // sessions: the install runs no user code and fails only on a corrupt frame or a dead worker, so
    // it need not finish before the commit. If it fails after the commit, the source claims the
    // instance back over this host's epoch (it knows from `failed` that nothing runs here).
    // The fault: a frame the worker cannot decode (0xc1 is never used by msgpack).
    const frozen = this.fault === 'destination-install-fails' ? Uint8Array.of(0xc1) : ownedBytes(m.frozen);
    const installed = worker.request({ op: 'install', frozen }, [frozen.buffer as ArrayBuffer]);
    let installFailed = false;
    installed.catch(() => {
      installFailed = true;
    });
    const sessions = new Map<string, ServerSession[]>();
    const bySid = new Map<string, ServerSession>();
    let serving = false;
    let watch: ReturnType<typeof this.watchResumes> | undefined;
    try {
      const epochs = new Map(m.claims.map((c) => [c.inst, c.epoch + 1]));
      await h.store.compareAndSetMany(
        m.claims.map((c) => ({
          key: ClusterKeys.location(c.inst),
          expectedRevision: c.revision,
          value: locValue({ instance: c.inst, service, host: h.id, epoch: epochs.get(c.inst) as number }),
        })),
      );
      const tCas = performance.now();
      h.log.debug({ migration: mid, step: 'cas-done', at: wall() }, 'migration step');
      for (const t of m.sessions) {
        // The session left this host earlier and comes back: its old stub must not outlive it (a
        // late "resumed" report would otherwise drop the new session with the stub's id).
        this.dropStub(t.sid);
        const engine = h.restoreEngine(t.transport);
        const key = await nodeSessionCrypto.importSessionKey(t.sessionKey);
        const s = new ServerSession(t.sessionId, t.service, t.key ?? undefined, engine, key);
        s.moveId = t.moveId;
        // Serving starts before the worker confirms its install: what the client sends is held
        // (neither delivered nor acknowledged) until it has, so a failed install loses none of it.
        s.engine.freeze();
        const list = sessions.get(t.inst) ?? [];
        list.push(s);
        sessions.set(t.inst, list);
        bySid.set(t.sid, s);
        arrival.add(t.sid);
      }
      h.log.debug({ migration: mid, step: 'sessions-built', at: wall() }, 'migration step');
      for (const i of insts) {
        h.attachMigrated(i.inst, service, i.key ?? undefined, sessions.get(i.inst) ?? [], epochs.get(i.inst) ?? 0);
      }
      // Neither awaited: the worker handles messages in order, so the install precedes activation
      // and activation precedes anything a resumed client sends. The clients resume now (their
      // RESUMEs were held for this): the worker's answer costs a thread hop on a busy core, which
      // their gap need not include. The instance's own output can only follow the install.
      worker.request({ op: 'activate', insts: insts.map((i) => i.inst) }).catch((err: unknown) => {
        // After a failed install it fails too, and the install's failure is what is reported.
        if (!installFailed) h.log.error({ migration: mid, err: (err as Error).message }, 'activation failed');
      });
      serving = true;
      watch = this.watchResumes(m, sessions);
      arrival.settle(bySid);
      const tServing = performance.now();
      await installed;
      const tInstalled = performance.now();
      h.log.debug({ migration: mid, step: 'installed', at: wall() }, 'migration step');
      for (const s of bySid.values()) s.engine.thaw();
      link.send({
        t: 'committed',
        epochs: [...epochs.values()],
        steps: {
          installMs: tInstalled - tReceived,
          casMs: tCas - tReceived,
          servingMs: tServing - tReceived,
          destinationMs: performance.now() - tReceived,
        },
      });
      h.log.debug({ migration: mid, step: 'committed-sent', at: wall() }, 'migration step');
    } catch (err) {
      // serveIncoming settles the arrival and unstages; the install must be over before that.
      await installed.catch(() => {});
      watch?.cancel();
      if (serving) {
        // The clients may have resumed here already: send each back to the source, which takes
        // the instance back once it hears `failed`. Nothing ran here; what they sent was held.
        for (const i of insts) h.detachMigrated(i.inst);
        for (const s of bySid.values()) this.keepStub(s, offer.fromUrl);
        await worker.request({ op: 'release', insts: insts.map((i) => i.inst) }).catch(() => {});
      }
      const e = err as RoamError;
      if (link.open) link.send({ t: 'failed', code: e.code ?? 'INTERNAL', message: e.message });
      throw err;
    }
    watch.start(link);
  }

  /**
   * Tells the source which clients arrived (so it drops their stubs) and the longest gap. Watches
   * from before the sessions serve (a client may resume before the verdict is sent), and writes
   * to the link only from `start`, after the verdict: the source reads the verdict first.
   *
   * The gap is reported once every client resumed or `gapReportMs` after the freeze, whichever
   * comes first; clients still away then count with the time they have waited so far (`late`).
   * Their resumes are still reported afterwards, until `movedTtlMs`: a source waiting for its
   * stubs to go (a shutdown) must not wait for its deadline because a client was slow.
   */
  private watchResumes(
    m: Extract<ToDestination, { t: 'final' }>,
    sessions: Map<string, ServerSession[]>,
  ): { start(link: Link<ToDestination, ToSource>): void; cancel(): void } {
    const waiting = new Set(m.sessions.filter((t) => t.attached).map((t) => t.sid));
    let link: Link<ToDestination, ToSource> | undefined;
    let gap: number | undefined;
    let late = 0;
    let gapDue = false;
    let gapSent = false;
    let batch: string[] = [];
    let flushTimer: NodeJS.Timeout | undefined;
    const listeners: Array<[ServerSession, (ev: { type: string }) => void]> = [];
    const flush = () => {
      if (flushTimer) clearTimeout(flushTimer);
      flushTimer = undefined;
      if (!link) return;
      if (batch.length > 0 && link.open) link.send({ t: 'resumed', sids: batch, gapMs: gap ?? 0 });
      batch = [];
    };
    const report = () => {
      flush();
      if (gapDue && !gapSent && link?.open) {
        gapSent = true;
        link.send({ t: 'gap', ms: gap, ...(late > 0 ? { late } : {}) });
      }
    };
    const gapNow = () => {
      if (gapDue) return;
      gapDue = true;
      clearTimeout(gapTimer);
      late = waiting.size;
      // A client still away has waited at least this long.
      if (late > 0) gap = Math.max(gap ?? 0, Date.now() - m.frozenAt);
    };
    // Over, whichever way: no more timers, and no listener left on the sessions.
    const stop = () => {
      clearTimeout(gapTimer);
      clearTimeout(ttlTimer);
      for (const [s, fn] of listeners) s.off('event', fn);
    };
    // Every client in, or the stubs' TTL over: nothing more to wait for.
    const allIn = () => {
      stop();
      gapNow();
      report();
    };
    const gapTimer = setTimeout(() => {
      gapNow();
      report();
    }, this.gapReportMs);
    gapTimer.unref();
    const ttlTimer = setTimeout(allIn, this.movedTtlMs);
    ttlTimer.unref();
    if (waiting.size === 0) allIn();
    for (const list of sessions.values()) {
      for (const s of list) {
        if (!waiting.has(s.id)) continue;
        const onEvent = (ev: { type: string }) => {
          if (ev.type !== 'resumed' || !waiting.has(s.id)) return;
          s.off('event', onEvent);
          waiting.delete(s.id);
          if (!gapDue) gap = Math.max(gap ?? 0, Date.now() - m.frozenAt);
          batch.push(s.id);
          if (waiting.size === 0) allIn();
          else if (link) flushTimer ??= setTimeout(flush, 20);
        };
        s.on('event', onEvent);
        listeners.push([s, onEvent]);
      }
    }
    return {
      start: (l) => {
        link = l;
        if (gapDue) report();
        else if (batch.length > 0) flushTimer ??= setTimeout(flush, 20);
      },
      cancel: () => {
        stop();
        if (flushTimer) clearTimeout(flushTimer);
        flushTimer = undefined;
        link = undefined;
      },
    };
  }

  close(): void {
    this.dropAllStubs();
    for (const ws of this.links) ws.terminate();
  }
}
