import { BaseTransport, type Transport } from '../session/index.js';
import { RoamError } from '../wire/index.js';

/**
 * Transport over the platform's WebSocket (browsers, Deno, Node >= 22). Binary messages only;
 * frames may span or share messages, the decoder does not care.
 */
export class PlatformWebSocketTransport extends BaseTransport {
  readonly kind = 'ws';
  readonly remoteAddress: string | undefined;

  constructor(private readonly socket: WebSocket) {
    super();
    this.remoteAddress = socket.url;
    socket.binaryType = 'arraybuffer';
    socket.addEventListener('message', (ev) => {
      if (ev.data instanceof ArrayBuffer) this.deliver(new Uint8Array(ev.data));
      else this.closeWith(new Error('text WebSocket message on a binary protocol'));
    });
    socket.addEventListener('close', () => this.closed());
    socket.addEventListener('error', () => this.closed(new Error('WebSocket error')));
  }

  get bufferedAmount(): number {
    return this.socket.bufferedAmount;
  }

  send(bytes: Uint8Array): void {
    if (this.socket.readyState === 1) this.socket.send(bytes as Uint8Array<ArrayBuffer>);
  }

  close(): void {
    this.closed();
    try {
      this.socket.close(1000);
    } catch {
      // Already closing: nothing left to do.
    }
  }

  private closeWith(err: Error): void {
    this.closed(err);
    this.socket.close(1002);
  }
}

/** Opens a platform WebSocket and resolves once it is open. */
export function connectPlatformWebSocket(url: string): Promise<Transport> {
  const WS = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
  if (!WS) {
    return Promise.reject(
      new RoamError('INVALID_ARGUMENT', 'no global WebSocket here: pass a connector, or import roam/client under Node'),
    );
  }
  return new Promise<Transport>((resolve, reject) => {
    const socket = new WS(url);
    const onOpen = (): void => {
      socket.removeEventListener('error', onError);
      resolve(new PlatformWebSocketTransport(socket));
    };
    const onError = (): void => {
      socket.removeEventListener('open', onOpen);
      reject(new RoamError('TRANSPORT_CLOSED', `could not open WebSocket to ${url}`));
    };
    socket.addEventListener('open', onOpen, { once: true });
    socket.addEventListener('error', onError, { once: true });
  });
}
