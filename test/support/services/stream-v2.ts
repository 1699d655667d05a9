import { defineService } from '../../../src/service/index.js';
import stream from './stream.js';

/** `stream` at another version whose compat tags differ: its continuations cannot mix with v1's. */
export default defineService({ ...stream, version: '2.0.0', compat: ['stream/2'] });
