// A test-only model that replays given harmony completions: random weights cannot choose a tool, reason or
// break the format on purpose, so this model writes what the script says, through the real path (a real
// Harmonium: renderer, engine and KV block pool, sampler, harmony parser; only the native step, sampling in the
// step included, is replaced).
//
// A script entry applies when its `when` text occurs in the conversation (the latest occurrence wins, so a
// follow-up turn can have its own entry). Each row's history is read back through the block table, as the
// native KV cache would hold it; the output so far is what follows the prompt's last `<|start|>assistant`, and
// the next token is the first token of the rest of the scripted text (at the text level, so an assistant prefix
// tokenized differently still continues correctly). Past the script's end, or with no entry, it writes filler.
import { Harmonium } from '../../src/api.js';
import type { LoadedModel } from '../../src/model/load.js';
import type { NativeStepInput, NativeStepOutput } from '../../src/native.js';

export interface ScriptEntry {
  when: string;
  /** Harmony text after `<|start|>assistant`, with its own stop token (`<|return|>`, `<|call|>`) if it has one. */
  output: string;
}

const PEAK = 30;

/** The step contract of src/native.ts: tokens[i] = -1 - r is the previous step's row r (its draw, else its argmax). */
function resolvePrevious(input: NativeStepInput, prev: NativeStepOutput | undefined): NativeStepInput {
  if (!input.tokens.some((t) => t < 0)) return input;
  if (!prev) throw new Error('step: previous-step tokens without a previous step');
  const rowToken = (r: number) => (prev.sampled && prev.sampled[r] >= 0 ? prev.sampled[r] : prev.argmax[r]);
  return { ...input, tokens: input.tokens.map((t) => (t < 0 ? rowToken(-1 - t) : t)) };
}

export class ScriptedModel {
  /** Prompts the model saw (decoded), in order, for checks on what the server rendered. */
  readonly prompts: string[] = [];
  /** Milliseconds each step takes. */
  delayMs = 0;
  /** Steps run so far. */
  steps = 0;
  private readonly kv: Int32Array;
  private readonly blockSize: number;
  private readonly filler: number;
  /** The last step called: steps run in call order, and a step's previous-step tokens are its rows' (native.ts). */
  private last: Promise<NativeStepOutput | undefined> = Promise.resolve(undefined);

  constructor(
    readonly model: Harmonium,
    public script: ScriptEntry[],
  ) {
    const info = model.info();
    this.blockSize = info.blockSize;
    this.kv = new Int32Array(info.numBlocks * info.blockSize);
    this.filler = model.tokenizer.encode(' x')[0];
    // The engine calls its LoadedModel's step; this instance's step is replaced (the native one is never run).
    const loaded = (model as unknown as { model: LoadedModel }).model;
    loaded.step = (input) => {
      const out = this.last.then((prev) => this.step(resolvePrevious(input, prev)));
      this.last = out.catch(() => undefined);
      return out;
    };
  }

  /**
   * A tiny-model Harmonium driven by a script (numBlocks small, so KV bookkeeping is visible). Prefix caching is off:
   * `prompts` records what a prefill from position 0 saw, and a cache hit starts past it.
   */
  static async load(script: ScriptEntry[], opts: { numBlocks?: number; maxSeqs?: number } = {}): Promise<ScriptedModel> {
    const model = await Harmonium.load({ numBlocks: opts.numBlocks ?? 512, maxSeqs: opts.maxSeqs ?? 16, prefixCaching: false });
    return new ScriptedModel(model, script);
  }

  private next(history: number[]): number {
    const tok = this.model.tokenizer;
    const text = tok.decode(history);
    let entry: ScriptEntry | undefined;
    let at = -1;
    for (const e of this.script) {
      const i = text.lastIndexOf(e.when);
      if (i > at) (entry = e), (at = i);
    }
    if (!entry) return this.filler;
    // Earliest `<|start|>assistant` after the trigger whose continuation agrees with the script.
    const marker = '<|start|>assistant';
    for (let k = text.indexOf(marker, at); k >= 0; k = text.indexOf(marker, k + 1)) {
      const written = text.slice(k + marker.length);
      if (!entry.output.startsWith(written)) continue;
      const rest = entry.output.slice(written.length);
      return rest === '' ? this.filler : tok.encode(rest, { allowSpecial: true })[0];
    }
    return this.filler;
  }

  private async step(input: NativeStepInput): Promise<NativeStepOutput> {
    this.steps++;
    await new Promise((r) => setTimeout(r, this.delayMs));
    const n = input.seqLens.length;
    const k = input.topK ?? 0;
    const vocab = this.model.config.vocabSize;
    const fullRows = [...(input.fullLogits ?? [])].flatMap((f, s) => (f ? [s] : []));
    const out: NativeStepOutput = {
      numRows: n,
      vocab,
      topK: k,
      argmax: new Int32Array(n),
      maxLogit: new Float32Array(n).fill(PEAK),
      // log(e^PEAK + (vocab - 1) e^0)
      logsumexp: new Float32Array(n).fill(PEAK + Math.log1p((vocab - 1) * Math.exp(-PEAK))),
      topIds: new Int32Array(n * k),
      topLogits: new Float32Array(n * k),
      logitsRows: Int32Array.from(fullRows),
      logits: new Float32Array(fullRows.length * vocab),
    };
    // Sampling in the step: the scripted token stands PEAK above every other logit, so the draw is that token
    // (any other is e^-30 less likely each); rows not sampled in the step (mode 0) get -1, as the native step's.
    const sampling = input.sampling;
    if (sampling) {
      out.sampled = new Int32Array(n).fill(-1);
      out.sampledLogit = new Float32Array(n).fill(NaN);
    }
    let t = 0;
    for (let s = 0; s < n; s++) {
      const slot = (pos: number) => input.blockTables[s * input.maxBlocksPerSeq + Math.floor(pos / this.blockSize)] * this.blockSize + (pos % this.blockSize);
      let last = 0;
      for (let i = 0; i < input.seqLens[s]; i++, t++) {
        this.kv[slot(input.positions[t])] = input.tokens[t];
        last = input.positions[t];
      }
      const history: number[] = [];
      for (let p = 0; p <= last; p++) history.push(this.kv[slot(p)]);
      if (input.positions[t - input.seqLens[s]] === 0) this.prompts.push(this.model.tokenizer.decode(history));
      const next = this.next(history);
      out.argmax[s] = next;
      if (sampling && out.sampled && out.sampledLogit && sampling.mode[s] !== 0) {
        out.sampled[s] = next;
        out.sampledLogit[s] = PEAK;
      }
      for (let j = 0; j < k; j++) {
        const id = j === 0 ? next : j <= next ? j - 1 : j;
        out.topIds[s * k + j] = id;
        out.topLogits[s * k + j] = j === 0 ? PEAK : 0;
      }
      const f = fullRows.indexOf(s);
      if (f >= 0) out.logits[f * vocab + next] = PEAK;
    }
    return out;
  }
}
