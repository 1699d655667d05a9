/**
 * Test helpers shared by the examples' tests: wait for a condition on what a client received, or
 * for the host to suspend a session — without sleeping, and failing with a clear message instead
 * of hanging when the session ends or the wait takes too long.
 */
import type { Session } from '../src/client/node.js';
import type { Host } from '../src/host/index.js';

/** Resolves when `host` has put `sid`'s continuation in the Store. */
export function suspendedOn(host: Host, sid: string, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      host.off('suspended', fn);
      reject(new Error(`host did not suspend session ${sid} within ${timeoutMs} ms`));
    }, timeoutMs);
    const fn = (e: { session: string }): void => {
      if (e.session === sid) {
        clearTimeout(timer);
        host.off('suspended', fn);
        resolve();
      }
    };
    host.on('suspended', fn);
  });
}

/**
 * Lets a test wait until a condition over received data holds. Call {@link Waiter.poke} after
 * recording anything; {@link Waiter.watch} also pokes on every message and fails waits once the
 * session is lost or closed.
 */
export class Waiter {
  private waiters: Array<() => void> = [];
  private ended: Error | undefined;

  /** `context` describes what was received, for failure messages. */
  constructor(private readonly context: () => string = () => '') {}

  watch(s: Session): this {
    s.on('lost', (e) => this.end(new Error(`session lost: ${e.code} ${e.message}`)));
    s.on('closed', (e) => this.end(new Error(`session closed: ${e.code} ${e.reason}`)));
    return this;
  }

  poke(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  async until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (this.ended) throw new Error(`${this.ended.message} while waiting for ${what}; ${this.context()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; ${this.context()}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  private end(err: Error): void {
    this.ended ??= err;
    this.poke();
  }
}
