import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DrainStatus, MigrationRecord } from '../transport/cluster.js';
import { drainSummary, frozenOf, migrationSummary } from './operator.js';

const record: MigrationRecord = {
  id: 'm1',
  instances: ['stream/abc'],
  service: 'stream',
  from: 'a'.repeat(32),
  to: 'b'.repeat(32),
  reason: 'operator',
  outcome: 'committed',
  startedAt: 1000,
  endedAt: 1040,
  sessions: 1,
  stateBytes: 4096,
  bytesSent: 4200,
  rounds: [{ bytes: 4096, keys: 4, ms: 3 }],
  finalDirtyBytes: 1024,
  throttleSteps: 0,
  phases: { negotiateMs: 2, precopyMs: 30, freezeMs: 4, commitMs: 3 },
  epoch: 1,
};

describe('roam migrate summary', () => {
  it('shows the downtime next to the freeze when the destination reported its steps', () => {
    const steps = { workerMs: 0.5, sendMs: 0.1, waitMs: 3.4, servingMs: 1.2, destinationMs: 1.3, downtimeMs: 2.85 };
    const text = migrationSummary({ ...record, phases: { ...record.phases, freezeSteps: steps } });
    assert.match(text, /NEGOTIATE +PRECOPY +FREEZE +DOWNTIME +COMMIT/);
    assert.match(text, /4 ms +2\.9 ms/);
  });

  it('leaves the downtime out when nobody measured it', () => {
    const text = migrationSummary(record);
    assert.match(text, /NEGOTIATE +PRECOPY +FREEZE +COMMIT/);
    assert.doesNotMatch(text, /DOWNTIME/);
  });

  it('says the client gap is a lower bound when clients were late for it', () => {
    const late = migrationSummary({ ...record, phases: { ...record.phases, clientGapMs: 10_000, clientsLate: 2 } });
    assert.match(late, /CLIENT GAP/);
    assert.match(late, />= 10000 ms/);
    assert.match(late, /late +2 clients had not resumed/);
    const onTime = migrationSummary({ ...record, phases: { ...record.phases, clientGapMs: 7 } });
    assert.doesNotMatch(onTime, />=|late/);
  });
});

describe('roam drain summary', () => {
  const batch = (id: string, downtimeMs: number | undefined, outcome: MigrationRecord['outcome'] = 'committed') => {
    const freezeSteps = downtimeMs === undefined ? undefined : { workerMs: 1, sendMs: 0, waitMs: 2, downtimeMs };
    return { ...record, id, outcome, phases: { ...record.phases, ...(freezeSteps ? { freezeSteps } : {}) } };
  };
  const status: DrainStatus = {
    id: 'd1',
    host: 'a'.repeat(32),
    state: 'done',
    startedAt: 0,
    endedAt: 2000,
    total: 3,
    moved: 3,
    failed: 0,
    suspended: 0,
  };

  it('says how long each session was frozen, over the committed batches that measured it', () => {
    const frozen = frozenOf([batch('m1', 40), batch('m2', 12), batch('m3', 250, 'aborted'), batch('m4', undefined)]);
    assert.deepEqual(frozen, { batches: 2, p50Ms: 12, maxMs: 40 });
    const text = drainSummary(status, [], 0, frozen);
    assert.match(text, /each session frozen while its batch moved: p50 12 ms, max 40 ms \(2 batches\)/);
  });

  it('leaves the line out when no batch measured it', () => {
    assert.equal(frozenOf([batch('m4', undefined)]), undefined);
    assert.doesNotMatch(drainSummary(status, [], 0, undefined), /frozen/);
  });
});
