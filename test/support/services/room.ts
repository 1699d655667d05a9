import { defineService } from '../../../src/service/index.js';

/** A keyed instance (a chat room): shared history in instance state, a nickname per session. */
export default defineService({
  name: 'room',
  version: '1.0.0',
  idleMs: 200,
  open(ctx, session) {
    session.state.set('nick', `guest-${ctx.sessions().length}`);
  },
  message(ctx, session, data) {
    const text = new TextDecoder().decode(data);
    if (text.startsWith('/nick ')) {
      session.state.set('nick', text.slice(6));
      session.export('nick');
      return;
    }
    if (text.startsWith('/depends ')) {
      session.dependsOn(text.slice(9));
      return;
    }
    const line = `${session.state.get<string>('nick')}: ${text}`;
    const history = ctx.state.get<string[]>('history') ?? [];
    history.push(line);
    ctx.state.set('history', history);
    ctx.broadcast(line);
  },
  resume(ctx, session, how) {
    session.send(
      `${how} as ${session.state.get<string>('nick')}; ${(ctx.state.get<string[]>('history') ?? []).length} lines`,
      1,
    );
  },
});
