// The generation engine: requests in, tokens out. One loop runs native steps back to back while any request is in
// flight; each step is whatever the scheduler batched (prefill chunks + every decoding sequence). Sampling
// is planned per sequence before the step (sampler.ts): most draws happen inside the step (native/sampling.h) and the
// host accepts the token; full logits come back only as a counted fallback.
// Pipelined decode: while a step runs, the next one is submitted when the device alone decides it (every running
// sequence decodes one token the step draws or argmaxes, and nothing waits for admission), its tokens named as
// the running step's rows (src/native.ts's step contract), so the device does not wait for the host between
// steps. A sequence that stops at the running step gets one token too many computed ahead; it is discarded.
// A request's failure (bad input, abort) never stops the others.
import { maxTopK, type NativeStepInput, type NativeStepOutput } from '../native.js';
import type { ResolvedSampling } from '../sampling/params.js';
import { SamplingBatch } from '../sampling/device.js';
import { StepNoise } from '../sampling/rng.js';
import { SequenceSampler, type LogitsRow, type SamplePlan, type SampledToken } from '../sampling/sampler.js';
import { KvBlockPool } from './kv_blocks.js';
import { Scheduler, Sequence, type Chunk } from './scheduler.js';

/** What the engine needs of a model: one batched step (LoadedModel provides it). */
export interface StepModel {
  step(input: NativeStepInput): Promise<NativeStepOutput>;
  /** True when step() takes a step before the previous one resolved, with previous-step tokens (src/native.ts). */
  readonly pipelines?: boolean;
}

export interface EngineOptions {
  vocabSize: number;
  numBlocks: number;
  blockSize: number;
  maxSeqs: number;
  maxBatchTokens: number;
  /** The token budget of one step, at most maxBatchTokens (scheduler.ts's SchedulerLimits). Default maxBatchTokens. */
  stepTokens?: number;
  /** Prompt tokens one sequence prefills per step at most (scheduler.ts). Default the step budget. */
  prefillChunk?: number;
  /** Longest sequence (prompt + generated) allowed. */
  contextLength: number;
  /** The most sampling entries one step carries (the addon's buildInfo().maxSampleEntries); default unlimited. */
  maxSampleEntries?: number;
  /**
   * > 0: the model keeps its sliding layers' KV in blocks of their own (a windowKv load; its limits.kvWindow):
   * every step carries window tables, and each sequence holds only its window's blocks for those layers.
   */
  kvWindow?: number;
  /** Share full KV blocks between sequences with the same prefix (kv_blocks.ts). Default true. */
  prefixCaching?: boolean;
  /** Submit the next decode step while one runs, where the model pipelines (StepModel.pipelines). Default true. */
  pipeline?: boolean;
}

/** A request the engine refuses or cannot finish (defined with the other errors). */
import { EngineRequestError } from '../errors.js';
export { EngineRequestError };

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerationRequest {
  prompt: readonly number[];
  sampling: ResolvedSampling;
  /** Generated tokens at most (the engine also stops at the context length). */
  maxTokens: number;
  /** Token ids that end the generation (emitted, then finished). */
  stopTokenIds: ReadonlySet<number>;
  signal?: AbortSignal;
  /** Requests share cached KV blocks only under the same salt (a shared cache is a timing side channel). */
  cacheSalt?: string;
  /** Called for each token; returning true ends the generation with 'stop' (a stop string matched). */
  onToken(token: SampledToken): boolean | void;
}

export interface GenerationResult {
  finishReason: FinishReason;
  /** The stop token that ended it, if one did. */
  stopToken?: number;
  promptTokens: number;
  /** Prompt tokens whose KV came from the prefix cache. */
  cachedTokens: number;
  completionTokens: number;
  /** performance.now() stamps. */
  submittedAt: number;
  firstTokenAt?: number;
  finishedAt: number;
}

/** A submitted step and what consume() needs of it. */
interface StepInFlight {
  chunks: Chunk<Pending>[];
  plans: (SamplePlan | undefined)[];
  tokens: number;
  out: Promise<NativeStepOutput>;
}

interface Pending {
  req: GenerationRequest;
  sampler: SequenceSampler;
  submittedAt: number;
  firstTokenAt?: number;
  resolve(r: GenerationResult): void;
  reject(e: unknown): void;
}

export class Engine {
  readonly options: EngineOptions;
  private readonly model: StepModel;
  /** The KV blocks' bookkeeping (read by tests and benchmarks: counts, what is cached). */
  readonly pool: KvBlockPool;
  private readonly scheduler: Scheduler<Pending>;
  private looping = false;
  private closed = false;
  /**
   * Steps run and tokens they held, how many were submitted ahead (pipelined), and how each sampled row was
   * served (fullLogitRows: the host fallback).
   */
  readonly stats = { steps: 0, stepTokens: 0, aheadSteps: 0, argmaxRows: 0, deviceRows: 0, fullLogitRows: 0 };

  constructor(model: StepModel, options: EngineOptions) {
    this.model = model;
    this.options = options;
    this.pool = new KvBlockPool(options.numBlocks, options.blockSize, { caching: options.prefixCaching ?? true });
    this.scheduler = new Scheduler(this.pool, options);
  }

  get freeBlocks(): number {
    return this.pool.freeBlocks;
  }

  get inFlight(): number {
    return this.scheduler.waiting.length + this.scheduler.running.length;
  }

  get preemptions(): number {
    return this.scheduler.preemptions;
  }

  /** Prefix cache lookups so far, in prompt tokens: looked up, and found cached. */
  get prefixCache(): { queries: number; hits: number } {
    return { queries: this.scheduler.prefixQueries, hits: this.scheduler.prefixHits };
  }

  /** Sequences generating now and waiting for admission (a server's running / waiting gauges). */
  get queue(): { running: number; waiting: number } {
    return { running: this.scheduler.running.length, waiting: this.scheduler.waiting.length };
  }

  /** Runs one request to its end. Rejects with EngineRequestError on bad input, or the signal's reason on abort. */
  generate(req: GenerationRequest): Promise<GenerationResult> {
    return new Promise((resolve, reject) => {
      if (this.closed) throw new EngineRequestError('closed', 'the model is closed');
      const { vocabSize, contextLength } = this.options;
      if (req.prompt.length === 0) throw new EngineRequestError('empty_prompt', 'the prompt has no tokens');
      for (const t of req.prompt)
        if (!Number.isInteger(t) || t < 0 || t >= vocabSize)
          throw new EngineRequestError('invalid_token', `prompt token ${t} is outside the vocabulary (0..${vocabSize - 1})`);
      if (req.prompt.length >= contextLength)
        throw new EngineRequestError(
          'context_length_exceeded',
          `the prompt is ${req.prompt.length} tokens; the context holds ${contextLength} (prompt + at least 1 generated token)`,
        );
      if (req.signal?.aborted) throw req.signal.reason;
      // Settling removes the abort listener: a long-lived signal may serve many requests.
      const onAbort = () => this.kick();
      const detach = () => req.signal?.removeEventListener('abort', onAbort);
      const p: Pending = {
        req,
        sampler: new SequenceSampler(req.sampling, req.prompt),
        submittedAt: performance.now(),
        resolve: (r) => (detach(), resolve(r)),
        reject: (e) => (detach(), reject(e)),
      };
      this.scheduler.add(new Sequence(req.prompt, this.pool, p, req.cacheSalt, this.options.kvWindow));
      req.signal?.addEventListener('abort', onAbort, { once: true });
      this.kick();
    });
  }

  /** Stops serving: requests in flight reject. The model itself is closed by its owner. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const seq of [...this.scheduler.running, ...this.scheduler.waiting]) {
      this.scheduler.remove(seq);
      seq.owner.reject(new EngineRequestError('closed', 'the model was closed'));
    }
  }

  private kick(): void {
    if (this.looping || this.closed) return;
    this.looping = true;
    // The loop runs detached; each request learns its outcome through its own promise.
    void this.loop().finally(() => {
      this.looping = false;
      if (!this.scheduler.idle && !this.closed) this.kick();
    });
  }

  private finish(seq: Sequence<Pending>, reason: FinishReason, stopToken?: number): void {
    this.scheduler.remove(seq);
    const p = seq.owner;
    p.resolve({
      finishReason: reason,
      stopToken,
      promptTokens: seq.promptLength,
      cachedTokens: seq.cachedTokens ?? 0,
      completionTokens: seq.generated,
      submittedAt: p.submittedAt,
      firstTokenAt: p.firstTokenAt,
      finishedAt: performance.now(),
    });
  }

  private fail(seq: Sequence<Pending>, err: unknown): void {
    this.scheduler.remove(seq);
    seq.owner.reject(err);
  }

  private reapAborted(): void {
    for (const seq of [...this.scheduler.running, ...this.scheduler.waiting]) {
      const signal = seq.owner.req.signal;
      if (signal?.aborted) this.fail(seq, signal.reason);
    }
  }

  private async loop(): Promise<void> {
    const pipeline = (this.options.pipeline ?? true) && this.model.pipelines === true;
    let ahead: StepInFlight | undefined;
    while (!this.closed) {
      this.reapAborted();
      let step = ahead;
      ahead = undefined;
      if (!step) {
        if (this.scheduler.idle) return;
        const chunks = this.scheduler.schedule();
        if (chunks.length === 0) {
          // Cannot happen while the context fits the cache (checked at load); never spin if it does.
          for (const seq of [...this.scheduler.waiting])
            this.fail(seq, new EngineRequestError('kv_cache_full', 'the KV cache cannot hold this request'));
          continue;
        }
        step = this.submit(chunks, this.plan(chunks));
      }
      if (pipeline) ahead = this.stepAhead(step);
      let out: NativeStepOutput;
      try {
        out = await step.out;
      } catch (err) {
        // A failed step fails the requests it held (and so the step ahead, which names its tokens); the rest go on.
        const e = err instanceof Error ? err : new Error(String(err));
        for (const c of step.chunks) if (c.seq.state !== 'finished') this.fail(c.seq, e);
        continue;
      }
      this.stats.steps++;
      this.stats.stepTokens += step.tokens;
      this.consume(step.chunks, step.plans, out);
    }
  }

  /** Submits a step; `prevRows[s]`: chunk s's token is the previous step's row (a step ahead), else known. */
  private submit(chunks: Chunk<Pending>[], plans: (SamplePlan | undefined)[], prevRows?: number[]): StepInFlight {
    const input = this.buildStep(chunks, plans, prevRows);
    const out = this.model.step(input);
    out.catch(() => {}); // reported where it is awaited; a step ahead may never be (close)
    return { chunks, plans, tokens: input.tokens.length, out };
  }

  /**
   * The step after `running`, submitted before it resolves, when the device alone decides it: nothing waits for
   * admission, every running sequence samples in `running` from a plan whose draw is the step's own (argmax or
   * device; output penalties count the token still being drawn through countPrevious), and its next position has
   * a block without preempting anyone. Then the unpipelined loop would schedule exactly this step. Else undefined.
   */
  private stepAhead(running: StepInFlight): StepInFlight | undefined {
    const seqs = this.scheduler.running;
    if (this.scheduler.waiting.length > 0 || seqs.length === 0 || seqs.length > this.scheduler.budget.stepTokens) return undefined;
    const rowOf = new Map<Sequence<Pending>, number>();
    running.chunks.forEach((c, r) => c.samples && rowOf.set(c.seq, r));
    let missing = 0;
    const chunks: Chunk<Pending>[] = [];
    const prevRows: number[] = [];
    for (const seq of seqs) {
      const r = rowOf.get(seq);
      const plan = r === undefined ? undefined : running.plans[r];
      if (!plan || plan.mode === 'full') return undefined;
      const start = running.chunks[r!].start + running.chunks[r!].length;
      if (start + 1 > this.options.contextLength) return undefined;
      missing += seq.missingFor(start + 1);
      chunks.push({ seq, start, length: 1, samples: true });
      prevRows.push(r!);
    }
    if (missing > this.pool.freeBlocks) return undefined;
    const plans = this.plan(chunks, true);
    if (plans.some((plan) => plan!.mode === 'full')) return undefined;
    for (const c of chunks) c.seq.ensure(c.start + 1);
    this.stats.aheadSteps++;
    return this.submit(chunks, plans, prevRows);
  }

  /**
   * Each sampling chunk's plan; device draws beyond the step's entry buffer fall back to full logits. `ahead`: a
   * step ahead, whose tokens are not accepted yet (a tracked one adds its entry in the step: countPrevious).
   */
  private plan(chunks: Chunk<Pending>[], ahead = false): (SamplePlan | undefined)[] {
    let entries = 0;
    const cap = this.options.maxSampleEntries ?? Infinity;
    return chunks.map((c) => {
      if (!c.samples) return undefined;
      const sampler = c.seq.owner.sampler;
      const plan = sampler.plan(ahead);
      if (plan.mode !== 'device') return plan;
      const n = sampler.entries().length + (ahead && sampler.tracksOutput ? 1 : 0);
      if (entries + n > cap) return { ...plan, mode: 'full' };
      entries += n;
      return plan;
    });
  }

  private buildStep(chunks: Chunk<Pending>[], plans: (SamplePlan | undefined)[], prevRows?: number[]): NativeStepInput {
    let numTokens = 0;
    let maxBlocks = 1;
    for (const c of chunks) {
      numTokens += c.length;
      maxBlocks = Math.max(maxBlocks, c.seq.table.blocks.length, c.seq.window?.blocks.length ?? 0);
    }
    const tokens = new Int32Array(numTokens);
    const positions = new Int32Array(numTokens);
    const seqLens = new Int32Array(chunks.length);
    const blockTables = new Int32Array(chunks.length * maxBlocks);
    const windowTables = this.options.kvWindow ? new Int32Array(chunks.length * maxBlocks) : undefined;
    const fullLogits = new Uint8Array(chunks.length);
    let entries = 0;
    let device = false;
    for (const [s, plan] of plans.entries())
      if (plan?.mode === 'device') {
        device = true;
        entries += chunks[s].seq.owner.sampler.entries().length;
      }
    const sampling = device ? new SamplingBatch(chunks.length, entries) : undefined;
    let topK = 0;
    let t = 0;
    chunks.forEach((c, s) => {
      for (let i = 0; i < c.length; i++) {
        tokens[t] = prevRows ? -1 - prevRows[s] : c.seq.tokens[c.start + i];
        positions[t] = c.start + i;
        t++;
      }
      seqLens[s] = c.length;
      c.seq.table.writeRow(blockTables, s, maxBlocks);
      if (windowTables) c.seq.window!.writeRow(windowTables, s, maxBlocks);
      const plan = plans[s];
      if (plan) {
        if (plan.mode === 'full') fullLogits[s] = 1;
        topK = Math.max(topK, plan.topK);
      }
      const sampler = plan?.mode === 'device' ? c.seq.owner.sampler : undefined;
      sampling?.push(sampler, prevRows !== undefined && sampler?.tracksOutput === true);
    });
    const native = sampling?.finish();
    // A step ahead draws with the noise of the sampler's next step: one per accepted token (seq.generated), and
    // the running step's token is not accepted yet.
    if (native && prevRows)
      chunks.forEach((c, s) => {
        if (plans[s]?.mode !== 'device') return;
        const noise = new StepNoise(c.seq.owner.sampler.params.seed, c.seq.generated + 1);
        native.noiseKeys[2 * s] = noise.k1;
        native.noiseKeys[2 * s + 1] = noise.k2;
      });
    return {
      tokens,
      positions,
      seqLens,
      blockTables,
      ...(windowTables ? { windowTables } : {}),
      maxBlocksPerSeq: maxBlocks,
      fullLogits,
      topK: Math.min(topK, maxTopK()),
      sampling: native,
    };
  }

  private consume(chunks: Chunk<Pending>[], plans: (SamplePlan | undefined)[], out: NativeStepOutput): void {
    const fullAt = new Map<number, number>();
    out.logitsRows.forEach((row, i) => fullAt.set(row, i));
    const k = out.topK;
    chunks.forEach((c, r) => {
      const seq = c.seq;
      if (seq.state === 'finished') return;
      this.scheduler.advance(seq, c.start + c.length);
      const plan = plans[r];
      if (!plan) return;
      const p = seq.owner;
      if (p.req.signal?.aborted) return this.fail(seq, p.req.signal.reason);
      const fi = fullAt.get(r);
      const row: LogitsRow = {
        argmax: out.argmax[r],
        maxLogit: out.maxLogit[r],
        logsumexp: out.logsumexp[r],
        topIds: out.topIds.subarray(r * k, (r + 1) * k),
        topLogits: out.topLogits.subarray(r * k, (r + 1) * k),
        sampled: out.sampled?.[r],
        sampledLogit: out.sampledLogit?.[r],
        logits: fi === undefined ? undefined : out.logits.subarray(fi * out.vocab, (fi + 1) * out.vocab),
      };
      if (plan.mode === 'full') this.stats.fullLogitRows++;
      else if (plan.mode === 'device') this.stats.deviceRows++;
      else this.stats.argmaxRows++;
      let sampled: SampledToken;
      let stopByCaller: boolean | void;
      try {
        sampled = p.sampler.sample(row, plan);
        seq.tokens.push(sampled.token);
        p.firstTokenAt ??= performance.now();
        stopByCaller = p.req.onToken(sampled);
      } catch (err) {
        return this.fail(seq, err);
      }
      if (p.req.stopTokenIds.has(sampled.token)) return this.finish(seq, 'stop', sampled.token);
      if (stopByCaller === true) return this.finish(seq, 'stop');
      if (seq.generated >= p.req.maxTokens || seq.tokens.length >= this.options.contextLength) return this.finish(seq, 'length');
    });
  }
}
