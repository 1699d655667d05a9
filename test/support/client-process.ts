/** A client in its own process: prints each lifecycle event as a JSON line. argv: <url> <service> */
import { connect } from '../../src/client/node.js';

const [url, service] = process.argv.slice(2) as [string, string];
const s = connect(url, { service, reconnect: { initialDelayMs: 20, maxDelayMs: 100 } });
s.on('event', (e) => process.stdout.write(`${JSON.stringify(e)}\n`));
