// Sampling parameters as requests spell them (OpenAI Chat Completions names, plus vLLM's top_k, min_p,
// repetition_penalty and stop_token_ids), and their validation into the resolved form the sampler uses.
// Ranges follow OpenAI where OpenAI defines the parameter, vLLM otherwise; every violation is one clear error.

export interface SamplingParams {
  /** 0 = greedy. 0..2 (OpenAI). Default 1. */
  temperature?: number;
  /** Nucleus sampling, (0, 1]. Default 1 (off). */
  top_p?: number;
  /** Keep the k most likely tokens; 0 or -1 = off (vLLM). */
  top_k?: number;
  /** Drop tokens whose probability is below min_p times the most likely one's, [0, 1]. */
  min_p?: number;
  /** vLLM: > 0; 1 = off. Divides positive / multiplies negative logits of tokens seen in the prompt or output. */
  repetition_penalty?: number;
  /** -2..2: subtracted once per earlier occurrence in the output. */
  frequency_penalty?: number;
  /** -2..2: subtracted once if the token occurred in the output. */
  presence_penalty?: number;
  /** Token id (as a string key, as OpenAI sends it) to a bias in -100..100 added to its logit. */
  logit_bias?: Record<string, number>;
  /** Same seed and same request give the same tokens. */
  seed?: number;
  /** Up to 16 strings; the output ends before the first occurrence. */
  stop?: string | string[];
  /** Token ids that end the output (the id itself is not part of the content). */
  stop_token_ids?: number[];
  /** Maximum tokens to generate (>= 1). */
  max_tokens?: number;
  /** Newer OpenAI name for max_tokens. */
  max_completion_tokens?: number;
  /** Report the log-probability of each generated token. */
  logprobs?: boolean;
  /** 0..20 most likely alternatives per position (needs logprobs). */
  top_logprobs?: number;
}

/** What the sampler works with: every field present, defaults applied, ids checked against the vocabulary. */
export interface ResolvedSampling {
  temperature: number;
  /** temperature below 1e-5 (vLLM's epsilon): take the most likely token. */
  greedy: boolean;
  /** 0 = off. */
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  frequencyPenalty: number;
  presencePenalty: number;
  logitBias: Map<number, number>;
  /** Always set: a random one is drawn when the request has none. */
  seed: number;
  stop: string[];
  stopTokenIds: number[];
  /** undefined = until the context is full (the engine applies its own default). */
  maxTokens: number | undefined;
  logprobs: boolean;
  topLogprobs: number;
}

export const GREEDY_EPSILON = 1e-5;
export const MAX_TOP_LOGPROBS = 20;
export const MAX_STOP_STRINGS = 16;

/** A request value the engine refuses; `param` names the offending field (defined with the other errors). */
import { SamplingParamError } from '../errors.js';
export { SamplingParamError };

/** A value as an error message shows it (NaN and Infinity stay readable). */
const show = (v: unknown) => (typeof v === 'number' ? String(v) : JSON.stringify(v));

function num(p: SamplingParams, key: keyof SamplingParams, def: number, lo: number, hi: number, loOpen = false): number {
  const v = p[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new SamplingParamError(key, `must be a finite number, got ${show(v)}`);
  if (loOpen ? v <= lo : v < lo) throw new SamplingParamError(key, `must be ${loOpen ? '>' : '>='} ${lo}, got ${v}`);
  if (v > hi) throw new SamplingParamError(key, `must be <= ${hi}, got ${v}`);
  return v;
}

function int(p: SamplingParams, key: keyof SamplingParams, lo: number, hi: number): number | undefined {
  const v = p[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new SamplingParamError(key, `must be an integer, got ${show(v)}`);
  if (v < lo || v > hi) throw new SamplingParamError(key, `must be in ${lo}..${hi}, got ${v}`);
  return v;
}

function tokenId(param: string, v: unknown, vocab: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= vocab)
    throw new SamplingParamError(param, `token id must be an integer in 0..${vocab - 1}, got ${show(v)}`);
  return v;
}

/** Checks every field and applies defaults. `vocab` bounds token ids; `randomSeed` supplies a seed when none is given. */
export function resolveSampling(p: SamplingParams | undefined, vocab: number, randomSeed: () => number): ResolvedSampling {
  p = p ?? {};
  if (typeof p !== 'object' || Array.isArray(p)) throw new SamplingParamError('sampling', 'must be an object');
  const temperature = num(p, 'temperature', 1, 0, 2);
  const topP = num(p, 'top_p', 1, 0, 1, true);
  const minP = num(p, 'min_p', 0, 0, 1);
  const repetitionPenalty = num(p, 'repetition_penalty', 1, 0, 1e6, true);
  const frequencyPenalty = num(p, 'frequency_penalty', 0, -2, 2);
  const presencePenalty = num(p, 'presence_penalty', 0, -2, 2);

  let topK = int(p, 'top_k', -1, Number.MAX_SAFE_INTEGER) ?? 0;
  if (topK < 0 || topK >= vocab) topK = 0; // -1 = off (vLLM); k >= vocab keeps everything

  const logitBias = new Map<number, number>();
  if (p.logit_bias !== undefined && p.logit_bias !== null) {
    if (typeof p.logit_bias !== 'object' || Array.isArray(p.logit_bias))
      throw new SamplingParamError('logit_bias', 'must be an object mapping token ids to biases');
    for (const [k, b] of Object.entries(p.logit_bias)) {
      if (!/^\d+$/.test(k)) throw new SamplingParamError('logit_bias', `key ${JSON.stringify(k)} is not a token id`);
      const id = tokenId('logit_bias', Number(k), vocab);
      if (typeof b !== 'number' || !Number.isFinite(b) || b < -100 || b > 100)
        throw new SamplingParamError('logit_bias', `bias for token ${id} must be a number in -100..100, got ${show(b)}`);
      if (b !== 0) logitBias.set(id, b);
    }
  }

  let seed = int(p, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
  if (seed === undefined) seed = randomSeed();

  let stop: string[] = [];
  if (p.stop !== undefined && p.stop !== null) {
    stop = typeof p.stop === 'string' ? [p.stop] : p.stop;
    if (!Array.isArray(stop)) throw new SamplingParamError('stop', 'must be a string or an array of strings');
    if (stop.length > MAX_STOP_STRINGS) throw new SamplingParamError('stop', `at most ${MAX_STOP_STRINGS} strings, got ${stop.length}`);
    for (const s of stop)
      if (typeof s !== 'string' || s.length === 0) throw new SamplingParamError('stop', 'every stop string must be a non-empty string');
    stop = [...stop];
  }

  let stopTokenIds: number[] = [];
  if (p.stop_token_ids !== undefined && p.stop_token_ids !== null) {
    if (!Array.isArray(p.stop_token_ids)) throw new SamplingParamError('stop_token_ids', 'must be an array of token ids');
    stopTokenIds = p.stop_token_ids.map((v) => tokenId('stop_token_ids', v, vocab));
  }

  const maxTokens = int(p, 'max_tokens', 1, Number.MAX_SAFE_INTEGER);
  const maxCompletion = int(p, 'max_completion_tokens', 1, Number.MAX_SAFE_INTEGER);
  if (maxTokens !== undefined && maxCompletion !== undefined && maxTokens !== maxCompletion)
    throw new SamplingParamError('max_tokens', 'max_tokens and max_completion_tokens disagree');

  if (p.logprobs !== undefined && p.logprobs !== null && typeof p.logprobs !== 'boolean')
    throw new SamplingParamError('logprobs', 'must be a boolean');
  const logprobs = p.logprobs === true;
  const topLogprobs = int(p, 'top_logprobs', 0, MAX_TOP_LOGPROBS) ?? 0;
  if (topLogprobs > 0 && !logprobs) throw new SamplingParamError('top_logprobs', 'needs logprobs: true');

  return {
    temperature,
    greedy: temperature < GREEDY_EPSILON,
    topK,
    topP,
    minP,
    repetitionPenalty,
    frequencyPenalty,
    presencePenalty,
    logitBias,
    seed,
    stop,
    stopTokenIds,
    maxTokens: maxTokens ?? maxCompletion,
    logprobs,
    topLogprobs,
  };
}

/** Names of the fields resolveSampling reads, so a request object can be split into sampling and the rest. */
export const SAMPLING_KEYS: readonly (keyof SamplingParams)[] = [
  'temperature', 'top_p', 'top_k', 'min_p', 'repetition_penalty', 'frequency_penalty', 'presence_penalty',
  'logit_bias', 'seed', 'stop', 'stop_token_ids', 'max_tokens', 'max_completion_tokens', 'logprobs', 'top_logprobs',
];
