// The library: load a model, chat with it, generate raw tokens, close it. A thin layer that turns requests into
// prompt tokens (harmony renderer), runs them on the engine (batched with every other call in flight) and turns
// tokens back into events (streaming detokenizer, harmony parser).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ChatAssembler } from './api/chat_stream.js';
import { EventChannel } from './api/channel.js';
import type {
  CallOptions,
  ChatCompletionRequest,
  ChatEvent,
  ChatResult,
  EngineStatus,
  GeneratedToken,
  GenerateResult,
  HarmoniumLoadOptions,
  Stream,
  Timings,
  Usage,
} from './api/types.js';
import { checkChatRequest } from './api/validate.js';
import { Engine, type GenerationResult } from './engine/engine.js';
import { kvCapacity } from './engine/kv_blocks.js';
import { stepBudget } from './engine/scheduler.js';
import { DeviceError, EngineRequestError, LoadOptionError, RequestError } from './errors.js';
import { renderConversationTokens } from './harmony/render.js';
import type { ChatRequest } from './harmony/types.js';
import { isDummyModelName } from './model/dummy.js';
import { cudaDeviceCount, loadDefaults, loadModel, type LoadedModel } from './model/load.js';
import { ensureTinyModel } from './model/tiny.js';
import type { ModelConfig } from './model/types.js';
import { loadAddon, type NativeModelInfo } from './native.js';
import { resolveSampling, SAMPLING_KEYS, type SamplingParams } from './sampling/params.js';
import { randomSeed } from './sampling/rng.js';
import { StopStrings } from './sampling/stop.js';
import { checkTokenizerJson, HarmonyTokenizer, StreamingDetokenizer, STOP_TOKEN_IDS, VOCAB_SIZE } from './tokenizer/tokenizer.js';

/** What Harmonium.score() resolves to. */
export interface ScoreResult {
  tokens: number[];
  /** [T - 1]: log p(tokens[t + 1] | tokens[0..t]) */
  logprobs: number[];
  /** exp(-mean(logprobs)); NaN when there is nothing to predict (one token). */
  perplexity: number;
  vocab: number;
  /** [T * V] fp32 logits of every position */
  logits: Float32Array;
  backend: string;
  deviceName: string;
  prefillMs: number;
}

export type ScoreOptions = Pick<HarmoniumLoadOptions, 'model' | 'backend' | 'dummyWeights' | 'expertFormat' | 'threads' | 'onProgress'>;

/** max_tokens for models whose text is noise (random weights), which may never write <|return|>. */
const NOISE_MODEL_MAX_TOKENS = 64;

export class Harmonium {
  readonly config: ModelConfig;
  readonly tokenizer: HarmonyTokenizer;
  /** Longest sequence (prompt + generated). */
  readonly contextLength: number;
  /** The checkpoint directory, 'tiny' for the embedded model, or the dummy config's name. */
  readonly source: string;
  private readonly model: LoadedModel;
  private readonly engine: Engine;
  private readonly defaultMaxTokens: number | undefined;
  private closed = false;

  private constructor(model: LoadedModel, engine: Engine, contextLength: number, source: string, defaultMaxTokens: number | undefined) {
    this.model = model;
    this.config = model.config;
    this.engine = engine;
    this.contextLength = contextLength;
    this.source = source;
    this.defaultMaxTokens = defaultMaxTokens;
    this.tokenizer = new HarmonyTokenizer();
  }

  /** Loads a model: a checkpoint directory, dummy weights of a gpt-oss shape, or (by default) the embedded tiny model. */
  static async load(opts: HarmoniumLoadOptions = {}): Promise<Harmonium> {
    const backend = opts.backend ?? 'cpu';
    if (backend !== 'cpu' && backend !== 'cuda') throw new LoadOptionError('backend', `backend: unknown backend ${JSON.stringify(backend)} (expected cpu or cuda)`);
    if (opts.model !== undefined && opts.dummyWeights !== undefined) throw new LoadOptionError('dummyWeights', 'dummyWeights: give either model or dummyWeights, not both');
    if (opts.dummyWeights !== undefined && !isDummyModelName(opts.dummyWeights))
      throw new LoadOptionError('dummyWeights', `dummyWeights: unknown dummy weights ${JSON.stringify(opts.dummyWeights)} (expected gpt-oss-20b or gpt-oss-120b)`);
    if (opts.contextLength !== undefined && !(Number.isInteger(opts.contextLength) && opts.contextLength >= 2))
      throw new LoadOptionError('contextLength', `contextLength: must be an integer >= 2, got ${opts.contextLength}`);
    for (const k of ['stepTokens', 'prefillChunk'] as const)
      if (opts[k] !== undefined && !(Number.isInteger(opts[k]) && opts[k]! >= 1))
        throw new LoadOptionError(k, `${k}: must be an integer >= 1, got ${opts[k]}`);
    opts.signal?.throwIfAborted();
    if (backend === 'cuda') {
      const devices = loadAddon().cudaDevices();
      if (devices.count === 0) throw new DeviceError(`backend cuda: no usable CUDA GPU here (${devices.reason || 'no device found'}); use backend cpu`);
    }
    const tiny = opts.model === undefined && opts.dummyWeights === undefined;
    const dir = tiny ? await ensureTinyModel() : opts.model;
    if (dir !== undefined) {
      const tokJson = join(dir, 'tokenizer.json');
      if (existsSync(tokJson)) checkTokenizerJson(tokJson);
    }
    // Options left undefined take the native defaults; info() reports what the model was loaded with.
    const model = await loadModel({
      model: dir,
      dummy: opts.dummyWeights,
      backend,
      blockSize: opts.blockSize,
      numBlocks: opts.numBlocks,
      windowKv: opts.windowKv ?? true,
      maxSeqs: opts.maxSeqs,
      maxBatchTokens: opts.maxBatchTokens,
      expertFormat: opts.expertFormat,
      threads: opts.threads,
      onProgress: opts.onProgress,
    });
    try {
      opts.signal?.throwIfAborted();
      const info = model.info();
      const kvWindow = info.limits.kvWindow;
      const { prefillChunk } = stepBudget({ maxSeqs: info.limits.maxSeqs, maxBatchTokens: info.limits.maxBatchTokens, stepTokens: opts.stepTokens, prefillChunk: opts.prefillChunk });
      // One sequence's most positions: with window KV its window's blocks (for a whole prefill chunk) come out of the same pool.
      const capacity = kvCapacity(info.numBlocks, info.blockSize, kvWindow, prefillChunk);
      let contextLength = Math.min(model.config.maxPositions, capacity);
      if (opts.contextLength !== undefined) {
        if (opts.contextLength > capacity)
          throw new LoadOptionError(
            'contextLength',
            `contextLength: ${opts.contextLength} does not fit the KV cache (${info.numBlocks} blocks of ${info.blockSize}: ${capacity} positions for one sequence${kvWindow ? `, its sliding window's blocks included` : ''})`,
          );
        contextLength = Math.min(opts.contextLength, model.config.maxPositions);
      }
      const engine = new Engine(model, {
        vocabSize: model.config.vocabSize,
        numBlocks: info.numBlocks,
        blockSize: info.blockSize,
        maxSeqs: info.limits.maxSeqs,
        maxBatchTokens: info.limits.maxBatchTokens,
        stepTokens: opts.stepTokens,
        prefillChunk: opts.prefillChunk,
        kvWindow,
        contextLength,
        maxSampleEntries: info.limits.maxSampleEntries,
        prefixCaching: opts.prefixCaching,
      });
      const noise = tiny || opts.dummyWeights !== undefined;
      const source = tiny ? 'tiny' : (opts.model ?? opts.dummyWeights!);
      return new Harmonium(model, engine, contextLength, source, opts.defaultMaxTokens ?? (noise ? NOISE_MODEL_MAX_TOKENS : undefined));
    } catch (err) {
      await model.close();
      throw err;
    }
  }

  /** CUDA devices this build can use: 0 with the reason when none. */
  static cudaDevices(): { count: number; reason: string } {
    return cudaDeviceCount();
  }

  /**
   * Scores a token sequence: loads the model (a checkpoint, dummy weights, or by default the tiny model) with a KV
   * cache for this one sequence, runs it as ONE prefill, and frees it. Resolves to each position's log-probability
   * of the next given token, the perplexity over the T - 1 predictions, and every position's fp32 logits.
   */
  static async score(tokens: readonly number[], opts: ScoreOptions = {}): Promise<ScoreResult> {
    const backend = opts.backend ?? 'cpu';
    if (backend !== 'cpu' && backend !== 'cuda') throw new Error(`score: unknown backend '${String(backend)}' (expected cpu or cuda)`);
    const T = tokens.length;
    if (T === 0) throw new Error('score: no tokens');
    const blockSize = loadDefaults(backend).blockSize;
    const dummy = opts.dummyWeights;
    const model = await loadModel({
      ...(dummy !== undefined ? { dummy } : { model: opts.model ?? (await ensureTinyModel()) }),
      backend,
      numBlocks: Math.ceil(T / blockSize),
      maxSeqs: 1,
      maxBatchTokens: Math.max(T, 16),
      expertFormat: opts.expertFormat,
      threads: opts.threads,
      onProgress: opts.onProgress,
    });
    try {
      const V = model.config.vocabSize;
      tokens.forEach((id, i) => {
        if (id >= V) throw new Error(`score: token ${i} (id ${id}) is outside the vocabulary 0..${V - 1}`);
      });
      if (T > model.config.maxPositions) throw new Error(`score: ${T} tokens exceed the model's ${model.config.maxPositions} positions`);
      const { logits, logsumexp, prefillMs } = await model.score(tokens);
      const logprobs: number[] = [];
      for (let t = 0; t + 1 < T; t++) logprobs.push(logits[t * V + tokens[t + 1]] - logsumexp[t]);
      const mean = logprobs.reduce((a, b) => a + b, 0) / logprobs.length;
      const info = model.info();
      return {
        tokens: [...tokens],
        logprobs,
        perplexity: logprobs.length > 0 ? Math.exp(-mean) : NaN,
        vocab: V,
        logits,
        backend: info.backend,
        deviceName: info.deviceName,
        prefillMs,
      };
    } finally {
      await model.close();
    }
  }

  /** What the backend reports: device, KV blocks, bytes. */
  info(): NativeModelInfo {
    if (this.closed) throw new EngineRequestError('closed', 'the model is closed');
    return this.model.info();
  }

  /** Sequences waiting or generating now. */
  get inFlight(): number {
    return this.engine.inFlight;
  }

  /** KV cache blocks: free now, and in all (every block is free again once no call is in flight). */
  get kvBlocks(): { free: number; total: number } {
    return { free: this.engine.freeBlocks, total: this.engine.options.numBlocks };
  }

  /** The engine's state now: sequences running and waiting, KV cache blocks free of all, preemptions so far, its sequence limit. */
  status(): EngineStatus {
    return {
      ...this.engine.queue,
      kvBlocksFree: this.engine.freeBlocks,
      kvBlocksTotal: this.engine.options.numBlocks,
      preemptions: this.engine.preemptions,
      prefixCacheQueries: this.engine.prefixCache.queries,
      prefixCacheHits: this.engine.prefixCache.hits,
      maxSeqs: this.engine.options.maxSeqs,
    };
  }

  /**
   * The prompt tokens a chat request renders to (harmony format, ending in `<|start|>assistant`). Throws
   * RequestError on a bad request, EngineRequestError (`vocabulary_too_small`) on a model without the harmony tokens.
   */
  renderTokens(request: ChatRequest): number[] {
    checkChatRequest(request);
    if (this.config.vocabSize < VOCAB_SIZE)
      throw new EngineRequestError(
        'vocabulary_too_small',
        `chat needs the o200k_harmony vocabulary (${VOCAB_SIZE} tokens, harmony special tokens included); this model has ${this.config.vocabSize}: use generate() with raw token ids`,
      );
    return renderConversationTokens(request, this.tokenizer);
  }

  /**
   * Runs a chat request. Iterate the returned object for events (reasoning and content deltas, tool calls, done);
   * `.result` resolves to the final message. Errors (a bad request, an abort, a closed model) reject `.result` and
   * end the iteration by throwing.
   */
  chat(request: ChatCompletionRequest, opts: CallOptions = {}): Stream<ChatEvent, ChatResult> {
    const call = new Call(opts.signal);
    const channel = new EventChannel<ChatEvent>(() => call.cancel());
    const result = (async () => {
      const sampling = this.resolve(request);
      // An assistant prefix is part of the prompt, and the parser reads it as the start of the output.
      const prefix = opts.assistantPrefix ? this.tokenizer.encode(opts.assistantPrefix, { allowSpecial: true }) : [];
      const prompt = this.renderTokens(request).concat(prefix);
      call.promptTokens = prompt.length;
      const functionNames = (request.tools ?? []).map((t) => t?.function?.name).filter((n): n is string => typeof n === 'string');
      const assembler = new ChatAssembler(this.tokenizer, sampling.stop, sampling.logprobs, functionNames);
      assembler.prime(prefix);
      const stops = new Set([...(opts.ignoreEos ? [] : STOP_TOKEN_IDS), ...sampling.stopTokenIds]);
      const gen = await this.engine.generate({
        prompt,
        sampling,
        maxTokens: this.maxTokens(sampling.maxTokens, prompt.length),
        stopTokenIds: stops,
        signal: call.signal,
        cacheSalt: opts.cacheSalt,
        onToken: (t) => {
          call.token();
          for (const e of assembler.push(t)) channel.push(e);
          return assembler.stopped;
        },
      });
      // A cut by max_tokens or a stop string leaves a message open by design, not because the model erred.
      const cut = gen.finishReason === 'length' ? 'length' : assembler.stopped ? 'abort' : undefined;
      for (const e of assembler.finish(cut)) channel.push(e);
      const message = assembler.result(gen, timings(call.started, gen));
      channel.push({ type: 'done', message });
      channel.end();
      return message;
    })();
    return withResult(channel, call, result);
  }

  /**
   * Generates from raw prompt tokens (no chat format). Stops at the model's end tokens, stop_token_ids, stop
   * strings (matched on the decoded text, special tokens written out), max_tokens or the context end.
   */
  generate(tokens: readonly number[], params: SamplingParams = {}, opts: CallOptions = {}): Stream<GeneratedToken, GenerateResult> {
    const call = new Call(opts.signal);
    const channel = new EventChannel<GeneratedToken>(() => call.cancel());
    const result = (async () => {
      call.promptTokens = tokens.length;
      const sampling = resolveSampling(params, this.config.vocabSize, randomSeed);
      const detok = new StreamingDetokenizer(this.tokenizer);
      const stopStrings = new StopStrings(sampling.stop);
      const out: number[] = [];
      let text = '';
      const gen = await this.engine.generate({
        prompt: tokens,
        sampling,
        maxTokens: this.maxTokens(sampling.maxTokens, tokens.length),
        stopTokenIds: new Set([...(opts.ignoreEos ? [] : this.config.eosTokenIds), ...sampling.stopTokenIds]),
        signal: call.signal,
        cacheSalt: opts.cacheSalt,
        onToken: (t) => {
          call.token();
          out.push(t.token);
          const shown = stopStrings.push(detok.push(t.token));
          text += shown;
          const ev: GeneratedToken = { token: t.token, text: shown };
          if (t.logprob !== undefined) ev.logprob = t.logprob;
          if (t.topLogprobs) ev.top_logprobs = t.topLogprobs;
          channel.push(ev);
          return stopStrings.stopped;
        },
      });
      text += stopStrings.push(detok.flush()) + stopStrings.flush();
      channel.end();
      const res: GenerateResult = {
        tokens: out,
        text,
        finish_reason: gen.finishReason === 'length' ? 'length' : 'stop',
        usage: usage(gen),
        timings: timings(call.started, gen),
      };
      return res;
    })();
    return withResult(channel, call, result);
  }

  /**
   * Frees the model (weights and KV cache on its device). Calls in flight reject. Resolves once the memory is
   * freed. Safe to call twice.
   */
  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.engine.close();
    }
    return this.model.close();
  }

  /** `await using model = await Harmonium.load()` closes the model at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private resolve(request: ChatCompletionRequest) {
    if (typeof request !== 'object' || request === null) throw new RequestError('the request must be an object');
    const params: SamplingParams = {};
    for (const k of SAMPLING_KEYS) if (k in request) (params as Record<string, unknown>)[k] = request[k];
    return resolveSampling(params, this.config.vocabSize, randomSeed);
  }

  private maxTokens(requested: number | undefined, promptLength: number): number {
    const room = Math.max(1, this.contextLength - promptLength);
    return Math.min(requested ?? this.defaultMaxTokens ?? room, room);
  }
}

function usage(gen: GenerationResult) {
  return {
    prompt_tokens: gen.promptTokens,
    completion_tokens: gen.completionTokens,
    total_tokens: gen.promptTokens + gen.completionTokens,
    prompt_tokens_details: { cached_tokens: gen.cachedTokens },
  };
}

function timings(started: number, gen: GenerationResult): Timings {
  const first = gen.firstTokenAt ?? gen.finishedAt;
  const decodeMs = gen.finishedAt - first;
  return {
    time_to_first_token_ms: first - started,
    total_ms: gen.finishedAt - started,
    tokens_per_second: gen.completionTokens > 1 && decodeMs > 0 ? ((gen.completionTokens - 1) * 1000) / decodeMs : 0,
  };
}

/** One chat() or generate() call: its abort signal (the caller's, or leaving the iteration) and its figures so far. */
class Call {
  readonly started = performance.now();
  promptTokens = 0;
  private completionTokens = 0;
  private firstTokenAt: number | undefined;
  private finishedAt: number | undefined;
  private readonly controller = new AbortController();
  private readonly detach: () => void = () => undefined;

  constructor(outer: AbortSignal | undefined) {
    if (outer?.aborted) this.controller.abort(outer.reason);
    else if (outer) {
      const onAbort = () => this.controller.abort(outer.reason);
      outer.addEventListener('abort', onAbort, { once: true });
      this.detach = () => outer.removeEventListener('abort', onAbort);
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  token(): void {
    this.completionTokens++;
    this.firstTokenAt ??= performance.now();
  }

  /** The consumer left the iteration: stop generating. */
  cancel(): void {
    this.controller.abort(new DOMException('the consumer stopped iterating', 'AbortError'));
  }

  settle(): void {
    this.finishedAt ??= performance.now();
    this.detach();
  }

  progress(): { usage: Usage; timings: Timings } {
    const now = this.finishedAt ?? performance.now();
    const first = this.firstTokenAt ?? now;
    const decodeMs = now - first;
    const n = this.completionTokens;
    return {
      usage: { prompt_tokens: this.promptTokens, completion_tokens: n, total_tokens: this.promptTokens + n },
      timings: {
        time_to_first_token_ms: first - this.started,
        total_ms: now - this.started,
        tokens_per_second: n > 1 && decodeMs > 0 ? ((n - 1) * 1000) / decodeMs : 0,
      },
    };
  }
}

function withResult<E, R>(channel: EventChannel<E>, call: Call, result: Promise<R>): Stream<E, R> {
  void result.then(
    () => call.settle(),
    (err) => {
      call.settle();
      channel.fail(err);
    },
  );
  // The caller may use only the iterator; a rejection it sees there must not also surface as unhandled.
  result.catch(() => undefined);
  return Object.assign(channel, { result, progress: () => call.progress() }) as unknown as Stream<E, R>;
}

