// A counter-based random source: the uniform for (seed, step, token id) is a pure hash of the three, so a token's
// noise does not depend on which other tokens were looked at. That is what lets the step's draw (native/sampling.h,
// which mixes token ids into this step's two keys exactly as uniform() does) and the full-vocabulary path here draw
// the same token for the same seed, and makes a request reproducible across batching, preemption and restarts.

/** murmur3's 32-bit finaliser: a bijection with full avalanche. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Keys for one sampling step of one request; the token id is mixed in per draw. */
export class StepNoise {
  /** The two keys of this (seed, step): the step's device sampling mixes the token id into them the same way. */
  readonly k1: number;
  readonly k2: number;

  constructor(seed: number, step: number) {
    // A safe integer seed splits into two 32-bit halves (the sign folds into the high half).
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 4294967296) >>> 0;
    const s = fmix32(fmix32(lo ^ 0x243f6a88) ^ fmix32(hi ^ 0x85a308d3));
    const base = fmix32(s ^ fmix32((step >>> 0) ^ 0x13198a2e) ^ Math.imul(Math.floor(step / 4294967296), 0x03707344));
    this.k1 = fmix32(base ^ 0xa4093822);
    this.k2 = fmix32(base ^ 0x299f31d0);
  }

  /** Uniform in (0, 1) with 53 random bits. */
  uniform(id: number): number {
    const x = Math.imul(id, 0x9e3779b1);
    const a = fmix32(fmix32(x ^ this.k1) + 0x6a09e667);
    const b = fmix32(fmix32(x ^ this.k2) + 0xbb67ae85);
    return ((a >>> 5) * 67108864 + (b >>> 6) + 0.5) / 9007199254740992;
  }

  /** Standard Gumbel noise: argmax(logit/T + gumbel) is a draw from softmax(logit/T). */
  gumbel(id: number): number {
    return -Math.log(-Math.log(this.uniform(id)));
  }
}

/** A fresh seed for requests that give none. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 52);
}
