/**
 * How late live status is: an SSE client on the API follows every event while the latency step
 * runs, and for each records its arrival minus the transition's own timestamp (`timestamp`, taken
 * by the process that made the transition just before its commit). That is an upper bound of
 * "commit → client": it includes the commit itself. All processes share this machine's clock.
 */
import { get, type IncomingMessage } from 'node:http';

export interface LiveLagProbe {
  /** Stops following; the lags seen, in ms. */
  stop(): number[];
}

export async function followLiveLag(emailsUrl: string): Promise<LiveLagProbe> {
  const url = emailsUrl.replace(/\/v1\/emails$/, '/v1/events?tag=bench');
  const lags: number[] = [];
  let buffer = '';
  const response = await new Promise<IncomingMessage>((resolve, reject) =>
    get(url, { headers: { accept: 'text/event-stream' } }, resolve).on('error', reject),
  );
  if (response.statusCode !== 200) throw new Error(`GET /v1/events answered ${response.statusCode}`);
  response.setEncoding('utf8');
  response.on('data', (chunk: string) => {
    const arrived = Date.now();
    buffer += chunk;
    for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
      const data = /^data: (.*)$/m.exec(buffer.slice(0, end))?.[1];
      buffer = buffer.slice(end + 2);
      if (data) lags.push(arrived - Date.parse((JSON.parse(data) as { timestamp: string }).timestamp));
    }
  });
  response.on('error', () => {});
  return {
    stop: () => {
      response.destroy();
      return lags;
    },
  };
}
