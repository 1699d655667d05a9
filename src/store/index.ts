export * from './sqlite.js';
export * from './store.js';
export * from './watch.js';
