import { RoamError } from '../wire/index.js';
import type { StoreEvent } from './store.js';

/** Bounds of one watcher's queue of undelivered events. */
export interface WatchQueueLimits {
  /** Most events queued for a consumer that is not reading; default 10,000. */
  maxEvents?: number;
  /** Most value bytes queued for a consumer that is not reading; default 64 MiB. */
  maxBytes?: number;
}

/** Default of {@link WatchQueueLimits.maxEvents}. */
export const DEFAULT_WATCH_QUEUE_EVENTS = 10_000;
/** Default of {@link WatchQueueLimits.maxBytes}. */
export const DEFAULT_WATCH_QUEUE_BYTES = 64 * 1024 * 1024;

/**
 * The consumer side of one `Store.watch` call: a single-consumer async iterator fed by the store
 * with {@link WatchStream.push}. The queue is bounded: when the consumer falls behind by more than
 * the limits, the queued events are dropped and the iterator throws `STORE_LIMIT` (the consumer
 * re-lists and watches again). Shared by every Store backend.
 */
export class WatchStream implements AsyncIterableIterator<StoreEvent> {
  readonly prefix: string;
  private readonly queue: StoreEvent[] = [];
  private head = 0;
  private queuedBytes = 0;
  private readonly maxEvents: number;
  private readonly maxBytes: number;
  private waiter: { resolve: (r: IteratorResult<StoreEvent>) => void; reject: (e: unknown) => void } | undefined;
  private error: unknown;
  private finished = false;
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort = (): void => this.end();
  private readonly onFinish: (stream: WatchStream) => void;

  /**
   * @param prefix keys this watcher wants (the store filters; kept here for it).
   * @param onFinish called once when the stream ends for any reason (the store unregisters it).
   */
  constructor(
    prefix: string,
    opts: { signal?: AbortSignal | undefined; limits?: WatchQueueLimits | undefined },
    onFinish: (stream: WatchStream) => void,
  ) {
    this.prefix = prefix;
    this.maxEvents = opts.limits?.maxEvents ?? DEFAULT_WATCH_QUEUE_EVENTS;
    this.maxBytes = opts.limits?.maxBytes ?? DEFAULT_WATCH_QUEUE_BYTES;
    this.onFinish = onFinish;
    this.signal = opts.signal;
    if (this.signal?.aborted) {
      this.finished = true;
    } else {
      this.signal?.addEventListener('abort', this.onAbort, { once: true });
    }
  }

  /** Whether the stream has ended (normally or with an error); pushes are then ignored. */
  get ended(): boolean {
    return this.finished || this.error !== undefined;
  }

  /** Whether a key belongs to this watcher. */
  matches(key: string): boolean {
    return key.startsWith(this.prefix);
  }

  /** Delivers one event, or queues it; overflowing the bounds fails the stream with `STORE_LIMIT`. */
  push(event: StoreEvent): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: event, done: false });
      return;
    }
    const size = event.type === 'put' ? event.value.byteLength : 0;
    if (this.queue.length - this.head >= this.maxEvents || this.queuedBytes + size > this.maxBytes) {
      this.fail(
        new RoamError(
          'STORE_LIMIT',
          `watch consumer fell behind (more than ${this.maxEvents} events or ${this.maxBytes} bytes queued); re-list and watch again`,
        ),
      );
      return;
    }
    this.queue.push(event);
    this.queuedBytes += size;
  }

  /** Ends the stream with an error: queued events are dropped, the next `next()` rejects with it. */
  fail(error: unknown): void {
    if (this.ended) return;
    this.error = error;
    this.queue.length = 0;
    this.head = 0;
    this.queuedBytes = 0;
    this.cleanup();
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      this.error = undefined;
      this.finished = true;
      w.reject(error);
    }
  }

  /** Ends the stream normally: queued events are still delivered, then `done`. */
  end(): void {
    if (this.ended) return;
    this.finished = true;
    this.cleanup();
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<StoreEvent>> {
    if (this.head < this.queue.length) {
      const event = this.queue[this.head] as StoreEvent;
      this.queue[this.head] = undefined as unknown as StoreEvent;
      this.head++;
      if (event.type === 'put') this.queuedBytes -= event.value.byteLength;
      if (this.head === this.queue.length) {
        this.queue.length = 0;
        this.head = 0;
      } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue.splice(0, this.head);
        this.head = 0;
      }
      return Promise.resolve({ value: event, done: false });
    }
    if (this.error !== undefined) {
      const error = this.error;
      this.error = undefined;
      this.finished = true;
      return Promise.reject(error);
    }
    if (this.finished) return Promise.resolve({ value: undefined, done: true });
    if (this.waiter) return Promise.reject(new Error('WatchStream supports one pending next() at a time'));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Called by `for await` on `break`/`return`/throw: ends the stream and drops what is queued. */
  return(): Promise<IteratorResult<StoreEvent>> {
    this.queue.length = 0;
    this.head = 0;
    this.queuedBytes = 0;
    this.error = undefined;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<StoreEvent> {
    return this;
  }

  private cleanupDone = false;
  private cleanup(): void {
    if (this.cleanupDone) return;
    this.cleanupDone = true;
    this.signal?.removeEventListener('abort', this.onAbort);
    this.onFinish(this);
  }
}
