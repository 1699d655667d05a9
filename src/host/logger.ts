import { pino } from 'pino';

/** The structured logger every factory receives (pino's interface, or anything shaped like it). */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

/** A JSON logger to stderr; level from ROAM_LOG_LEVEL, default `warn`. */
export function createLogger(name: string, level = process.env.ROAM_LOG_LEVEL ?? 'warn'): Logger {
  return pino({ name, level }, pino.destination(2));
}

/** A logger that drops everything. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
