/**
 * A minimal typed event emitter that runs in browsers (no node:events). A listener that throws
 * is isolated: the error goes to the `onListenerError` hook instead of breaking the emitter.
 */
export class Emitter<Events extends Record<string, unknown[]>> {
  private listeners: { [K in keyof Events]?: Array<(...args: Events[K]) => void> } = {};

  on<K extends keyof Events>(event: K, fn: (...args: Events[K]) => void): this {
    const list = this.listeners[event] ?? [];
    list.push(fn);
    this.listeners[event] = list;
    return this;
  }

  once<K extends keyof Events>(event: K, fn: (...args: Events[K]) => void): this {
    const wrapped = (...args: Events[K]): void => {
      this.off(event, wrapped);
      fn(...args);
    };
    return this.on(event, wrapped);
  }

  off<K extends keyof Events>(event: K, fn: (...args: Events[K]) => void): this {
    const list = this.listeners[event];
    if (list) {
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    }
    return this;
  }

  listenerCount<K extends keyof Events>(event: K): number {
    return this.listeners[event]?.length ?? 0;
  }

  protected emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    const list = this.listeners[event];
    if (!list || list.length === 0) return;
    for (const fn of list.length === 1 ? list : list.slice()) {
      try {
        fn(...args);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }

  protected onListenerError(err: unknown): void {
    queueMicrotask(() => {
      throw err;
    });
  }
}
