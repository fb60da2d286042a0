// What every route shares: the model (absent while it loads), the options, admission and metrics, and the
// lifecycle of one generation request (admission slot, client-disconnect abort, metrics at the end).
import type { FastifyReply } from 'fastify';
import type { Harmonium } from '../api.js';
import type { ChatResult, Timings, Usage } from '../api/types.js';
import { Admission } from './admission.js';
import { ApiError } from './errors.js';
import { ServerMetrics } from './metrics.js';

/** Requests that may wait for the engine before more are refused with 429. */
export const DEFAULT_MAX_QUEUE = 512;

/** Where reasoning goes on chat messages and deltas. */
export type ReasoningField = 'both' | 'reasoning' | 'reasoning_content';

export interface ServerOptions {
  /** The name clients send as `model` (default: the model's source). */
  servedModelName?: string;
  /** Bearer key every route but /health requires. */
  apiKey?: string;
  /** Requests that may wait beyond max-num-seqs running ones (default 512). */
  maxQueue?: number;
  /** Requests the engine runs at once (default: the model's maxSeqs). */
  maxNumSeqs?: number;
  reasoningField?: ReasoningField;
  /** Request body limit in bytes (default 8 MiB). */
  bodyLimit?: number;
}

export class ServerContext {
  model: Harmonium | undefined;
  /** Load progress while the model loads. */
  loading = { loadedBytes: 0, totalBytes: 0 };
  readonly modelName: string;
  readonly admission: Admission;
  readonly metrics: ServerMetrics;
  readonly reasoningField: ReasoningField;

  constructor(readonly options: ServerOptions, modelName: string) {
    this.modelName = options.servedModelName ?? modelName;
    this.admission = new Admission(() => options.maxNumSeqs ?? this.model?.status().maxSeqs ?? 0, options.maxQueue ?? DEFAULT_MAX_QUEUE);
    this.metrics = new ServerMetrics(this.modelName, () => this.model?.status());
    this.reasoningField = options.reasoningField ?? 'both';
  }

  /** The model, or 503 while it loads. */
  ready(): Harmonium {
    if (!this.model) throw new ApiError(503, 'model_loading', 'the model is loading; see GET /health', null, { 'retry-after': '5' });
    return this.model;
  }

  /** `model` of a request: absent, or the served name (else 404). */
  checkModel(model: unknown): void {
    if (model === undefined || model === null) return;
    if (typeof model !== 'string') throw new ApiError(400, 'invalid_type', 'model: must be a string', 'model');
    if (model !== this.modelName) throw new ApiError(404, 'model_not_found', `the model '${model}' does not exist; this server serves '${this.modelName}'`, 'model');
  }

  /** The reasoning fields of a chat message or delta. */
  reasoning(text: string): Record<string, string> {
    if (this.reasoningField === 'reasoning') return { reasoning: text };
    if (this.reasoningField === 'reasoning_content') return { reasoning_content: text };
    return { reasoning: text, reasoning_content: text };
  }

  /**
   * Runs one generation request: a queue slot first (429 when full, before anything else), an AbortSignal that
   * fires when the client goes away, metrics when it finishes. `run` returns what finished, for the metrics.
   */
  async generation(
    reply: FastifyReply,
    run: (model: Harmonium, signal: AbortSignal) => Promise<Finished | undefined>,
  ): Promise<void> {
    const model = this.ready();
    const release = this.admission.enter();
    const ac = new AbortController();
    const onClose = () => {
      if (!reply.raw.writableFinished) ac.abort(new ClientGone());
    };
    // The response's 'close' comes when the connection ends; before the answer was written, the client left.
    reply.raw.on('close', onClose);
    try {
      const done = await run(model, ac.signal);
      if (done) this.finished(done);
    } catch (err) {
      if (ac.signal.aborted) return; // the client is gone: nobody to answer
      throw err;
    } finally {
      release();
    }
  }

  private finished(f: Finished): void {
    this.metrics.finished({
      promptTokens: f.usage.prompt_tokens,
      completionTokens: f.usage.completion_tokens,
      ttft: f.timings.time_to_first_token_ms / 1000,
      e2e: f.timings.total_ms / 1000,
      finishReason: f.finishReason,
    });
  }
}

export interface Finished {
  usage: Usage;
  timings: Timings;
  finishReason: string;
}

export const finishedChat = (r: ChatResult): Finished => ({ usage: r.usage, timings: r.timings, finishReason: r.finish_reason });

/** The abort reason when the client closed the connection. */
export class ClientGone extends Error {
  constructor() {
    super('the client closed the connection');
    this.name = 'AbortError';
  }
}

let idCounter = 0;
/** An id with the API's prefix (`chatcmpl-`, `resp_`, ...). */
export function newId(prefix: string): string {
  idCounter = (idCounter + 1) % 1e9;
  return `${prefix}${Date.now().toString(36)}${idCounter.toString(36).padStart(4, '0')}`;
}

export const nowSeconds = () => Math.floor(Date.now() / 1000);
