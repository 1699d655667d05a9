export { builtinServices, counterService, echoService } from './builtin.js';
export type { HostOptions, ServiceModule } from './host.js';
export { Host } from './host.js';
export type { Logger } from './logger.js';
export { createLogger, silentLogger } from './logger.js';
export { HostMetrics, type HostMetricsOptions } from './metrics.js';
export type { IncomingMigration } from './migration.js';
export type { SessionHandler, SessionServerOptions } from './server.js';
export { ServerSession, SessionServer } from './server.js';
