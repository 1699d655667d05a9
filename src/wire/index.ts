export * from './codes.js';
export * from './decoder.js';
export * from './errors.js';
export * from './frame.js';
