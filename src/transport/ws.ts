import type { IncomingMessage } from 'node:http';
import { WebSocket } from 'ws';
import { BaseTransport } from '../session/index.js';

/** A `ws` WebSocket (either side) as a roam Transport. Binary messages only. */
/**
 * `generateMask` for ws clients of ours: an all-zero key. The MASK bit stays set, as RFC 6455
 * requires, but ws then skips drawing random bytes for each frame and the XOR of every payload
 * byte at both ends. Masking (RFC 6455 §10.3) keeps bytes chosen by a script in a browser from
 * poisoning caching proxies on the way; our Node clients and member-to-member links carry bytes
 * chosen by the program that trusts the path, and browsers use their own WebSocket, which always
 * masks.
 */
export function zeroMask(mask: Buffer): void {
  mask.fill(0);
}

export class WsTransport extends BaseTransport {
  readonly kind = 'ws';
  private killTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ws: WebSocket,
    readonly remoteAddress: string | undefined,
  ) {
    super();
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        this.closed(new Error('text WebSocket message on a binary protocol'));
        ws.terminate();
        return;
      }
      this.deliver(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    });
    ws.on('close', () => {
      if (this.killTimer) clearTimeout(this.killTimer);
      this.closed();
    });
    ws.on('error', (err) => this.closed(err));
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  send(bytes: Uint8Array): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  close(): void {
    if (this.isClosed) return;
    this.closed();
    if (this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.terminate();
      return;
    }
    this.ws.close(1000);
    // A dead peer never answers the closing handshake; don't hold the socket for ws' 30 s default.
    this.killTimer = setTimeout(() => this.ws.terminate(), 2000);
    this.killTimer.unref();
  }

  /** The socket ends with no close frames: `ws` parses, answers and ends nothing more for it. */
  abort(): void {
    if (this.isClosed) return;
    this.closed();
    this.ws.terminate();
  }
}

export function remoteOf(req: IncomingMessage): string | undefined {
  return req.socket.remoteAddress;
}
