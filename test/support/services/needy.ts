import { defineService } from '../../../src/service/index.js';

/** A service with hosting requirements: a heap limit and a label. */
export default defineService({
  name: 'needy',
  version: '1.0.0',
  requires: { memoryMb: 64, labels: { region: 'eu' } },
  message(_ctx, session, data) {
    session.send(data);
  },
});
