import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { RoamError } from '../wire/index.js';
import * as check from './validate.js';

const onlyInvalidArgument = (fn: () => unknown): void => {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof RoamError, String(err));
    assert.equal(err.code, 'INVALID_ARGUMENT');
    assert.ok(err.message.length > 0 && err.message.length < 2000, err.message);
  }
};

const record = () => ({
  id: '0123456789abcdef0123456789abcdef',
  publicKey: 'AAAA',
  clientUrl: 'wss://h.example:443/roam',
  peerUrl: 'https://h.example:7443',
  labels: { zone: 'eu-1', gpu: '' },
  capacity: 10,
  services: [
    { name: 'chat', version: '2.0.0', compat: ['chat/2'], requires: { memoryMb: 64, labels: { zone: 'eu-1' } } },
  ],
  nodeMajor: 20,
  metrics: { cpu: 0.5, loopDelayP99Ms: 1, rssBytes: 1, instances: 0, sessions: 0, bytesPerS: 0 },
});

describe('directory input checks', () => {
  it('keep the known fields of a host record and drop the rest', () => {
    const r = check.hostRecord({ ...record(), status: 'suspect', registeredAt: 5, extra: { big: true } }, 1234);
    assert.deepEqual(r, { ...record(), status: 'up', registeredAt: 1234, lastSeenAt: 1234 });
    const bare = check.hostRecord({ ...record(), labels: undefined, services: undefined, metrics: undefined }, 1);
    assert.deepEqual(bare.labels, {});
    assert.deepEqual(bare.services, []);
    assert.deepEqual(bare.metrics, check.ZERO_METRICS);
  });

  it('keep a __proto__ label as plain data', () => {
    const labels = check.labels(JSON.parse('{"__proto__":"x","a":"b"}'), 'labels');
    assert.equal(Object.getPrototypeOf(labels), Object.prototype);
    assert.deepEqual(Object.keys(labels), ['__proto__', 'a']);
    assert.equal(JSON.stringify(labels), '{"__proto__":"x","a":"b"}');
  });

  it('accept the URL schemes of each endpoint only', () => {
    for (const u of ['ws://a:1', 'wss://a', 'tcp://a:1', 'tls://[::1]:1']) {
      assert.equal(check.url(u, 'u', ['ws', 'wss', 'tcp', 'tls']), u);
    }
    for (const u of ['http://a:1', 'tcp://a', 'ws://', 'file:///x', 'ws://user@a:1', `ws://${'a'.repeat(3000)}:1`]) {
      assert.throws(() => check.url(u, 'u', ['ws', 'wss', 'tcp', 'tls']), RoamError);
    }
  });

  it('throw only INVALID_ARGUMENT on any JSON', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        onlyInvalidArgument(() => check.registration(v));
        onlyInvalidArgument(() => check.hostRecord(v as Record<string, unknown>, 0));
        onlyInvalidArgument(() => check.heartbeat(v));
        onlyInvalidArgument(() => check.leave(v));
        onlyInvalidArgument(() => check.events(v));
        onlyInvalidArgument(() => check.migration(v, 'm'));
        onlyInvalidArgument(() => check.drain(v, 'd'));
        onlyInvalidArgument(() => check.clusterEvent(v, 'e'));
      }),
      { numRuns: 500 },
    );
  });

  it("keep a migration's freeze steps, and refuse malformed ones", () => {
    const m = {
      id: '0123456789abcdef',
      instances: ['sabc'],
      service: 'chat',
      from: 'a',
      to: 'b',
      reason: 'operator',
      outcome: 'committed',
      startedAt: 1,
      endedAt: 2,
      sessions: 1,
      stateBytes: 10,
      bytesSent: 20,
      rounds: [{ bytes: 10, keys: 1, ms: 1 }],
      finalDirtyBytes: 3,
      throttleSteps: 0,
      phases: { negotiateMs: 1, precopyMs: 2, freezeMs: 3, commitMs: 1 },
    };
    const steps = {
      workerMs: 0.5,
      sendMs: 0.25,
      waitMs: 2,
      installMs: 0.5,
      casMs: 0.5,
      servingMs: 0.75,
      destinationMs: 1.5,
      downtimeMs: 1.5,
    };
    const kept = check.migration({ ...m, phases: { ...m.phases, freezeSteps: { ...steps, extra: 1 } } }, 'm');
    assert.deepEqual(kept.phases.freezeSteps, steps);
    // From a source whose destination reported nothing (or an older destination).
    const sourceOnly = { workerMs: 1, sendMs: 1, waitMs: 1 };
    assert.deepEqual(
      check.migration({ ...m, phases: { ...m.phases, freezeSteps: sourceOnly } }, 'm').phases.freezeSteps,
      sourceOnly,
    );
    assert.equal(check.migration(m, 'm').phases.freezeSteps, undefined);
    for (const bad of [
      'fast',
      [],
      { ...steps, workerMs: '1' },
      { ...steps, casMs: null },
      { ...steps, downtimeMs: -1 },
      { sendMs: 1, waitMs: 1 },
    ]) {
      assert.throws(
        () => check.migration({ ...m, phases: { ...m.phases, freezeSteps: bad } }, 'm'),
        (err: RoamError) => err.code === 'INVALID_ARGUMENT' && err.message.includes('freezeSteps'),
      );
    }
  });

  it('throw only INVALID_ARGUMENT when one field of a good record is replaced', () => {
    const fields = Object.keys(record());
    fc.assert(
      fc.property(fc.constantFrom(...fields), fc.jsonValue(), (f, v) => {
        onlyInvalidArgument(() => check.hostRecord({ ...record(), [f]: v }, 0));
      }),
      { numRuns: 500 },
    );
  });
});
