import { connect } from 'node:net';

/**
 * nodemailer's `getSocket` hook: opens the TCP connection with Nagle's algorithm off.
 *
 * nodemailer writes a command and then waits for the reply; with Nagle on, the last small write of a
 * message waits for the server's delayed ACK (~40 ms on Linux), which caps one connection at about
 * 20 messages a second. nodemailer never sets noDelay itself, so the socket is made here and handed
 * over as an open `connection`; nodemailer still does TLS (smtps, STARTTLS) on top of it.
 */
export function connectNoDelay(
  options: { host?: string; port?: number; connectionTimeout?: number },
  callback: (error: Error | null, socketOptions?: { connection: import('node:net').Socket }) => void,
): void {
  const socket = connect({ host: options.host, port: options.port ?? 25, noDelay: true });
  let done = false;
  const finish = (error: Error | null) => {
    if (done) return;
    done = true;
    socket.setTimeout(0);
    socket.removeListener('error', finish);
    if (error) {
      socket.destroy();
      callback(Object.assign(error, { code: (error as NodeJS.ErrnoException).code ?? 'ECONNECTION' }));
    } else {
      callback(null, { connection: socket });
    }
  };
  socket.once('connect', () => finish(null));
  socket.once('error', finish);
  socket.setTimeout(options.connectionTimeout ?? 60_000, () =>
    finish(Object.assign(new Error('Connection timeout'), { code: 'ETIMEDOUT' })),
  );
}
