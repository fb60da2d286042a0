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
} from './api/types.js';
import { Engine, type GenerationResult } from './engine/engine.js';
import { renderConversationTokens } from './harmony/render.js';
import type { ChatRequest } from './harmony/types.js';
import { isDummyModelName } from './model/dummy.js';
import { loadModel, type LoadedModel } from './model/load.js';
import { ensureTinyModel } from './model/tiny.js';
import type { ModelConfig } from './model/types.js';
import type { NativeModelInfo } from './native.js';
import { resolveSampling, SAMPLING_KEYS, type SamplingParams } from './sampling/params.js';
import { randomSeed } from './sampling/rng.js';
import { StopStrings } from './sampling/stop.js';
import { checkTokenizerJson, HarmonyTokenizer, StreamingDetokenizer, STOP_TOKEN_IDS } from './tokenizer/tokenizer.js';

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
    if (backend !== 'cpu' && backend !== 'cuda') throw new Error(`unknown backend '${String(backend)}' (expected cpu or cuda)`);
    if (opts.model !== undefined && opts.dummyWeights !== undefined) throw new Error('give either model or dummyWeights, not both');
    if (opts.dummyWeights !== undefined && !isDummyModelName(opts.dummyWeights))
      throw new Error(`unknown dummy weights '${String(opts.dummyWeights)}' (expected gpt-oss-20b or gpt-oss-120b)`);
    if (opts.contextLength !== undefined && !(Number.isInteger(opts.contextLength) && opts.contextLength >= 2))
      throw new Error(`contextLength must be an integer >= 2, got ${opts.contextLength}`);
    opts.signal?.throwIfAborted();
    const tiny = opts.model === undefined && opts.dummyWeights === undefined;
    const dir = tiny ? await ensureTinyModel() : opts.model;
    if (dir !== undefined) {
      const tokJson = join(dir, 'tokenizer.json');
      if (existsSync(tokJson)) checkTokenizerJson(tokJson);
    }
    const blockSize = opts.blockSize ?? 16;
    const maxSeqs = opts.maxSeqs ?? 16;
    const maxBatchTokens = opts.maxBatchTokens ?? (backend === 'cpu' ? 512 : 2048);
    const model = await loadModel({
      model: dir,
      dummy: opts.dummyWeights,
      backend,
      blockSize,
      numBlocks: opts.numBlocks ?? 0,
      maxSeqs,
      maxBatchTokens,
      expertFormat: opts.expertFormat,
      threads: opts.threads,
      onProgress: opts.onProgress,
    });
    try {
      opts.signal?.throwIfAborted();
      const info = model.info();
      const capacity = info.numBlocks * info.blockSize;
      let contextLength = Math.min(model.config.maxPositions, capacity);
      if (opts.contextLength !== undefined) {
        if (opts.contextLength > capacity)
          throw new Error(`contextLength ${opts.contextLength} does not fit the KV cache (${info.numBlocks} blocks of ${info.blockSize} = ${capacity} positions)`);
        contextLength = Math.min(opts.contextLength, model.config.maxPositions);
      }
      const engine = new Engine(model, {
        vocabSize: model.config.vocabSize,
        numBlocks: info.numBlocks,
        blockSize: info.blockSize,
        maxSeqs,
        maxBatchTokens,
        contextLength,
      });
      const noise = tiny || opts.dummyWeights !== undefined;
      const source = tiny ? 'tiny' : (opts.model ?? opts.dummyWeights!);
      return new Harmonium(model, engine, contextLength, source, opts.defaultMaxTokens ?? (noise ? NOISE_MODEL_MAX_TOKENS : undefined));
    } catch (err) {
      model.close();
      throw err;
    }
  }

  /** What the backend reports: device, KV blocks, bytes. */
  info(): NativeModelInfo {
    return this.model.info();
  }

  /** Sequences waiting or generating now. */
  get inFlight(): number {
    return this.engine.inFlight;
  }

  /** The engine's state now: sequences running and waiting, KV cache blocks free of all, preemptions so far, its sequence limit. */
  status(): EngineStatus {
    return {
      ...this.engine.queue,
      kvBlocksFree: this.engine.freeBlocks,
      kvBlocksTotal: this.engine.options.numBlocks,
      preemptions: this.engine.preemptions,
      maxSeqs: this.engine.options.maxSeqs,
    };
  }

  /** The prompt tokens a chat request renders to (harmony format, ending in `<|start|>assistant`). */
  renderTokens(request: ChatRequest): number[] {
    return renderConversationTokens(request, this.tokenizer);
  }

  /**
   * Runs a chat request. Iterate the returned object for events (reasoning and content deltas, tool calls, done);
   * `.result` resolves to the final message. Errors (a bad request, an abort, a closed model) reject `.result` and
   * end the iteration by throwing.
   */
  chat(request: ChatCompletionRequest, opts: CallOptions = {}): Stream<ChatEvent, ChatResult> {
    const channel = new EventChannel<ChatEvent>();
    const result = (async () => {
      const started = performance.now();
      const sampling = this.resolve(request);
      // An assistant prefix is part of the prompt, and the parser reads it as the start of the output.
      const prefix = opts.assistantPrefix ? this.tokenizer.encode(opts.assistantPrefix, { allowSpecial: true }) : [];
      const prompt = [...this.renderTokens(request), ...prefix];
      const functionNames = (request.tools ?? []).map((t) => t?.function?.name).filter((n): n is string => typeof n === 'string');
      const assembler = new ChatAssembler(this.tokenizer, sampling.stop, sampling.logprobs, functionNames);
      assembler.prime(prefix);
      const stops = new Set([...(opts.ignoreEos ? [] : STOP_TOKEN_IDS), ...sampling.stopTokenIds]);
      const gen = await this.engine.generate({
        prompt,
        sampling,
        maxTokens: this.maxTokens(sampling.maxTokens, prompt.length),
        stopTokenIds: stops,
        signal: opts.signal,
        onToken: (t) => {
          for (const e of assembler.push(t)) channel.push(e);
          return assembler.stopped;
        },
      });
      // A cut by max_tokens or a stop string leaves a message open by design, not because the model erred.
      const cut = gen.finishReason === 'length' ? 'length' : assembler.stopped ? 'abort' : undefined;
      for (const e of assembler.finish(cut)) channel.push(e);
      const message = assembler.result(gen, timings(started, gen));
      channel.push({ type: 'done', message });
      channel.end();
      return message;
    })();
    result.catch((err) => channel.fail(err));
    return withResult(channel, result);
  }

  /**
   * Generates from raw prompt tokens (no chat format). Stops at the model's end tokens, stop_token_ids, stop
   * strings (matched on the decoded text, special tokens written out), max_tokens or the context end.
   */
  generate(tokens: readonly number[], params: SamplingParams = {}, opts: CallOptions = {}): Stream<GeneratedToken, GenerateResult> {
    const channel = new EventChannel<GeneratedToken>();
    const result = (async () => {
      const started = performance.now();
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
        signal: opts.signal,
        onToken: (t) => {
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
        timings: timings(started, gen),
      };
      return res;
    })();
    result.catch((err) => channel.fail(err));
    return withResult(channel, result);
  }

  /** Frees the model (weights and KV cache on its device). Calls in flight reject. Safe to call twice. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.engine.close();
    this.model.close();
  }

  private resolve(request: ChatCompletionRequest) {
    if (typeof request !== 'object' || request === null) throw new TypeError('chat: the request must be an object');
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
  return { prompt_tokens: gen.promptTokens, completion_tokens: gen.completionTokens, total_tokens: gen.promptTokens + gen.completionTokens };
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

function withResult<E, R>(channel: EventChannel<E>, result: Promise<R>): Stream<E, R> {
  // The caller may use only the iterator; a rejection it sees there must not also surface as unhandled.
  result.catch(() => undefined);
  return Object.assign(channel, { result }) as unknown as Stream<E, R>;
}

