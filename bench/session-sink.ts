/**
 * Bench-only `sink` semantics, shared by the roam service and the raw `ws` endpoint in
 * bench/session-server.ts, plus the tiny control protocol the client (bench/session.ts) speaks.
 *
 * Data messages (roam channel 0 / ws binary frames) are counted. Control messages (roam channel 1 /
 * ws text frames) are one-line text commands; replies are one JSON object on the same path:
 *
 *   expect <n>  reset the counters; reply {"type":"done",msgs,bytes,cpu_us} once n data messages arrived
 *   stats       reply {"type":"stats",msgs,bytes,cpu_us}
 *   lat start   clear the latency samples and record one per data message from now on
 *   lat stop    stop recording; reply {"type":"lat","samples_ns":[…],cpu_us}, plus "arrival_ns":[…]
 *               in diagnostic mode (time the carrying WebSocket message reached the server minus the
 *               stamp, i.e. before any roam code ran on the server)
 *
 * `cpu_us` is the server process's CPU time (user + system) since the last `expect`/`lat start`:
 * a noise-robust cost figure on a busy machine (the server child runs one side at a time).
 *
 * Latency samples are `process.hrtime.bigint()` at the sink minus the big-endian u64 the client
 * wrote into the first 8 bytes of the payload (also hrtime: CLOCK_MONOTONIC, comparable across
 * processes on one machine), in nanoseconds.
 */
import type { ServerSession, SessionHandler } from '../src/host/index.js';

export const DATA_CHANNEL = 0;
export const CONTROL_CHANNEL = 1;

export type SinkReply =
  | { type: 'done'; msgs: number; bytes: number; cpu_us: number }
  | { type: 'stats'; msgs: number; bytes: number; cpu_us: number }
  | { type: 'lat'; samples_ns: number[]; cpu_us: number; arrival_ns?: number[] }
  | { type: 'error'; message: string };

/** Writes the current hrtime into the first 8 bytes of `buf` (big-endian). */
export function writeStamp(buf: Uint8Array): void {
  new DataView(buf.buffer, buf.byteOffset, 8).setBigUint64(0, process.hrtime.bigint());
}

export function readStamp(buf: Uint8Array): bigint {
  return new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0);
}

/** Per-connection sink state. `reply` sends one JSON control reply back to the client. */
export class Sink {
  msgs = 0;
  bytes = 0;
  private expect = -1;
  private recording = false;
  private samples: number[] = [];
  private arrivals: number[] = [];
  private cpu0 = process.cpuUsage();

  /**
   * @param arrival diagnostic hook: hrtime at which the WebSocket message carrying the current data
   *   message arrived (set by a `message` listener that runs before the roam transport's).
   */
  constructor(
    private readonly reply: (json: string) => void,
    private readonly arrival?: () => bigint,
  ) {}

  data(d: Uint8Array): void {
    if (this.recording && d.length >= 8) {
      const now = process.hrtime.bigint();
      const stamp = readStamp(d);
      this.samples.push(Number(now - stamp));
      if (this.arrival) this.arrivals.push(Number(this.arrival() - stamp));
    }
    this.msgs++;
    this.bytes += d.length;
    if (this.msgs === this.expect) {
      this.expect = -1;
      this.send({ type: 'done', msgs: this.msgs, bytes: this.bytes, cpu_us: this.cpuUs() });
    }
  }

  control(text: string): void {
    const [cmd, arg] = text.trim().split(/\s+/);
    if (cmd === 'expect') {
      const n = Number(arg);
      if (!Number.isSafeInteger(n) || n <= 0) {
        this.send({ type: 'error', message: `bad count ${arg}` });
        return;
      }
      this.msgs = 0;
      this.bytes = 0;
      this.expect = n;
      this.cpu0 = process.cpuUsage();
    } else if (cmd === 'stats') {
      this.send({ type: 'stats', msgs: this.msgs, bytes: this.bytes, cpu_us: this.cpuUs() });
    } else if (cmd === 'lat' && arg === 'start') {
      this.samples = [];
      this.arrivals = [];
      this.recording = true;
      this.cpu0 = process.cpuUsage();
    } else if (cmd === 'lat' && arg === 'stop') {
      this.recording = false;
      const samples = this.samples;
      this.samples = [];
      const cpu_us = this.cpuUs();
      this.send(
        this.arrival
          ? { type: 'lat', samples_ns: samples, cpu_us, arrival_ns: this.arrivals }
          : { type: 'lat', samples_ns: samples, cpu_us },
      );
      this.arrivals = [];
    } else {
      this.send({ type: 'error', message: `unknown command ${JSON.stringify(text)}` });
    }
  }

  private cpuUs(): number {
    const d = process.cpuUsage(this.cpu0);
    return d.user + d.system;
  }

  private send(r: SinkReply): void {
    // (one line of JSON; the client matches replies by `type`)
    this.reply(JSON.stringify(r));
  }
}

const dec = new TextDecoder();

/** The roam `sink` service: data on channel 0, control on channel 1. */
export const sinkService: SessionHandler = sinkServiceWith();

/** The sink service, optionally with the diagnostic arrival hook (see Sink). */
export function sinkServiceWith(arrival?: () => bigint): SessionHandler {
  return {
    open(session: ServerSession) {
      const sink = new Sink((json) => {
        if (session.state === 'attached' || session.state === 'detached') session.send(json, CONTROL_CHANNEL);
      }, arrival);
      session.on('message', (data, channel) => {
        if (channel === CONTROL_CHANNEL) sink.control(dec.decode(data));
        else sink.data(data);
      });
    },
  };
}
