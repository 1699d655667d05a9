export * from './clock.js';
export * from './connection.js';
export * from './crypto.js';
export * from './emitter.js';
export * from './engine.js';
export * from './events.js';
export * from './handshake.js';
export * from './transport.js';
