/**
 * A TCP proxy on loopback that tests put between a client and a real server to cut the network:
 * `cutAll()` destroys every open connection (both sides see it drop, as on a network failure),
 * `pause()` makes new connections fail at once until `resume()`.
 */
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';

/** A one-shot trap set by `cutAfterClientSends`. */
interface Trap {
  readonly pattern: Buffer;
  readonly sprung: (serverSidePort: number) => void;
}

export class TcpProxy {
  private readonly connections = new Set<Socket>();
  private paused = false;
  private trap: Trap | undefined;
  /** Connections dropped at once because the proxy was paused. */
  refused = 0;

  private constructor(
    private readonly server: Server,
    /** The port the proxy listens on, on 127.0.0.1. */
    readonly port: number,
  ) {}

  /** Starts a proxy to `target` (`host:port`, or a URL whose host and port are used). */
  static async start(target: string): Promise<TcpProxy> {
    const { hostname, port } = new URL(target.includes('://') ? target : `tcp://${target}`);
    if (!port) throw new Error(`tcp proxy: the target ${target} names no port`);
    const upstream = { host: hostname, port: Number(port) };
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const proxy = new TcpProxy(server, (server.address() as AddressInfo).port);
    server.on('connection', (client) => proxy.accept(client, upstream));
    return proxy;
  }

  /** `url` with its host and port replaced by the proxy's. */
  urlFor(url: string): string {
    const proxied = new URL(url);
    proxied.hostname = '127.0.0.1';
    proxied.port = String(this.port);
    return proxied.toString();
  }

  /** Open connections (each counts once, client and server side together). */
  get openConnections(): number {
    return this.connections.size / 2;
  }

  /** Drops every open connection. */
  cutAll(): void {
    for (const socket of this.connections) socket.destroy();
    this.connections.clear();
  }

  /** New connections are accepted and dropped at once, until `resume()`. */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
  }

  /**
   * The next time a client sends bytes containing `pattern`, they are forwarded to the server and
   * then that connection is cut so that the client never hears back: the client's side is destroyed
   * at once, the server's side is ended after the bytes are written (the server reads them, then
   * end-of-file), and what the server answers is discarded. For example a PostgreSQL COMMIT that
   * reaches the server while the client sees its connection lost. Resolves with the local port of
   * the proxy's connection to the server: the server's name for that client (pg_stat_activity's
   * `client_port`).
   */
  cutAfterClientSends(pattern: Buffer): Promise<number> {
    return new Promise((resolve) => {
      this.trap = { pattern, sprung: resolve };
    });
  }

  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket, upstream: { host: string; port: number }): void {
    if (this.paused) {
      this.refused++;
      client.destroy();
      return;
    }
    const server = connect(upstream);
    let trapped = false;
    for (const [socket, other] of [
      [client, server],
      [server, client],
    ] as const) {
      this.connections.add(socket);
      socket.on('error', () => other.destroy());
      socket.on('close', () => {
        this.connections.delete(socket);
        // A trapped connection's server side closes on its own, once it has read everything.
        if (!(trapped && socket === client)) other.destroy();
      });
    }
    client.pipe(server);
    server.pipe(client);
    // Registered after pipe(), so it runs once the chunk has been written to the server.
    client.on('data', (chunk: Buffer) => {
      const trap = this.trap;
      if (!trap || !chunk.includes(trap.pattern)) return;
      this.trap = undefined;
      trapped = true;
      client.unpipe(server);
      server.unpipe(client);
      server.resume(); // read and drop the server's answer
      server.end();
      client.destroy();
      trap.sprung(server.localPort ?? 0);
    });
  }
}
