// Logits after a prefix-cache hit against a cold prefill of the same prompt, on a loaded model (any backend):
// the engine runs with every sampled row's full logits recorded. Used by the CPU test (bit for bit) and the GPU
// test (within the backend's bf16 noise).
import { Engine, type StepModel } from '../../src/engine/engine.js';
import type { LoadedModel } from '../../src/model/load.js';
import type { NativeStepInput } from '../../src/native.js';
import { resolveSampling } from '../../src/sampling/params.js';

class Recorder implements StepModel {
  rows: Float32Array[] = [];
  constructor(private readonly model: LoadedModel) {}
  async step(input: NativeStepInput) {
    const out = await this.model.step({ ...input, fullLogits: new Uint8Array(input.seqLens.length).fill(1) });
    for (let i = 0; i < out.logitsRows.length; i++) this.rows.push(out.logits.slice(i * out.vocab, (i + 1) * out.vocab));
    return out;
  }
}

export interface HitVsCold {
  blockSize: number;
  promptLength: number;
  /** Rows of the sampled steps (first token, then decode), greedy, `decode` tokens each run. */
  cold: Float32Array[];
  /** After a hit on the shared prefix (another prompt cached it), and on the whole prompt (itself cached). */
  warm: Float32Array[];
  again: Float32Array[];
  cachedWarm: number;
  cachedAgain: number;
  tokens: { cold: number[]; warm: number[]; again: number[] };
  engine: Engine;
}

/**
 * The model must serve nothing else; numBlocks is what it was loaded with. The shared prefix is sharedBlocks
 * blocks and 2 tokens (longer than the sliding window, a hit on a window-KV model needs the window's twins too).
 */
export async function hitVsCold(model: LoadedModel, numBlocks: number, decode = 4, sharedBlocks = 3): Promise<HitVsCold> {
  const { blockSize, limits } = model.info();
  const vocab = model.config.vocabSize;
  const ids = (n: number, mul: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * mul) % 5000));
  const shared = ids(sharedBlocks * blockSize + 2, 7);
  const prompt = [...shared, ...ids(9, 13)];
  const other = [...shared, ...ids(5, 17)];
  const engine = (rec: Recorder, prefixCaching: boolean) =>
    new Engine(rec, { vocabSize: vocab, numBlocks, blockSize, maxSeqs: limits.maxSeqs, maxBatchTokens: limits.maxBatchTokens, contextLength: numBlocks * blockSize, prefixCaching, kvWindow: limits.kvWindow });
  const run = async (e: Engine, p: number[]) => {
    const tokens: number[] = [];
    const r = await e.generate({ prompt: p, sampling: resolveSampling({ temperature: 0 }, vocab, () => 0), maxTokens: decode, stopTokenIds: new Set(), onToken: (t) => void tokens.push(t.token) });
    return { tokens, cached: r.cachedTokens };
  };
  const coldRec = new Recorder(model);
  const cold = await run(engine(coldRec, false), prompt);
  const rec = new Recorder(model);
  const hot = engine(rec, true);
  await run(hot, other);
  rec.rows = [];
  const warm = await run(hot, prompt);
  const warmRows = rec.rows;
  rec.rows = [];
  const again = await run(hot, prompt);
  return {
    blockSize,
    promptLength: prompt.length,
    cold: coldRec.rows,
    warm: warmRows,
    again: rec.rows,
    cachedWarm: warm.cached,
    cachedAgain: again.cached,
    tokens: { cold: cold.tokens, warm: warm.tokens, again: again.tokens },
    engine: hot,
  };
}

/** max |a - b| / max |a|. */
export function relMaxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(a[i]));
  }
  return d / m;
}
