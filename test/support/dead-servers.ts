/**
 * Servers that are not there, for tests of how an adapter fails: a port nothing listens on (connection
 * refused at once) and one that accepts connections and never says a word (a hung server).
 */
import { createServer, type Socket } from 'node:net';

/** A port on loopback where nothing listens. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface SilentServer {
  readonly port: number;
  /** `scheme://127.0.0.1:port`. */
  url(scheme: string): string;
  /** Drops every connection and stops listening. */
  stop(): Promise<void>;
}

/** A TCP server on loopback that accepts connections and never answers: a hung server, a black hole. */
export async function silentServer(): Promise<SilentServer> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    port,
    url: (scheme) => `${scheme}://127.0.0.1:${port}`,
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
