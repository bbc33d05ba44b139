/**
 * mulberry32 (Tommy Ettinger, public domain): a tiny, well-known 32-bit PRNG. Good enough to decide
 * which sends fail in a drill and reproducible from a seed; not for anything secret.
 * Returns numbers uniform in [0, 1), like Math.random.
 */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), state | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}
