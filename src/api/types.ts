// The library's public types: what Harmonium.load takes, what chat() and generate() stream and resolve to.
import type { DummyModelName } from '../model/dummy.js';
import type { ChatRequest, ToolCall } from '../harmony/types.js';
import type { SamplingParams } from '../sampling/params.js';
import type { TokenLogprob } from '../sampling/sampler.js';

export interface HarmoniumLoadOptions {
  /** A gpt-oss checkpoint directory (Hugging Face layout). Default: the embedded tiny model. */
  model?: string;
  /** Default 'cpu'. */
  backend?: 'cpu' | 'cuda';
  /** Random weights with a real gpt-oss shape instead of a checkpoint (benchmarks, memory planning). */
  dummyWeights?: DummyModelName;
  /** Longest sequence (prompt + answer). Default: the model's maximum, or what the KV cache holds if less. */
  contextLength?: number;
  /** Called while weights load: bytes done and bytes in all. */
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  /** max_tokens when a request gives none. Default: 64 for the tiny model and dummy weights, else up to the context end. */
  defaultMaxTokens?: number;
  /** KV cache blocks (0 = as many as the backend's memory allows) and positions per block (defaults: buildInfo()). */
  numBlocks?: number;
  blockSize?: number;
  /**
   * Sliding-window layers keep only their window's KV (128 positions on gpt-oss) in blocks of their own, so
   * blocks are half as large and the same memory holds about twice the context. Default true; false gives every
   * layer a slot in one block table (the layout before it, kept for A/B runs).
   */
  windowKv?: boolean;
  /** Sequences and tokens per engine step (defaults: buildInfo().defaults[backend]). */
  maxSeqs?: number;
  maxBatchTokens?: number;
  /**
   * The scheduler's token budget of one step (decoding sequences first, then prompt chunks), at most
   * maxBatchTokens (its default), and the prompt tokens one request prefills per step at most (default: the step
   * budget). Smaller steps keep running requests' inter-token latency low while prompts are read; larger ones read
   * prompts faster.
   */
  stepTokens?: number;
  prefillChunk?: number;
  /** CUDA only: 'mxfp4' (sm_90+) or 'bf16' experts. */
  expertFormat?: 'mxfp4' | 'bf16';
  /** CPU threads (0 = all cores). */
  threads?: number;
  /**
   * Keep full KV blocks after their requests end and share them with every request whose prompt starts with the
   * same tokens, which then prefills only the rest (a conversation's next turn, a shared system prompt). Default true.
   */
  prefixCaching?: boolean;
  signal?: AbortSignal;
}

/** A chat request (OpenAI Chat Completions shape plus the harmony options) with its sampling fields. */
export type ChatCompletionRequest = ChatRequest & SamplingParams;

export interface CallOptions {
  signal?: AbortSignal;
  /**
   * chat() only: harmony text the assistant's output must start with (after `<|start|>assistant`), e.g.
   * `<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>` to force that call. It is
   * appended to the prompt and read by the parser as the start of the output.
   */
  assistantPrefix?: string;
  /** Keep generating past the model's end tokens, to max_tokens (vLLM's ignore_eos; benchmarks). */
  ignoreEos?: boolean;
  /**
   * Calls share cached prompt blocks only under the same salt (vLLM's cache_salt): a shared cache is a timing side
   * channel, so give each tenant its own. Default: one cache for all.
   */
  cacheSalt?: string;
}

/** What Harmonium.status() reports. */
export interface EngineStatus {
  running: number;
  waiting: number;
  kvBlocksFree: number;
  kvBlocksTotal: number;
  preemptions: number;
  /** Prefix cache lookups so far, in prompt tokens: looked up, and found cached (vLLM's prefix_cache_queries / hits). */
  prefixCacheQueries: number;
  prefixCacheHits: number;
  /** Sequences one step may hold (load's maxSeqs). */
  maxSeqs: number;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Prompt tokens whose KV came from the prefix cache (OpenAI's usage shape); on a finished call's usage. */
  prompt_tokens_details?: { cached_tokens: number };
}

export interface Timings {
  /** From the call to the first generated token. */
  time_to_first_token_ms: number;
  total_ms: number;
  /** Generated tokens per second after the first one (decode rate). */
  tokens_per_second: number;
}

/** Why generation ended: a stop token or string, max_tokens or the context end, or a tool call to answer. */
export type ChatFinishReason = 'stop' | 'length' | 'tool_calls';

export type ChatEvent =
  /** Chain of thought (the analysis channel). */
  | { type: 'reasoning'; delta: string }
  /** The answer (the final channel), or a preamble the model writes to the user on the commentary channel. */
  | { type: 'content'; delta: string }
  /** Arguments text of the index-th function call as the model writes it (the call's id is the one tool_call will carry). */
  | { type: 'tool_arguments'; index: number; id: string; name: string; delta: string }
  /** A complete function call (arguments: JSON text). */
  | { type: 'tool_call'; tool_call: Required<Pick<ToolCall, 'id' | 'type' | 'function'>> }
  | { type: 'done'; message: ChatResult };

export interface ChatResult {
  role: 'assistant';
  content: string;
  reasoning: string;
  tool_calls: Required<Pick<ToolCall, 'id' | 'type' | 'function'>>[];
  finish_reason: ChatFinishReason;
  usage: Usage;
  timings: Timings;
  /** The model's output did not follow the harmony format somewhere; the result is a best effort. */
  malformed: boolean;
  /** Per generated token, when logprobs were requested. */
  logprobs?: GeneratedToken[];
}

/** One generated token of generate() (and chat's logprobs). */
export interface GeneratedToken {
  token: number;
  /** The token's text (special tokens written out); bytes of an unfinished character wait for the next token. */
  text: string;
  logprob?: number;
  top_logprobs?: TokenLogprob[];
}

export interface GenerateResult {
  tokens: number[];
  text: string;
  finish_reason: 'stop' | 'length';
  usage: Usage;
  timings: Timings;
}

/**
 * An async iterable of events that also carries the final outcome. Leaving the iteration early (`break`, or the
 * iterator's `return()`) cancels the call: generation stops, its KV cache blocks are freed, and `.result` rejects
 * with an AbortError.
 */
export interface Stream<E, R> extends AsyncIterable<E> {
  /** Resolves when generation ends; rejects on a bad request, an abort (the signal's reason) or a closed model. */
  readonly result: Promise<R>;
  /** What the call has done so far (tokens and times); after it ends, its final figures. For a summary on Ctrl-C. */
  progress(): { usage: Usage; timings: Timings };
}
