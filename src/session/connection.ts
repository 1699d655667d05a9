import {
  type CodeName,
  DEFAULT_MAX_FRAME_BYTES,
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameType,
  ProtocolError,
  RoamError,
} from '../wire/index.js';
import type { Clock } from './clock.js';
import type { Transport } from './transport.js';

/** Receives what a connection decodes. Swapped when the handshake hands over to the engine. */
export interface ConnectionHandler {
  frame(f: Frame): void;
  /** The transport is gone. `err` is set for protocol violations and abnormal closes. */
  closed(err?: RoamError): void;
}

/** Frames above this size skip the batch: copying them into a batch costs more than a syscall. */
const BATCH_DIRECT_BYTES = 16 * 1024;
/** A batch is sent once it holds this much, without waiting for the microtask. */
const BATCH_MAX_BYTES = 64 * 1024;

/**
 * A transport plus framing. Outbound frames written in the same tick are coalesced into one
 * transport write (a WebSocket message or a TCP write), which is where most of the per-message cost
 * of small messages goes. Inbound bytes go through an incremental decoder; a protocol violation
 * sends ERROR and closes the transport, never throws to the caller.
 */
export class FramedConnection {
  private readonly decoder: FrameDecoder;
  private handler: ConnectionHandler | undefined;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private flushScheduled = false;
  private closeErr: RoamError | undefined;
  private finalErr: RoamError | undefined;
  private transportGone = false;
  private queue: Frame[] = [];
  private queuedBytes = 0;
  private readonly maxQueuedBytes: number;
  private waiter: (() => void) | undefined;
  private done = false;
  private readonly flushFn = (): void => this.flush();

  constructor(
    readonly transport: Transport,
    opts: { maxFrameBytes?: number; maxQueuedBytes?: number } = {},
  ) {
    this.maxQueuedBytes = opts.maxQueuedBytes ?? 64 * 1024;
    this.decoder = new FrameDecoder({ maxFrameBytes: opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES });
    const frames: Frame[] = [];
    transport.bind({
      data: (bytes) => {
        if (this.done) return;
        try {
          this.decoder.pushTo(bytes, frames);
        } catch (err) {
          frames.length = 0;
          this.fail(err as ProtocolError);
          return;
        }
        for (let i = 0; i < frames.length && !this.done; i++) {
          const f = frames[i] as Frame;
          if (this.handler) this.handler.frame(f);
          else this.enqueue(f);
        }
        frames.length = 0;
      },
      close: (err) => {
        this.done = true;
        this.finalErr =
          this.closeErr ??
          (err ? new RoamError('TRANSPORT_CLOSED', `transport error: ${err.message}`, { cause: err }) : undefined);
        this.transportGone = true;
        if (this.handler) this.handler.closed(this.finalErr);
        else this.wake();
      },
    });
  }

  get isOpen(): boolean {
    return !this.done && !this.transport.isClosed;
  }

  /**
   * Routes frames to `h` from now on. Frames that arrived while nobody listened (during a
   * handshake) are delivered first, in order, so none is lost at the hand-over.
   */
  setHandler(h: ConnectionHandler): void {
    this.handler = h;
    const q = this.queue;
    this.queue = [];
    this.queuedBytes = 0;
    for (const f of q) {
      if (this.handler !== h) {
        this.queue.push(f);
        continue;
      }
      h.frame(f);
    }
    if (this.transportGone && this.handler === h) h.closed(this.finalErr);
  }

  /** Stops routing frames to a handler; they queue for `nextFrame` or the next handler. */
  clearHandler(): void {
    this.handler = undefined;
  }

  /**
   * Next frame, for handshakes. Rejects with HANDSHAKE_TIMEOUT after `timeoutMs`, or with the close
   * reason when the transport goes away first.
   */
  nextFrame(timeoutMs: number, clock: Clock): Promise<Frame> {
    const f = this.queue.shift();
    if (f) return Promise.resolve(f);
    if (this.transportGone) {
      return Promise.reject(this.finalErr ?? new RoamError('TRANSPORT_CLOSED', 'transport closed during handshake'));
    }
    return new Promise<Frame>((resolve, reject) => {
      const timer = clock.setTimeout(() => {
        this.waiter = undefined;
        reject(new RoamError('HANDSHAKE_TIMEOUT', `no handshake frame within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = () => {
        const next = this.queue.shift();
        if (!next && !this.transportGone) return;
        clock.clearTimeout(timer);
        this.waiter = undefined;
        if (next) resolve(next);
        else reject(this.finalErr ?? new RoamError('TRANSPORT_CLOSED', 'transport closed during handshake'));
      };
    });
  }

  private enqueue(f: Frame): void {
    // Bounded: a peer may not flood a connection that is still handshaking. A server may send up
    // to its replay window right after WELCOME/RESUMED, so clients raise the bound to match.
    this.queuedBytes += f.type === FrameType.DATA ? f.payload.length + 18 : 64;
    if (this.queuedBytes > this.maxQueuedBytes) {
      this.fail(
        new ProtocolError('UNEXPECTED_FRAME', `more than ${this.maxQueuedBytes} bytes before the handshake completed`),
      );
      return;
    }
    this.queue.push(f);
    this.wake();
  }

  private wake(): void {
    this.waiter?.();
  }

  /** Queues already-encoded frame bytes. */
  write(bytes: Uint8Array): void {
    if (!this.isOpen) return;
    if (bytes.length >= BATCH_DIRECT_BYTES) {
      this.flush();
      this.transport.send(bytes);
      return;
    }
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    if (this.pendingBytes >= BATCH_MAX_BYTES) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(this.flushFn);
    }
  }

  writeFrame(f: Frame): void {
    this.write(encodeFrame(f));
  }

  flush(): void {
    this.flushScheduled = false;
    const n = this.pending.length;
    if (n === 0) return;
    if (!this.isOpen) {
      this.pending = [];
      this.pendingBytes = 0;
      return;
    }
    if (n === 1) {
      this.transport.send(this.pending[0] as Uint8Array);
    } else {
      const out = new Uint8Array(this.pendingBytes);
      let off = 0;
      for (const b of this.pending) {
        out.set(b, off);
        off += b.length;
      }
      this.transport.send(out);
    }
    this.pending = [];
    this.pendingBytes = 0;
  }

  /** Sends CLOSE (or ERROR for failures) after anything queued, then closes the transport. */
  close(code: CodeName = 'NORMAL', reason = '', asError = false): void {
    if (!this.isOpen) return;
    this.write(
      encodeFrame(asError ? { type: FrameType.ERROR, code, message: reason } : { type: FrameType.CLOSE, code, reason }),
    );
    this.flush();
    this.done = true;
    this.transport.close();
  }

  /** Closes for a protocol violation: the peer is told why, our handler sees the error. */
  fail(err: RoamError): void {
    if (this.closeErr) return;
    this.closeErr = err;
    if (!this.isOpen) return;
    this.write(encodeFrame({ type: FrameType.ERROR, code: err.code, message: err.message }));
    this.flush();
    this.transport.close();
  }

  /** Closes without a goodbye (simulates or follows a dead network). */
  abort(err?: RoamError): void {
    if (err && !this.closeErr) this.closeErr = err;
    this.pending = [];
    this.pendingBytes = 0;
    this.transport.close();
  }

  /**
   * Ends at once, with neither a goodbye frame nor the transport's own (see `Transport.abort`):
   * for a transport the session has left (it followed a MOVE, it was suspended), where whatever
   * is still unsent is replayed on the next transport anyway.
   */
  drop(): void {
    this.pending = [];
    this.pendingBytes = 0;
    if (this.transport.abort) this.transport.abort();
    else this.transport.close();
  }
}
