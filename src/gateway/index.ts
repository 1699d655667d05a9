/**
 * roam/gateway — a stable client endpoint that splices each client to the host holding its
 * session and re-splices on a migration without the client reconnecting. See docs/gateway.md.
 */

export { keyedInstanceId } from '../transport/cluster.js';
export type { GatewayCounters, GatewayOptions } from './gateway.js';
export { Gateway, SPLICE_PATH } from './gateway.js';
export type { GatewayHost, GatewayLogger } from './hosts.js';
