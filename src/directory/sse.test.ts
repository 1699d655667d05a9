import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { RoamError } from '../wire/index.js';
import { parseSse, readEvents } from './sse.js';

const utf8 = new TextEncoder();

const rejectsWith = (code: string) => (err: unknown) => {
  assert.ok(err instanceof RoamError, String(err));
  assert.equal(err.code, code, err.message);
  return true;
};

describe('SSE parser', () => {
  it('reads a stream the directory writes, however it is cut', async () => {
    const text =
      ': comment\n\nevent: hello\ndata: {"hosts":[]}\n\nevent: a\r\ndata: 1\r\ndata: 2\r\n\r\ndata: plain\r\r' +
      'id: 7\nevent: b\ndata\n\nevent: c\n\nretry: 5\ndata: x';
    const want = [
      { event: 'hello', data: '{"hosts":[]}' },
      { event: 'a', data: '1\n2' },
      { event: 'message', data: 'plain' },
      { event: 'b', data: '', id: '7' },
    ];
    const bytes = utf8.encode(text);
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat({ max: bytes.length }), { maxLength: 12 }), async (cuts) => {
        const at = [0, ...cuts.sort((a, b) => a - b), bytes.length];
        const chunks = at.slice(1).map((end, i) => bytes.slice(at[i], end));
        const out = [];
        for await (const m of parseSse(
          (async function* () {
            yield* chunks;
          })(),
        ))
          out.push(m);
        assert.deepEqual(out, want);
      }),
    );
  });

  it('refuses an event larger than the limit', async () => {
    const chunks = (async function* () {
      for (let i = 0; i < 100; i++) yield utf8.encode(`data: ${'y'.repeat(100)}\n`);
    })();
    await assert.rejects(async () => {
      for await (const _ of parseSse(chunks, 1000));
    }, rejectsWith('PAYLOAD_TOO_LARGE'));
    const line = (async function* () {
      for (let i = 0; i < 100; i++) yield utf8.encode('z'.repeat(100));
    })();
    await assert.rejects(async () => {
      for await (const _ of parseSse(line, 1000));
    }, rejectsWith('PAYLOAD_TOO_LARGE'));
  });

  it('readEvents reports an unreachable directory as UNAVAILABLE', async () => {
    await assert.rejects(async () => {
      for await (const _ of readEvents('http://127.0.0.1:1')) break;
    }, rejectsWith('UNAVAILABLE'));
  });
});
