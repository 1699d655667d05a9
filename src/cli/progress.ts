import { SingleBar } from 'cli-progress';

/**
 * Progress bars for `roam migrate` and `roam drain`, drawn on stderr with cli-progress — only on a
 * terminal, never with `--json`: piped output stays one clean document.
 *
 * @module
 */

/** Whether to draw a bar: stderr is a terminal and the output is not JSON. */
export function showProgress(json: boolean | undefined, stream: { isTTY?: boolean } = process.stderr): boolean {
  return !json && stream.isTTY === true;
}

export interface Bar {
  update(value: number, total: number, text: string): void;
  stop(): void;
}

const noBar: Bar = { update() {}, stop() {} };

/** A bar `label [████░░░░] value/total text`, or a no-op when `enabled` is false. */
export function progressBar(label: string, enabled: boolean): Bar {
  if (!enabled) return noBar;
  const bar = new SingleBar({
    format: `${label} [{bar}] {value}/{total} {text}`,
    barCompleteChar: '\u2588',
    barIncompleteChar: '\u2591',
    hideCursor: true,
    clearOnComplete: true,
    stream: process.stderr,
    // Redraw on every update (events are sparse) and not on a timer of its own.
    fps: 20,
    etaBuffer: 1,
  });
  let started = false;
  return {
    update(value, total, text) {
      if (!started) {
        bar.start(Math.max(1, total), value, { text });
        started = true;
        return;
      }
      bar.setTotal(Math.max(1, total));
      bar.update(value, { text });
    },
    stop() {
      if (started) bar.stop();
      started = false;
    },
  };
}

/**
 * What a `migration.progress` event says, for a person: `negotiate`, `precopy round 2`,
 * `freeze`, `commit`, plus the estimate of time remaining when the host gave one.
 */
export function phaseText(ev: { phase: string; round?: number; etaMs?: number }): string {
  const phase = ev.phase === 'precopy' && ev.round !== undefined ? `precopy round ${ev.round}` : ev.phase;
  return ev.etaMs === undefined ? phase : `${phase}, ~${Math.round(ev.etaMs)} ms left`;
}

/** Where a phase puts the migration bar, out of 100. */
export function phaseValue(ev: { phase: string; round?: number }): number {
  switch (ev.phase) {
    case 'negotiate':
      return 10;
    case 'precopy':
      // Rounds shrink geometrically: each one covers half of what is left.
      return Math.round(20 + 60 * (1 - 0.5 ** ((ev.round ?? 0) + 1)));
    case 'freeze':
      return 85;
    case 'commit':
      return 95;
    default:
      return 50;
  }
}
