import { Worker } from 'node:worker_threads';
import type { MoveTarget } from '../service/define.js';
import type { FromWorker, ServiceMeta, ToWorker, WorkerInit } from '../service/protocol.js';
import { CODES, type CodeName, RoamError } from '../wire/index.js';
import type { Logger } from './logger.js';

type Request = ToWorker extends infer M ? (M extends { id: number } ? Omit<M, 'id'> : never) : never;
type Notice = Exclude<ToWorker, { id: number }>;

export interface ServiceWorkerEvents {
  send(sid: string, channel: number, data: Uint8Array): void;
  close(sid: string, reason: string): void;
  depends(sid: string, on: string): void;
  moveTo(inst: string, target: MoveTarget): void;
}

/**
 * The main thread's handle on one service worker: request/reply with ids, notices without, and
 * the worker's own messages (send, close, depends, log) routed to `events`.
 */
export class ServiceWorker {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve(v: unknown): void; reject(e: RoamError): void; onPart?: (part: Uint8Array) => void }
  >();
  readonly ready: Promise<ServiceMeta>;
  private exited = false;

  constructor(
    init: WorkerInit,
    private readonly events: ServiceWorkerEvents,
    private readonly log: Logger,
    resourceLimits?: { maxOldGenerationSizeMb?: number },
  ) {
    const entry = new URL(`../service/worker.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url);
    // Under tsx (tests, `npm start`) workers do not inherit the TypeScript loader: register it first.
    const boot = entry.pathname.endsWith('.ts')
      ? new Worker(
          `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); });`,
          { eval: true, workerData: init, ...(resourceLimits ? { resourceLimits } : {}) },
        )
      : new Worker(entry, { workerData: init, ...(resourceLimits ? { resourceLimits } : {}) });
    this.worker = boot;
    this.worker.unref();
    this.ready = new Promise<ServiceMeta>((resolve, reject) => {
      const onReady = (m: FromWorker): void => {
        if (m.t === 'ready') {
          this.worker.off('message', onReady);
          resolve(m.meta);
        }
      };
      this.worker.on('message', onReady);
      this.worker.once('error', (err) =>
        reject(
          new RoamError('SERVICE_ERROR', `service ${init.service} failed to load: ${err.message}`, { cause: err }),
        ),
      );
    });
    this.ready.catch(() => {});
    this.worker.on('message', (m: FromWorker) => this.onMessage(m));
    this.worker.on('error', (err) =>
      this.log.error({ service: init.service, err: err.message }, 'service worker error'),
    );
    this.worker.on('exit', (code) => {
      this.exited = true;
      const e = new RoamError('SERVICE_ERROR', `service worker ${init.service} exited with code ${code}`);
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    });
  }

  /** The heap limits the worker actually runs with. */
  get resourceLimits(): { maxOldGenerationSizeMb?: number } {
    return this.worker.resourceLimits ?? {};
  }

  /**
   * Sends a request; `transfer` lists buffers of `m` handed over rather than copied. `onPart`
   * receives the pieces the worker posts ahead of its reply (a pre-copy round's parts), in order.
   */
  request<T = unknown>(m: Request, transfer?: ArrayBuffer[], onPart?: (part: Uint8Array) => void): Promise<T> {
    if (this.exited) return Promise.reject(new RoamError('SERVICE_ERROR', 'service worker has exited'));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, ...(onPart ? { onPart } : {}) });
      this.worker.postMessage({ ...m, id } as ToWorker, transfer ?? []);
    });
  }

  notify(m: Notice, transfer?: ArrayBuffer[]): void {
    if (!this.exited) this.worker.postMessage(m, transfer ?? []);
  }

  async terminate(): Promise<void> {
    await this.worker.terminate();
  }

  private onMessage(m: FromWorker): void {
    switch (m.t) {
      case 'reply': {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.ok) p.resolve(m.value);
        else p.reject(new RoamError(m.code in CODES ? (m.code as CodeName) : 'SERVICE_ERROR', m.message));
        return;
      }
      case 'part':
        this.pending.get(m.id)?.onPart?.(m.part);
        return;
      case 'send':
        this.events.send(m.sid, m.ch, new Uint8Array(m.data));
        return;
      case 'close':
        this.events.close(m.sid, m.reason);
        return;
      case 'moveTo':
        this.events.moveTo(m.inst, m.target);
        return;
      case 'depends':
        this.events.depends(m.sid, m.on);
        return;
      case 'log':
        this.log[m.level](m.fields, m.msg);
        return;
      default:
    }
  }
}
