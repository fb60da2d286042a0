// Prometheus metrics under vLLM's names (vllm:*), so dashboards made for vLLM read ours: running / waiting
// requests and KV-cache usage (read from the engine at scrape time), prompt / generation token, preemption and
// prefix-cache counters, and TTFT / TPOT / end-to-end latency histograms. Each server has its own registry.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineStatus } from '../api/types.js';

/** vLLM's buckets for these histograms, in seconds. */
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export interface RequestTimes {
  promptTokens: number;
  completionTokens: number;
  /** Seconds from arrival to the first token, and to the end. */
  ttft: number;
  e2e: number;
  finishReason: string;
}

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly promptTokens: Counter;
  private readonly generationTokens: Counter;
  private readonly success: Counter<'model_name' | 'finished_reason'>;
  private readonly ttft: Histogram;
  private readonly tpot: Histogram;
  private readonly e2e: Histogram;
  private readonly labels: { model_name: string };

  constructor(modelName: string, status: () => EngineStatus | undefined) {
    this.labels = { model_name: modelName };
    const registers = [this.registry];
    const labelNames = ['model_name'] as const;
    const gauge = (name: string, help: string, read: (s: EngineStatus) => number) =>
      new Gauge({
        name,
        help,
        labelNames,
        registers,
        collect() {
          const s = status();
          this.set({ model_name: modelName }, s ? read(s) : 0);
        },
      });
    gauge('vllm:num_requests_running', 'Requests generating in the engine now.', (s) => s.running);
    gauge('vllm:num_requests_waiting', 'Requests waiting for the engine.', (s) => s.waiting);
    gauge('vllm:kv_cache_usage_perc', 'KV-cache usage: 1 means every block is in use.', (s) => 1 - s.kvBlocksFree / s.kvBlocksTotal);
    // The engine's own counters, read at scrape time.
    const engineCounter = (name: string, help: string, read: (s: EngineStatus) => number) =>
      new Counter({
        name,
        help,
        labelNames,
        registers,
        collect() {
          const s = status();
          if (s) this.reset(), this.inc({ model_name: modelName }, read(s));
        },
      });
    engineCounter('vllm:num_preemptions_total', 'Preemptions by the engine (a sequence gave its KV blocks back, to recompute later).', (s) => s.preemptions);
    engineCounter('vllm:prefix_cache_queries_total', 'Prompt tokens looked up in the prefix cache.', (s) => s.prefixCacheQueries);
    engineCounter('vllm:prefix_cache_hits_total', 'Prompt tokens found in the prefix cache (their prefill skipped).', (s) => s.prefixCacheHits);
    this.promptTokens = new Counter({ name: 'vllm:prompt_tokens_total', help: 'Prompt tokens processed.', labelNames, registers });
    this.generationTokens = new Counter({ name: 'vllm:generation_tokens_total', help: 'Tokens generated.', labelNames, registers });
    this.success = new Counter({
      name: 'vllm:request_success_total',
      help: 'Requests finished, by finish reason.',
      labelNames: ['model_name', 'finished_reason'],
      registers,
    });
    this.ttft = new Histogram({ name: 'vllm:time_to_first_token_seconds', help: 'Time to first token.', labelNames, buckets: TTFT_BUCKETS, registers });
    this.tpot = new Histogram({ name: 'vllm:time_per_output_token_seconds', help: 'Time per output token after the first.', labelNames, buckets: TPOT_BUCKETS, registers });
    this.e2e = new Histogram({ name: 'vllm:e2e_request_latency_seconds', help: 'End-to-end request latency.', labelNames, buckets: E2E_BUCKETS, registers });
  }

  /** Records a request that generated to its end. */
  finished(r: RequestTimes): void {
    this.promptTokens.inc(this.labels, r.promptTokens);
    this.generationTokens.inc(this.labels, r.completionTokens);
    this.success.inc({ ...this.labels, finished_reason: r.finishReason });
    this.ttft.observe(this.labels, r.ttft);
    this.e2e.observe(this.labels, r.e2e);
    if (r.completionTokens > 1) this.tpot.observe(this.labels, (r.e2e - r.ttft) / (r.completionTokens - 1));
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
