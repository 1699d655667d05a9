import { closeSync, openSync, readSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute, relative, resolve } from 'node:path';
import { defineService, type InstanceContext, type ServiceSession } from '../../src/service/index.js';

/**
 * An Icecast-like media stream: `play <path> <bytesPerSecond>` sends the file to the client in
 * {@link CHUNK}-byte messages at that rate, one chunk per tick of the `chunk` timer.
 *
 * One instance per session (no key). Its continuation is tiny and portable: the file's path
 * relative to the media root, the offset of the next chunk, and the timer. No file descriptor is
 * kept between ticks (each tick opens, reads 4 KiB at the offset and closes), so a suspended or
 * moved stream resumes anywhere the same media root is mounted.
 *
 * Files are served only from the media root: `ROAM_STREAM_ROOT`, or the host's working directory.
 *
 * Channels to the client: 0 = media bytes, 1 = notices (`playing …`, `end <bytes>`,
 * `resumed:<how> at <offset>`, `error: …`). Commands: `play <path> <bytesPerSecond>`, `pause`,
 * `continue`, `stop`.
 */
export const CHUNK = 4096;
/** Slowest and fastest rates accepted, in bytes per second (the timer ticks at most every 1 ms). */
export const MIN_RATE = 64;
export const MAX_RATE = CHUNK * 1000;

function mediaRoot(): string {
  return realpathSync(process.env.ROAM_STREAM_ROOT ?? process.cwd());
}

/** Resolves a client-supplied path inside the media root, or throws. */
function mediaFile(path: string): { rel: string; size: number } {
  const root = mediaRoot();
  const full = realpathSync(resolve(root, path));
  const rel = relative(root, full);
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) throw new Error(`${path} is outside the media root`);
  const st = statSync(full);
  if (!st.isFile()) throw new Error(`${path} is not a file`);
  return { rel, size: st.size };
}

function readChunk(rel: string, offset: number): Uint8Array {
  const buf = Buffer.alloc(CHUNK);
  const fd = openSync(resolve(mediaRoot(), rel), 'r');
  try {
    const n = readSync(fd, buf, 0, CHUNK, offset);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

const periodFor = (bytesPerSecond: number): number => Math.max(1, Math.round((CHUNK * 1000) / bytesPerSecond));

function startTimer(ctx: InstanceContext): void {
  const bps = ctx.state.get<number>('bps') ?? MIN_RATE;
  // `skip`: after a suspension the stream carries on at its rate instead of bursting to catch up.
  ctx.timers.setInterval('chunk', periodFor(bps), { catchUp: 'skip' });
}

function stop(ctx: InstanceContext): void {
  ctx.timers.clear('chunk');
  for (const k of ['file', 'offset', 'size', 'bps']) ctx.state.delete(k);
}

function play(ctx: InstanceContext, session: ServiceSession, path: string | undefined, rate: string | undefined) {
  const bps = Number(rate);
  if (!path || !Number.isFinite(bps) || bps < MIN_RATE || bps > MAX_RATE) {
    session.send(`error: usage: play <path> <bytesPerSecond ${MIN_RATE}..${MAX_RATE}>`, 1);
    return;
  }
  let media: { rel: string; size: number };
  try {
    media = mediaFile(path);
  } catch (err) {
    session.send(`error: ${(err as Error).message}`, 1);
    return;
  }
  ctx.state.set('file', media.rel);
  ctx.state.set('size', media.size);
  ctx.state.set('offset', 0);
  ctx.state.set('bps', bps);
  session.send(`playing ${media.rel} ${media.size} bytes at ${bps} B/s`, 1);
  startTimer(ctx);
}

export default defineService({
  name: 'stream',
  version: '1.0.0',
  compat: ['example-stream/1'],

  message(ctx, session, data) {
    const [cmd, ...args] = new TextDecoder().decode(data).trim().split(/\s+/);
    switch (cmd) {
      case 'play':
        play(ctx, session, args[0], args[1]);
        return;
      case 'pause':
        ctx.timers.clear('chunk');
        return;
      case 'continue':
        if (ctx.state.has('file')) startTimer(ctx);
        return;
      case 'stop':
        stop(ctx);
        return;
      default:
        session.send(`error: unknown command ${JSON.stringify(cmd)} (play, pause, continue, stop)`, 1);
    }
  },

  timer(ctx, name) {
    const session = ctx.sessions()[0];
    const file = ctx.state.get<string>('file');
    if (name !== 'chunk' || !session || file === undefined) return;
    const offset = ctx.state.get<number>('offset') ?? 0;
    const size = ctx.state.get<number>('size') ?? 0;
    let chunk: Uint8Array;
    try {
      chunk = readChunk(file, offset);
    } catch (err) {
      session.send(`error: ${(err as Error).message}`, 1);
      stop(ctx);
      return;
    }
    if (chunk.length > 0) session.send(chunk, 0);
    const next = offset + chunk.length;
    ctx.state.set('offset', next);
    if (chunk.length < CHUNK || next >= size) {
      session.send(`end ${next}`, 1);
      stop(ctx);
    }
  },

  resume(ctx, session, how) {
    session.send(`resumed:${how} at ${ctx.state.get<number>('offset') ?? 0}`, 1);
  },
});
