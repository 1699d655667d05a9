import { defineService } from '../../../src/service/index.js';
import v1 from './counter.js';

/** The counter with a breaking change: its continuations are not compatible with v1's. */
export default defineService({ ...v1, version: '2.0.0', compat: ['counter/2'] });
