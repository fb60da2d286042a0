// The per-step typed arrays that carry each sequence's sampling into the native step (NativeSampling; the step
// applies native/sampling.h's definition). One builder per step: rows in sequence order, entries appended as CSR.
import type { NativeSampling } from '../native.js';
import type { SequenceSampler } from './sampler.js';

const MODE_NONE = 0;
const MODE_GREEDY = 1;
const MODE_DRAW = 2;

export class SamplingBatch {
  private readonly s: NativeSampling;
  private entries = 0;
  private row = 0;
  private counted = false;

  /** `rows` sequences; `entries` at most (the sum of their entries().length). */
  constructor(rows: number, entries: number) {
    // One buffer carved into the fifteen views (one allocation a step, not fifteen): 4-byte arrays first.
    const buf = new ArrayBuffer(4 * (10 * rows + 1 + 3 * entries) + 2 * rows + entries);
    let at = 0;
    const take = <T>(make: (b: ArrayBuffer, offset: number, n: number) => T, n: number, size: number): T => {
      const a = make(buf, at, n);
      at += n * size;
      return a;
    };
    const f32 = (n: number) => take((b, o, k) => new Float32Array(b, o, k), n, 4);
    const i32 = (n: number) => take((b, o, k) => new Int32Array(b, o, k), n, 4);
    this.s = {
      temperature: f32(rows).fill(1),
      topK: i32(rows),
      topP: f32(rows).fill(1),
      minP: f32(rows),
      repetitionPenalty: f32(rows).fill(1),
      frequencyPenalty: f32(rows),
      presencePenalty: f32(rows),
      noiseKeys: take((b, o, k) => new Uint32Array(b, o, k), 2 * rows, 4),
      entryOffsets: i32(rows + 1),
      entryIds: i32(entries),
      entryBias: f32(entries),
      entryCounts: i32(entries),
      mode: take((b, o, k) => new Uint8Array(b, o, k), rows, 1),
      entryInPrompt: take((b, o, k) => new Uint8Array(b, o, k), entries, 1),
      countPrevious: take((b, o, k) => new Uint8Array(b, o, k), rows, 1),
    };
  }

  /**
   * The next row: sampled in the step from `sampler`'s state, or not sampled there (undefined). `countPrevious`:
   * its input token is the previous step's row, not accepted yet, and counts in its entries (src/native.ts).
   */
  push(sampler: SequenceSampler | undefined, countPrevious = false): void {
    const s = this.s;
    const r = this.row++;
    if (sampler) {
      const p = sampler.params;
      s.mode[r] = p.greedy ? MODE_GREEDY : MODE_DRAW;
      s.temperature[r] = p.greedy ? 1 : p.temperature;
      s.topK[r] = p.topK;
      s.topP[r] = p.topP;
      s.minP[r] = p.minP;
      s.repetitionPenalty[r] = p.repetitionPenalty;
      s.frequencyPenalty[r] = p.frequencyPenalty;
      s.presencePenalty[r] = p.presencePenalty;
      const noise = sampler.noise();
      s.noiseKeys[2 * r] = noise.k1;
      s.noiseKeys[2 * r + 1] = noise.k2;
      const t = sampler.entries();
      const at = this.entries;
      s.entryIds.set(t.ids.subarray(0, t.length), at);
      s.entryBias.set(t.bias.subarray(0, t.length), at);
      s.entryCounts.set(t.counts.subarray(0, t.length), at);
      s.entryInPrompt.set(t.inPrompt.subarray(0, t.length), at);
      this.entries += t.length;
      if (countPrevious) {
        s.countPrevious![r] = 1;
        this.counted = true;
      }
    } else {
      s.mode[r] = MODE_NONE;
    }
    s.entryOffsets[r + 1] = this.entries;
  }

  /** The arrays, once every row is pushed; entry arrays cut to what was used, countPrevious where a row has it. */
  finish(): NativeSampling {
    const s = this.s;
    const n = this.entries;
    return {
      ...s,
      entryIds: s.entryIds.subarray(0, n),
      entryBias: s.entryBias.subarray(0, n),
      entryCounts: s.entryCounts.subarray(0, n),
      entryInPrompt: s.entryInPrompt.subarray(0, n),
      countPrevious: this.counted ? s.countPrevious : undefined,
    };
  }
}
