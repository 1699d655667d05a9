/** What a transport reports to the one who bound it. */
export interface TransportHandlers {
  /** Bytes from the peer. Framing is not preserved: any split of the stream may arrive. */
  data(bytes: Uint8Array): void;
  /** The transport closed, cleanly or not. Called exactly once. */
  close(err?: Error): void;
}

/**
 * The only thing the session layer knows about a network: an ordered, reliable byte pipe that can
 * break at any moment. Implementations: WebSocket and TCP (src/transport), the browser WebSocket
 * (src/client) and an in-memory pair for deterministic tests (below).
 */
export interface Transport {
  /** 'ws', 'tcp', 'memory', … for logs and metrics. */
  readonly kind: string;
  /** Peer address as the OS sees it, when known. */
  readonly remoteAddress: string | undefined;
  /** Bytes accepted by `send` but not yet handed to the OS. */
  readonly bufferedAmount: number;
  readonly isClosed: boolean;
  /** Starts delivery; data that arrived before binding is delivered first. Call once. */
  bind(handlers: TransportHandlers): void;
  send(bytes: Uint8Array): void;
  /** Closes; the handlers' `close` fires once, asynchronously. Idempotent. */
  close(): void;
  /**
   * Ends at once, without the transport's own goodbye (a WebSocket close handshake, say): unsent
   * bytes are dropped and the peer sees the connection end as if the network had. For a transport
   * the session no longer needs, where a goodbye would cost both ends work and tell them nothing.
   * The handlers' `close` fires once, as for `close`. Without it, `close` is used.
   */
  abort?(): void;
}

/**
 * Base that queues events until `bind` and guarantees `close` fires once. Concrete transports call
 * `deliver` and `closed`.
 */
export abstract class BaseTransport implements Transport {
  abstract readonly kind: string;
  abstract readonly remoteAddress: string | undefined;
  abstract readonly bufferedAmount: number;
  private handlers: TransportHandlers | undefined;
  private early: Uint8Array[] = [];
  private closeState: { err?: Error | undefined } | undefined;
  private closeDelivered = false;

  get isClosed(): boolean {
    return this.closeState !== undefined;
  }

  bind(handlers: TransportHandlers): void {
    if (this.handlers) throw new Error('transport already bound');
    this.handlers = handlers;
    const early = this.early;
    this.early = [];
    for (const b of early) handlers.data(b);
    if (this.closeState) this.fireClose();
  }

  protected deliver(bytes: Uint8Array): void {
    if (this.closeState) return;
    if (this.handlers) this.handlers.data(bytes);
    else this.early.push(bytes);
  }

  protected closed(err?: Error): void {
    if (this.closeState) return;
    this.closeState = { err };
    // Deferred so a close never re-enters the code that caused it.
    queueMicrotask(() => this.fireClose());
  }

  private fireClose(): void {
    if (this.closeDelivered || !this.handlers || !this.closeState) return;
    this.closeDelivered = true;
    this.handlers.close(this.closeState.err);
  }

  abstract send(bytes: Uint8Array): void;
  abstract close(): void;
}

/** One end of an in-memory transport pair. Delivery is asynchronous (microtask), like a socket. */
export class MemoryTransport extends BaseTransport {
  readonly kind = 'memory';
  readonly bufferedAmount = 0;
  peer: MemoryTransport | undefined;
  constructor(readonly remoteAddress: string | undefined = 'memory') {
    super();
  }
  send(bytes: Uint8Array): void {
    if (this.isClosed) return;
    const peer = this.peer;
    const copy = bytes.slice();
    queueMicrotask(() => peer?.receive(copy));
  }
  private receive(bytes: Uint8Array): void {
    this.deliver(bytes);
  }
  close(): void {
    if (this.isClosed) return;
    this.closed();
    const peer = this.peer;
    queueMicrotask(() => peer?.closed());
  }
}

/** Two connected in-memory transports. */
export function memoryTransportPair(): [MemoryTransport, MemoryTransport] {
  const a = new MemoryTransport('memory:a');
  const b = new MemoryTransport('memory:b');
  a.peer = b;
  b.peer = a;
  return [a, b];
}
