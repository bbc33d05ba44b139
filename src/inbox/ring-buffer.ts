/** A fixed-capacity buffer that drops its oldest item when full. O(1) push, O(limit) reads. */
export class RingBuffer<T> {
  private readonly slots: (T | undefined)[];
  private head = 0;
  private length = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`RingBuffer capacity must be a positive integer, got ${capacity}`);
    }
    this.slots = new Array<T | undefined>(capacity);
  }

  get size(): number {
    return this.length;
  }

  /** Adds an item; returns the item it evicted, if the buffer was full. */
  push(item: T): T | undefined {
    const tail = (this.head + this.length) % this.capacity;
    if (this.length < this.capacity) {
      this.slots[tail] = item;
      this.length++;
      return undefined;
    }
    const evicted = this.slots[this.head];
    this.slots[this.head] = item;
    this.head = (this.head + 1) % this.capacity;
    return evicted;
  }

  newestFirst(limit: number = this.length): T[] {
    const count = Math.max(0, Math.min(limit, this.length));
    const items: T[] = [];
    for (let i = 0; i < count; i++) {
      const index = (this.head + this.length - 1 - i) % this.capacity;
      items.push(this.slots[index] as T);
    }
    return items;
  }

  clear(): void {
    this.slots.fill(undefined);
    this.head = 0;
    this.length = 0;
  }
}
