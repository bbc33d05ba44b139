import { connect } from 'node:net';

/**
 * nodemailer's `getSocket` hook: opens the TCP connection with Nagle's algorithm off.
 *
 * nodemailer writes a command and then waits for the reply; with Nagle on, the last small write of a
 * message waits for the server's delayed ACK (~40 ms on Linux), which caps one connection at about
 * 20 messages a second. nodemailer never sets noDelay itself, so the socket is made here and handed
 * over as an open `connection`; nodemailer still does TLS (smtps, STARTTLS) on top of it.
 * Writes made in the same tick are coalesced (see coalesceWrites).
 */
export function connectNoDelay(
  options: { host?: string; port?: number; connectionTimeout?: number },
  callback: (error: Error | null, socketOptions?: { connection?: import('node:net').Socket }) => void,
): void {
  const socket = connect({ host: options.host, port: options.port ?? 25, noDelay: true });
  coalesceWrites(socket);
  let done = false;
  const finish = (error: Error | null) => {
    if (done) return;
    done = true;
    socket.setTimeout(0);
    socket.removeListener('error', finish);
    if (error) {
      socket.destroy();
      // Not callback(error): nodemailer's pool (7.0) then neither removes nor frees the connection
      // slot, so after `pool` failed connects every later send waits forever. Handing back no socket
      // makes nodemailer connect by itself, and a failure there is reported and cleaned up properly.
      callback(null, {});
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

/**
 * With Nagle off, every write is its own packet and its own system call, and on loopback the
 * sender's call also pays for the receiver's TCP work. nodemailer writes a message's body and the
 * closing dot separately in the same turn of the event loop; corking until the end of the tick
 * sends them as one, without delaying anything past the current tick (strace: ~1 call per message
 * fewer). Under TLS, tls.TLSSocket writes to the handle directly and this does nothing.
 */
function coalesceWrites(socket: import('node:net').Socket): void {
  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  let corked = false;
  const uncork = () => {
    corked = false;
    socket.uncork();
  };
  socket.write = ((...args: unknown[]) => {
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    return write(...args);
  }) as typeof socket.write;
}
