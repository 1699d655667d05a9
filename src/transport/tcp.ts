import type { Socket } from 'node:net';
import { BaseTransport } from '../session/index.js';

/** A TCP or TLS socket as a roam Transport. */
export class TcpTransport extends BaseTransport {
  readonly kind: string;
  readonly remoteAddress: string | undefined;
  private killTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly socket: Socket,
    kind = 'tcp',
  ) {
    super();
    this.kind = kind;
    this.remoteAddress = socket.remoteAddress;
    socket.setNoDelay(true);
    socket.on('data', (b: Buffer) => this.deliver(new Uint8Array(b.buffer, b.byteOffset, b.byteLength)));
    socket.on('close', () => {
      if (this.killTimer) clearTimeout(this.killTimer);
      this.closed();
    });
    socket.on('error', (err) => this.closed(err));
  }

  get bufferedAmount(): number {
    return this.socket.writableLength;
  }

  send(bytes: Uint8Array): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(bytes);
  }

  close(): void {
    if (this.isClosed) return;
    this.closed();
    this.socket.end();
    // end() waits for the peer's FIN, which a dead peer never sends.
    this.killTimer = setTimeout(() => this.socket.destroy(), 2000);
    this.killTimer.unref();
  }

  abort(): void {
    if (this.isClosed) return;
    this.closed();
    this.socket.destroy();
  }
}
