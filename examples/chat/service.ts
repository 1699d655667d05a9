import { defineService, type InstanceContext, type ServiceSession } from '../../src/service/index.js';

/**
 * Chat rooms: one keyed instance per room (`connect(url, { service: 'chat', key: 'lobby' })`).
 *
 * - Instance state (shared by the room's members): `lines`, the last {@link HISTORY} lines, and
 *   `seq`, the number of the newest line ever written. Both are bounded whatever the traffic.
 * - Session state (per member): `nick` (exported, so the client learns it back on resume) and,
 *   while the member is suspended, `seen` — the last line it was sent.
 *
 * A member whose client is away past the host's grace period is suspended to the Store on its
 * own; the room keeps running for the others. When it comes back (`resume` with `restored`) it
 * is sent the lines written while it was away.
 *
 * Channels to the client: 0 = live lines `nick: text`, 1 = notices, 2 = history (on join, and
 * missed lines on restore). Commands from the client: `/nick name`, `/who`; anything else is a line.
 */
export const HISTORY = 100;
/** Lines sent to a member that joins. */
export const JOIN_HISTORY = 20;
export const MAX_LINE = 1000;
const NICK = /^[\p{L}\p{N}_.-]{1,32}$/u;

const CH = { live: 0, notice: 1, history: 2 } as const;

const nickOf = (s: ServiceSession): string => s.state.get<string>('nick') ?? '?';
const lines = (ctx: InstanceContext): string[] => ctx.state.get<string[]>('lines') ?? [];
const seq = (ctx: InstanceContext): number => ctx.state.get<number>('seq') ?? 0;

/** Sends the kept lines numbered after `after`, and says how many more were not kept. */
function sendSince(ctx: InstanceContext, session: ServiceSession, after: number, max: number): number {
  const kept = lines(ctx);
  const newest = seq(ctx);
  const firstKept = newest - kept.length + 1;
  const from = Math.max(after + 1, firstKept, newest - max + 1);
  if (from > after + 1) session.send(`(${from - after - 1} earlier lines not shown)`, CH.notice);
  for (let n = from; n <= newest; n++) session.send(kept[n - firstKept] as string, CH.history);
  return newest - from + 1;
}

export default defineService({
  name: 'chat',
  version: '1.0.0',
  compat: ['example-chat/1'],
  // Room names: trimmed, lower-cased, 1..64 chars.
  key(key) {
    const k = (key ?? 'lobby').trim().toLowerCase();
    if (k.length === 0 || k.length > 64) throw new Error('room names are 1..64 characters');
    return k;
  },
  // A room with nobody attached is suspended to the Store after a minute.
  idleMs: 60_000,

  open(ctx, session) {
    const guest = (ctx.state.get<number>('guests') ?? 0) + 1;
    ctx.state.set('guests', guest);
    session.state.set('nick', `guest-${guest}`);
    session.export('nick');
    session.send(`welcome to #${ctx.key}, you are guest-${guest}`, CH.notice);
    sendSince(ctx, session, 0, JOIN_HISTORY);
    ctx.broadcast(`* guest-${guest} joined`, { channel: CH.notice, except: session });
  },

  message(ctx, session, data) {
    const text = new TextDecoder().decode(data).replace(/[\r\n]+$/, '');
    if (text.startsWith('/nick ')) {
      const nick = text.slice(6).trim();
      if (!NICK.test(nick)) {
        session.send('nicknames are 1..32 letters, digits, _ . -', CH.notice);
        return;
      }
      const old = nickOf(session);
      session.state.set('nick', nick);
      session.send(`you are now ${nick}`, CH.notice);
      ctx.broadcast(`* ${old} is now ${nick}`, { channel: CH.notice, except: session });
      return;
    }
    if (text === '/who') {
      session.send(`here: ${ctx.sessions().map(nickOf).join(', ')}`, CH.notice);
      return;
    }
    if (text.startsWith('/')) {
      session.send(`unknown command ${text.split(' ')[0]} (/nick name, /who)`, CH.notice);
      return;
    }
    if (text.length === 0) return;
    if (text.length > MAX_LINE) {
      session.send(`line too long (${text.length} > ${MAX_LINE} characters)`, CH.notice);
      return;
    }
    const line = `${nickOf(session)}: ${text}`;
    const kept = [...lines(ctx), line];
    if (kept.length > HISTORY) kept.splice(0, kept.length - HISTORY);
    ctx.state.set('lines', kept);
    ctx.state.set('seq', seq(ctx) + 1);
    ctx.broadcast(line, { channel: CH.live, except: session });
  },

  suspend(ctx, session) {
    // Everything up to here was sent to this member (or written by it); the rest it will miss.
    session.state.set('seen', seq(ctx));
    ctx.broadcast(`* ${nickOf(session)} is away`, { channel: CH.notice, except: session });
  },

  resume(ctx, session, how) {
    if (how === 'reconnected') return; // nothing was missed: the transport replays what was in flight
    const missed = sendSince(ctx, session, session.state.get<number>('seen') ?? seq(ctx), HISTORY);
    session.state.delete('seen');
    session.send(`${how} as ${nickOf(session)}; ${missed} missed lines`, CH.notice);
    ctx.broadcast(`* ${nickOf(session)} is back`, { channel: CH.notice, except: session });
  },

  close(ctx, session) {
    ctx.broadcast(`* ${nickOf(session)} left`, { channel: CH.notice, except: session });
  },
});
