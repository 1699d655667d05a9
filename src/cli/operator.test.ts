import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { MigrationRecord } from '../transport/cluster.js';
import { migrationSummary } from './operator.js';

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
});
