import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { connect, type Session } from '../../src/client/node.js';
import { startTestHost } from '../../test/support/host.js';
import { gatedConnector, nextEvent, tempDir } from '../../test/support/server.js';
import { suspendedOn, Waiter } from '../support.js';
import { CHUNK } from './service.js';

const SERVICE = new URL('./service.ts', import.meta.url).pathname;
const SIZE = 256 * 1024;
/** 50 chunks a second (200 KiB/s): the file takes ~1.3 s, long enough to interrupt it twice. */
const RATE = CHUNK * 50;
/**
 * Long enough that an immediate reconnect always beats it, even on a loaded machine (else the
 * drop in step (a) would turn into a suspension); short enough that the stream is still playing
 * when the suspension happens (the stream goes on for the grace period: 15 chunks).
 */
const GRACE_MS = 300;
const dec = new TextDecoder();
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Collects media bytes (channel 0) and notices (channel 1). */
function listener(s: Session) {
  const chunks: Uint8Array[] = [];
  const notices: string[] = [];
  let bytes = 0;
  const w = new Waiter(() => `${bytes} bytes, notices ${JSON.stringify(notices)}`).watch(s);
  s.on('message', (d, ch) => {
    if (ch === 0) {
      chunks.push(d.slice());
      bytes += d.length;
    } else if (ch === 1) notices.push(dec.decode(d));
    w.poke();
  });
  return {
    chunks,
    notices,
    get bytes() {
      return bytes;
    },
    bytesAtLeast: (n: number) => w.until(() => bytes >= n, `${n} bytes`),
    /** The first notice matching `re`, waiting for it if needed. */
    async notice(re: RegExp): Promise<RegExpMatchArray> {
      await w.until(() => notices.some((n) => re.test(n)), `notice ${re}`);
      return (notices.find((n) => re.test(n)) as string).match(re) as RegExpMatchArray;
    },
  };
}

describe('examples/stream', { timeout: 30_000 }, () => {
  it('streams a file byte-exact across a transport drop and a suspension to the Store mid-stream', async (t) => {
    const media = await tempDir('roam-stream-media-');
    const file = randomBytes(SIZE);
    await writeFile(join(media.path, 'track.bin'), file);
    process.env.ROAM_STREAM_ROOT = media.path; // copied into the service's worker at Host.start
    const h = await startTestHost({
      graceMs: GRACE_MS,
      listen: 'ws://127.0.0.1:0',
      services: [{ name: 'stream', module: SERVICE }],
    });
    const gate = gatedConnector();
    const s = connect(h.url, { service: 'stream', connector: gate, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
    t.after(async () => {
      s.close();
      await h.close();
      await media.cleanup();
    });
    const l = listener(s);
    await s.ready;
    const sid = s.id as string;
    s.send(`play track.bin ${RATE}`);
    await l.notice(/^playing track\.bin 262144 bytes/);

    // (a) A transport drop a fifth of the way in: the session resumes in place.
    await l.bytesAtLeast(SIZE / 5);
    const resumed = nextEvent(s, 'resumed');
    s.reconnectNow();
    await resumed;
    const [first, atReconnect] = await l.notice(/^resumed:(\w+) at (\d+)$/).then((m) => [m[1], m[2]]);
    assert.equal(first, 'reconnected', 'a quick reconnect resumes the live session');
    assert.ok(Number(atReconnect) < SIZE, 'reconnected mid-stream');

    // (b) Past 40 %, the listener becomes unreachable; after the grace period its session and
    // instance (path + offset + timer) are suspended to the Store, then restored.
    await l.bytesAtLeast((SIZE * 2) / 5);
    const stored = suspendedOn(h.host, sid);
    gate.open = false;
    s.reconnectNow();
    await stored;
    assert.equal(await h.host.whereIs(sid), 'suspended');
    assert.equal(h.host.liveInstances, 0, 'nothing of the stream left in memory');
    gate.open = true;
    const [, atRestore] = await l.notice(/^resumed:restored at (\d+)$/);
    assert.ok(Number(atRestore) > 0 && Number(atRestore) < SIZE, `restored mid-stream (offset ${atRestore})`);

    const [, endAt] = await l.notice(/^end (\d+)$/);
    assert.equal(Number(endAt), SIZE);
    const got = Buffer.concat(l.chunks);
    assert.equal(got.length, SIZE, 'nothing duplicated or missing');
    assert.equal(sha256(got), sha256(file));
    assert.ok(
      l.chunks.every((c, i) => c.length === CHUNK || i === l.chunks.length - 1),
      'every chunk but the last is full',
    );
    assert.equal(h.host.counters.restored, 1);
    assert.equal(h.host.counters.instancesRestored, 1);
    assert.ok(!l.notices.some((n) => n.startsWith('error')), l.notices.join(' | '));
  });

  it('serves only files under the media root and rejects bad commands', async (t) => {
    const media = await tempDir('roam-stream-media-');
    await writeFile(join(media.path, 'a.bin'), randomBytes(10));
    process.env.ROAM_STREAM_ROOT = media.path;
    const h = await startTestHost({ listen: 'ws://127.0.0.1:0', services: [{ name: 'stream', module: SERVICE }] });
    const s = connect(h.url, { service: 'stream' });
    t.after(async () => {
      s.close();
      await h.close();
      await media.cleanup();
    });
    const l = listener(s);
    await s.ready;
    s.send('play ../../../etc/hostname 1000');
    s.send(`play ${join(media.path, 'missing.bin')} 1000`);
    s.send('play a.bin 0');
    s.send('rewind');
    s.send(`play ${join(media.path, 'a.bin')} ${CHUNK * 1000}`); // absolute paths inside the root are fine
    await l.notice(/^end 10$/);
    assert.equal(l.notices.length, 6, l.notices.join(' | '));
    assert.match(l.notices[0] as string, /^error: .*(outside the media root|ENOENT)/);
    assert.match(l.notices[1] as string, /^error: ENOENT/);
    assert.match(l.notices[2] as string, /^error: usage: play/);
    assert.match(l.notices[3] as string, /^error: unknown command "rewind"/);
    assert.equal(l.notices[4], `playing a.bin 10 bytes at ${CHUNK * 1000} B/s`);
    assert.equal(l.bytes, 10);
  });
});
