/**
 * Userspace link emulator: a loopback TCP proxy that impairs traffic.
 *
 * This machine has no kernel netem, so tests that need latency, jitter,
 * limited bandwidth, abrupt connection loss or network partitions route their
 * TCP connections through this proxy instead. Every accepted connection is
 * forwarded to `target`; each direction has its own ordered queue, and chunks
 * leave the queue at a scheduled "arrival" time computed when they enter it.
 *
 * Model per direction (times in ms on a monotonic clock):
 *   txEnd   = max(now, linkFree) + bytes*8/bps    (serialization; chunks queue)
 *   arrival = max(previousArrival, txEnd + delay + U[0, jitter])
 * Taking the max with the previous arrival keeps byte order: TCP is a stream,
 * so reordering chunks would corrupt data rather than emulate anything real.
 */
import { once } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export interface LinkConditions {
  /** One-way delay added in EACH direction (default 0). */
  delayMs?: number;
  /** Extra uniform random delay in [0, jitterMs] per chunk; order is always preserved. */
  jitterMs?: number;
  /** Bits per second per direction (default unlimited). */
  bandwidthBps?: number;
}

export interface LinkEmulatorOptions extends LinkConditions {
  target: { host: string; port: number };
  /** Default '127.0.0.1'. */
  listenHost?: string;
  /** Injected RNG for jitter (default Math.random). */
  random?: () => number;
  /** Per-direction cap on held bytes (default 64 MiB); above it the sender is paused. */
  maxBufferedBytes?: number;
}

/** State shared by the emulator and all its pipes (read at enqueue/flush time). */
interface LinkState {
  cond: LinkConditions;
  random: () => number;
  maxBufferedBytes: number;
  partitioned: boolean;
}

/** A queued chunk; `data === null` is the FIN, queued so it is delivered after the data. */
interface Chunk {
  data: Buffer | null;
  at: number;
}

/** One direction of one proxied connection: src socket -> delayed queue -> dst socket. */
class Pipe {
  private queue: Chunk[] = [];
  private queuedBytes = 0;
  private lastAt = 0; // arrival time of the previous chunk (ordering floor)
  private linkFree = 0; // when the emulated wire finishes serializing the previous chunk
  private timer: NodeJS.Timeout | undefined; // at most one timer per direction
  private paused = false; // whether WE paused src for backpressure
  /** False until dst can be written (upstream still connecting or held by a partition). */
  ready: boolean;
  /** src sent FIN (a clean end); used to tell clean closes from aborts. */
  srcEnded = false;

  constructor(
    private readonly link: LinkState,
    private readonly src: net.Socket,
    private readonly dst: net.Socket,
    ready: boolean,
    private readonly onForward: (n: number) => void,
  ) {
    this.ready = ready;
    src.on('data', (d: Buffer) => this.enqueue(d));
    src.on('end', () => {
      this.srcEnded = true;
      this.enqueue(null);
    });
    dst.on('drain', () => this.relieve());
  }

  private stamp(c: Chunk, now: number): void {
    const { delayMs = 0, jitterMs = 0, bandwidthBps } = this.link.cond;
    const bytes = c.data?.length ?? 0;
    const serialization = bandwidthBps ? (bytes * 8 * 1000) / bandwidthBps : 0;
    this.linkFree = Math.max(now, this.linkFree) + serialization;
    const jitter = jitterMs > 0 ? this.link.random() * jitterMs : 0;
    // The FIFO queue alone already guarantees order (flush only ever takes the
    // head); the max keeps the stamps honest so one timer for the head suffices.
    c.at = Math.max(this.lastAt, this.linkFree + delayMs + jitter);
    this.lastAt = c.at;
  }

  private enqueue(data: Buffer | null): void {
    const c: Chunk = { data, at: 0 };
    this.stamp(c, performance.now());
    this.queue.push(c);
    this.queuedBytes += data?.length ?? 0;
    // Bytes held here plus bytes node still buffers for dst: if a slow link or a
    // partition lets this grow without bound, a bulk sender would eat memory.
    if (!this.paused && this.held() > this.link.maxBufferedBytes) {
      this.paused = true;
      this.src.pause();
    }
    this.schedule();
  }

  private held = (): number => this.queuedBytes + this.dst.writableLength;

  private relieve(): void {
    if (this.paused && this.held() <= this.link.maxBufferedBytes) {
      this.paused = false;
      this.src.resume();
    }
  }

  /** Arm the single timer for the queue head, unless something blocks delivery. */
  schedule(): void {
    if (this.timer || !this.ready || this.link.partitioned || this.queue.length === 0) return;
    const head = this.queue[0] as Chunk;
    // Ceil: node timers have 1 ms resolution and firing early would just re-arm.
    const wait = Math.max(0, Math.ceil(head.at - performance.now()));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, wait);
  }

  private flush(): void {
    if (!this.ready || this.link.partitioned || this.dst.destroyed) return;
    // No slack: `delayMs` must be a hard lower bound. If libuv's cached loop
    // time fires the timer a hair early, schedule() simply re-arms.
    const now = performance.now();
    this.dst.cork(); // chunks due together go out as one segment
    while (this.queue.length > 0 && (this.queue[0] as Chunk).at <= now) {
      const c = this.queue.shift() as Chunk;
      if (c.data === null) {
        this.dst.end();
      } else {
        this.queuedBytes -= c.data.length;
        this.dst.write(c.data);
        this.onForward(c.data.length);
      }
    }
    this.dst.uncork();
    this.relieve();
    this.schedule();
  }

  /** Stop delivering (partition). Queued data stays queued. */
  hold(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * After a partition, held chunks are re-sent "now", as TCP retransmission
   * would: they pay the current delay/serialization again, still in order.
   */
  restamp(): void {
    const now = performance.now();
    this.linkFree = now;
    this.lastAt = 0;
    for (const c of this.queue) this.stamp(c, now);
    this.schedule();
  }

  discard(): void {
    this.hold();
    this.queue = [];
    this.queuedBytes = 0;
  }
}

interface Conn {
  client: net.Socket;
  upstream: net.Socket;
  up: Pipe; // client -> target
  down: Pipe; // target -> client
  closed: Promise<void>; // both sockets closed
}

export class LinkEmulator {
  readonly host: string;
  readonly port: number;
  private readonly link: LinkState;
  private readonly conns = new Set<Conn>();
  private heldConns: Conn[] = []; // accepted during a partition, not yet connected
  private readonly listeners: Array<(info: { remoteAddress: string; remotePort: number }) => void> = [];
  private readonly forwarded = { up: 0, down: 0 };
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly server: net.Server,
    private target: { host: string; port: number },
    link: LinkState,
  ) {
    this.link = link;
    const addr = server.address() as net.AddressInfo;
    this.host = addr.address;
    this.port = addr.port;
    server.on('connection', (s) => this.accept(s));
  }

  static async start(opts: LinkEmulatorOptions): Promise<LinkEmulator> {
    const { target, listenHost = '127.0.0.1', random = Math.random, maxBufferedBytes = 64 * 1024 * 1024 } = opts;
    const link: LinkState = { cond: {}, random, maxBufferedBytes, partitioned: false };
    link.cond = validate({ delayMs: opts.delayMs, jitterMs: opts.jitterMs, bandwidthBps: opts.bandwidthBps });
    // allowHalfOpen: FINs are forwarded per direction through the queue, so one
    // side ending must not make node auto-end the other direction early.
    const server = net.createServer({ allowHalfOpen: true });
    server.listen(0, listenHost);
    await once(server, 'listening'); // rejects on a listen error
    return new LinkEmulator(server, target, link);
  }

  address(): { host: string; port: number } {
    return { host: this.host, port: this.port };
  }

  /**
   * Points new connections at another target: lets a test start the emulator first and advertise
   * its address before the process behind it has picked its own port.
   */
  retarget(target: { host: string; port: number }): void {
    this.target = target;
  }

  /** Patch conditions (omitted fields keep their value; explicit undefined resets). New data only. */
  setConditions(c: LinkConditions): void {
    this.link.cond = validate({ ...this.link.cond, ...c });
  }

  /** Abruptly destroy every current connection, discarding queued data. */
  cut(): void {
    for (const conn of this.conns) this.destroy(conn);
    this.heldConns = [];
  }

  /** Black-hole: hold all data and new connections until heal(). */
  partition(): void {
    this.link.partitioned = true;
    for (const conn of this.conns) {
      conn.up.hold();
      conn.down.hold();
    }
  }

  heal(): void {
    if (!this.link.partitioned) return;
    this.link.partitioned = false;
    for (const conn of this.conns) {
      conn.up.restamp();
      conn.down.restamp();
    }
    const held = this.heldConns;
    this.heldConns = [];
    for (const conn of held) this.connectUpstream(conn);
  }

  get connections(): number {
    return this.conns.size;
  }

  get bytesForwarded(): { up: number; down: number } {
    return { ...this.forwarded };
  }

  /** Called for each accepted client connection; returns an unsubscribe function. */
  onConnection(cb: (info: { remoteAddress: string; remotePort: number }) => void): () => void {
    this.listeners.push(cb);
    return () => {
      const i = this.listeners.indexOf(cb);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      const serverClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      const all = [...this.conns].map((c) => c.closed);
      this.cut();
      await Promise.all([serverClosed, ...all]);
    })();
    return this.closing;
  }

  private accept(client: net.Socket): void {
    if (this.closing) {
      client.destroy();
      return;
    }
    client.setNoDelay(true);
    // Created unconnected so the target->client pipe can be wired up now while
    // connect() is deferred (partition holds new connections).
    const upstream = new net.Socket({ allowHalfOpen: true });
    let closedCount = 0;
    let markClosed!: () => void;
    const closed = new Promise<void>((r) => (markClosed = r));
    const conn: Conn = {
      client,
      upstream,
      up: new Pipe(this.link, client, upstream, false, (n) => (this.forwarded.up += n)),
      down: new Pipe(this.link, upstream, client, true, (n) => (this.forwarded.down += n)),
      closed,
    };
    this.conns.add(conn);
    const onClose = (out: Pipe) => (hadError: boolean) => {
      // A socket that closes without having sent FIN (reset, error, destroy)
      // aborts the connection: propagate as a destroy, like a RST. After a clean
      // FIN the pipe drains and ends the peer on its own.
      if (hadError || !out.srcEnded) this.destroy(conn);
      if (++closedCount === 2) {
        this.conns.delete(conn);
        markClosed();
      }
    };
    client.on('error', () => {}); // handled via 'close'
    upstream.on('error', () => {});
    client.on('close', onClose(conn.up));
    upstream.on('close', onClose(conn.down));

    const info = { remoteAddress: client.remoteAddress ?? '', remotePort: client.remotePort ?? 0 };
    for (const cb of [...this.listeners]) cb(info);

    if (this.link.partitioned) this.heldConns.push(conn);
    else this.connectUpstream(conn);
  }

  private connectUpstream(conn: Conn): void {
    if (conn.client.destroyed) return;
    conn.upstream.once('connect', () => {
      conn.upstream.setNoDelay(true);
      conn.up.ready = true;
      conn.up.schedule();
    });
    conn.upstream.connect(this.target.port, this.target.host);
  }

  private destroy(conn: Conn): void {
    conn.up.discard();
    conn.down.discard();
    conn.client.destroy();
    conn.upstream.destroy();
  }
}

function validate(c: LinkConditions): LinkConditions {
  for (const [k, v] of Object.entries(c)) {
    if (v !== undefined && !(typeof v === 'number' && v >= 0 && !Number.isNaN(v))) {
      throw new RangeError(`LinkEmulator: ${k} must be a non-negative number, got ${String(v)}`);
    }
  }
  if (c.bandwidthBps === 0) throw new RangeError('LinkEmulator: bandwidthBps must be > 0 (omit for unlimited)');
  return { ...c };
}
