// A stand-in for the native model, for engine tests that must be fast and must see KV bookkeeping mistakes: its
// "KV cache" stores each position's token in the slot the block table names, and a row's logits are a hash of the
// whole history read back through the block table. A wrong block table or a lost position changes the logits.
// Sampling in the step is the native CPU reference (sampleLogits) on those logits.
// With a window (window KV, a windowKv load's kvWindow), each position is also written through the window table,
// tagged, into the same block memory (a block serves either table, as on the real backends), and the logits mix
// in the last `window` positions read back through it: a stale, shared or overwritten window block changes them.
import { loadAddon, type NativeStepInput, type NativeStepOutput } from '../../src/native.js';

/** Added to a token written through the window table: a full-table read of it (or the reverse) shows. */
const WINDOW_TAG = 1 << 20;

function mix(h: number, x: number): number {
  h = Math.imul(h ^ x, 0x9e3779b1);
  h ^= h >>> 15;
  return Math.imul(h, 0x85ebca6b) >>> 0;
}

export class FakeModel {
  readonly kv: Int32Array;
  steps: NativeStepInput[] = [];
  /** Makes the next step throw. */
  failNext = false;
  /** Milliseconds each step takes. */
  delayMs = 0;
  /** Called with each block a step writes (prefix-cache tests check that no shared block is written). */
  onWrite?: (block: number) => void;

  constructor(
    readonly vocab: number,
    readonly numBlocks: number,
    readonly blockSize: number,
    /** > 0: window KV for windows of this many positions (steps must carry windowTables). */
    readonly window = 0,
  ) {
    this.kv = new Int32Array(numBlocks * blockSize).fill(-1);
  }

  /** The logits after a history of tokens (what a solo run would see). */
  logitsFor(history: number[]): Float32Array {
    let h = 0x12345;
    for (const t of history) h = mix(h, t);
    if (this.window > 0) for (let p = Math.max(0, history.length - this.window); p < history.length; p++) h = mix(h, history[p] + WINDOW_TAG);
    return this.logitsOf(h);
  }

  private logitsOf(h: number): Float32Array {
    const out = new Float32Array(this.vocab);
    for (let i = 0; i < this.vocab; i++) out[i] = ((mix(h, i) % 10007) / 10007) * 8 - 4;
    return out;
  }

  async step(input: NativeStepInput): Promise<NativeStepOutput> {
    this.steps.push(input);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    else await Promise.resolve();
    if (this.failNext) {
      this.failNext = false;
      throw new Error('fake step failure');
    }
    const n = input.seqLens.length;
    const k = input.topK ?? 0;
    if ((this.window > 0) !== (input.windowTables !== undefined)) throw new Error(`fake model: windowTables ${input.windowTables ? 'given without' : 'missing with'} a window`);
    const out: NativeStepOutput = {
      numRows: n,
      vocab: this.vocab,
      topK: k,
      argmax: new Int32Array(n),
      maxLogit: new Float32Array(n),
      logsumexp: new Float32Array(n),
      topIds: new Int32Array(n * k),
      topLogits: new Float32Array(n * k),
      logitsRows: new Int32Array(0),
      logits: new Float32Array(0),
    };
    const rows: number[] = [];
    const full: Float32Array[] = [];
    const all = new Float32Array(n * this.vocab);
    let t = 0;
    for (let s = 0; s < n; s++) {
      const slot = (pos: number) => {
        const b = input.blockTables[s * input.maxBlocksPerSeq + Math.floor(pos / this.blockSize)];
        return b * this.blockSize + (pos % this.blockSize);
      };
      const windowSlot = (pos: number) => {
        const b = input.windowTables![s * input.maxBlocksPerSeq + Math.floor(pos / this.blockSize)];
        return b * this.blockSize + (pos % this.blockSize);
      };
      let last = 0;
      for (let i = 0; i < input.seqLens[s]; i++, t++) {
        const pos = input.positions[t];
        this.onWrite?.(input.blockTables[s * input.maxBlocksPerSeq + Math.floor(pos / this.blockSize)]);
        this.kv[slot(pos)] = input.tokens[t];
        if (this.window > 0) {
          this.onWrite?.(input.windowTables![s * input.maxBlocksPerSeq + Math.floor(pos / this.blockSize)]);
          this.kv[windowSlot(pos)] = input.tokens[t] + WINDOW_TAG;
        }
        last = pos;
      }
      let h = 0x12345;
      for (let p = 0; p <= last; p++) h = mix(h, this.kv[slot(p)]);
      // Only the window's entries are read (the others may name given-back blocks).
      if (this.window > 0) for (let p = Math.max(0, last - this.window + 1); p <= last; p++) h = mix(h, this.kv[windowSlot(p)]);
      const logits = this.logitsOf(h);
      all.set(logits, s * this.vocab);
      const ids = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
      out.argmax[s] = ids[0];
      out.maxLogit[s] = logits[ids[0]];
      let z = 0;
      for (const v of logits) z += Math.exp(v - logits[ids[0]]);
      out.logsumexp[s] = logits[ids[0]] + Math.log(z);
      for (let j = 0; j < k; j++) {
        out.topIds[s * k + j] = ids[j];
        out.topLogits[s * k + j] = logits[ids[j]];
      }
      if (input.fullLogits?.[s]) {
        rows.push(s);
        full.push(logits);
      }
    }
    out.logitsRows = Int32Array.from(rows);
    out.logits = new Float32Array(rows.length * this.vocab);
    full.forEach((l, i) => out.logits.set(l, i * this.vocab));
    if (input.sampling) Object.assign(out, loadAddon().sampleLogits(all, this.vocab, input.sampling));
    return out;
  }
}
