import { defineService } from '../../../src/service/index.js';

/** Keys are lower-case words; anything else is refused (the service's `key` rule throws). */
export default defineService({
  name: 'picky',
  version: '1.0.0',
  key(k) {
    if (k === undefined || !/^[a-z]+$/.test(k)) throw new Error('keys are lower-case words');
    return k;
  },
  message(_ctx, session, data) {
    session.send(data);
  },
});
