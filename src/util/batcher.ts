/**
 * Collects single requests made in the same turn of the event loop and runs them as one batch:
 * many HTTP requests become one transaction and one fsync (group commit), many claims one UPDATE.
 *
 * Batches run one at a time (or `maxInFlight` at a time); requests that arrive while a batch runs
 * form the next one. So under load the batch grows by itself, and when idle a lone request waits
 * only until the next tick.
 * A group of items (`addAll`) always runs in one batch: a batch takes whole groups up to `maxBatch`
 * items, and a group larger than that runs alone.
 */
export class Batcher<In, Out> {
  private pending: { items: In[]; resolve: (out: Out[]) => void; reject: (error: unknown) => void }[] = [];
  private pendingItems = 0;
  /** Batches being flushed now. */
  private running = 0;
  private scheduled = false;

  constructor(
    private readonly flush: (items: In[]) => Promise<Out[]>,
    private readonly maxBatch: number,
    /**
     * Batches flushed at once. 1 (the default) suits a store with one writer (SQLite); a server
     * database can take 2, so that a batch stuck on a slow or uncertain commit does not hold every
     * request behind it.
     */
    private readonly maxInFlight = 1,
    /**
     * A flush still running after this long stops holding its slot (it goes on, and its requests
     * still get its result), so that one stuck flush — a commit whose outcome is being checked after
     * a lost connection — cannot hold every request behind it. Unset: a slot is held to the end.
     */
    private readonly releaseSlotAfterMs?: number,
  ) {}

  async add(item: In): Promise<Out> {
    const [out] = await this.addAll([item]);
    return out as Out;
  }

  /** Runs `items` together in one batch (with whatever else joins it); results in their order. */
  addAll(items: readonly In[]): Promise<Out[]> {
    if (items.length === 0) return Promise.resolve([]);
    return new Promise<Out[]>((resolve, reject) => {
      this.pending.push({ items: [...items], resolve, reject });
      this.pendingItems += items.length;
      this.schedule();
    });
  }

  /** Requests waiting for the next batch. */
  get size(): number {
    return this.pendingItems;
  }

  private schedule(): void {
    if (this.running >= this.maxInFlight || this.scheduled) return;
    this.scheduled = true;
    // setImmediate, not queueMicrotask: lets every request parsed in this I/O phase join the batch.
    setImmediate(() => {
      this.scheduled = false;
      void this.runBatch();
    });
  }

  private takeGroups() {
    let count = 0;
    let groups = 0;
    while (groups < this.pending.length) {
      const next = this.pending[groups]!.items.length;
      if (groups > 0 && count + next > this.maxBatch) break;
      count += next;
      groups++;
    }
    this.pendingItems -= count;
    return this.pending.splice(0, groups);
  }

  private async runBatch(): Promise<void> {
    if (this.running >= this.maxInFlight || this.pending.length === 0) return;
    this.running++;
    let holding = true;
    const releaseSlot = () => {
      if (!holding) return;
      holding = false;
      this.running--;
      if (this.pending.length > 0) this.schedule();
    };
    const stalled =
      this.releaseSlotAfterMs === undefined ? undefined : setTimeout(releaseSlot, this.releaseSlotAfterMs);
    const batch = this.takeGroups();
    try {
      const results = await this.flush(batch.flatMap((entry) => entry.items));
      let offset = 0;
      for (const entry of batch) {
        entry.resolve(results.slice(offset, offset + entry.items.length));
        offset += entry.items.length;
      }
    } catch (error) {
      for (const entry of batch) entry.reject(error);
    } finally {
      clearTimeout(stalled);
      releaseSlot();
    }
  }
}
