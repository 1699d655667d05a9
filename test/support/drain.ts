import { connect, type Session } from '../../src/client/node.js';
import { readEvents } from '../../src/directory/index.js';
import type { DrainStatus } from '../../src/transport/cluster.js';
import type { Cluster } from './cluster.js';
import { type StreamClient, streamClient } from './stream-client.js';

/**
 * Opens `n` stream sessions on `url`, `concurrency` handshakes at a time. If a batch fails, the
 * error carries `diagnose()` (what the cluster's processes were doing then).
 */
export async function openMany(
  url: string,
  n: number,
  opts: { concurrency?: number; diagnose?: () => string } = {},
): Promise<StreamClient[]> {
  const concurrency = opts.concurrency ?? 50;
  const out: StreamClient[] = [];
  for (let i = 0; i < n; i += concurrency) {
    const batch = Array.from({ length: Math.min(concurrency, n - i) }, () =>
      streamClient(connect(url, { service: 'stream', reconnect: { initialDelayMs: 5, maxDelayMs: 200 } })),
    );
    out.push(...batch);
    try {
      await Promise.all(batch.map((c) => c.session.ready));
    } catch (err) {
      // The caller never gets these to close: sessions left reconnecting would keep the test
      // process alive after the failure, and the runner would report a timeout instead of it.
      const state = opts.diagnose?.();
      for (const c of out) c.session.close();
      if (state === undefined) throw err;
      throw new Error(`${(err as Error).message}\nprocess states at the failure:\n${state}`, { cause: err });
    }
  }
  return out;
}

/** Waits for a drain event of `host` that is over, from the directory's live stream. */
export async function drainOver(cluster: Cluster, host: string, signal: AbortSignal): Promise<DrainStatus> {
  for (;;) {
    try {
      for await (const ev of readEvents(cluster.directory.url, {
        secret: cluster.secretBytes,
        types: ['drain'],
        signal,
      })) {
        if (ev.type === 'drain' && ev.drain.host === host && ev.drain.state !== 'running') return ev.drain;
      }
    } catch (err) {
      // The directory restarted under us: read the stream of the new one.
      if (signal.aborted) throw err;
    }
    // The stream ended (directory restarted): the drain may have ended meanwhile.
    const { drains } = await cluster.api<{ drains: DrainStatus[] }>('/api/drains').catch(() => ({ drains: [] }));
    const d = drains.find((x) => x.host === host && x.state !== 'running');
    if (d) return d;
  }
}

export async function echoAll(clients: StreamClient[]): Promise<void> {
  for (const c of clients) c.sendNext();
  await Promise.all(clients.map((c) => c.untilEchoed()));
}

export function closeAll(sessions: Session[]): void {
  for (const s of sessions) s.close();
}
