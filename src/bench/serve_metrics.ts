// The serving benchmark's figures, defined as vLLM's `bench serve` defines them, and its printed block:
//   TTFT   time to the first text chunk;   TPOT = (E2EL - TTFT) / (output tokens - 1), per request;
//   ITL    gaps between chunks, pooled over all requests;   E2EL   send to last byte;
//   throughputs over the benchmark's duration; peak output throughput = the most tokens in one 1-second bucket
//   (each chunk's time stamped); peak concurrency = the most requests in flight in one 1-second bucket.
// Percentiles interpolate linearly between order statistics (numpy's default).
import type { RequestOutput } from './serve_client.js';

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const x = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(x);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo);
}

const mean = (v: number[]) => (v.length ? v.reduce((a, b) => a + b, 0) / v.length : 0);
const std = (v: number[]) => {
  const m = mean(v);
  return Math.sqrt(mean(v.map((x) => (x - m) ** 2)));
};

export const METRICS = ['ttft', 'tpot', 'itl', 'e2el'] as const;
export type MetricName = (typeof METRICS)[number];

export interface BenchMetrics {
  completed: number;
  failed: number;
  duration: number;
  totalInput: number;
  totalOutput: number;
  requestThroughput: number;
  outputThroughput: number;
  totalTokenThroughput: number;
  peakOutputThroughput: number;
  peakConcurrency: number;
  /** Per metric, in ms: mean, median, std and the asked percentiles. */
  stats: Record<MetricName, { mean: number; median: number; std: number; percentiles: [number, number][] }>;
}

export function computeMetrics(outputs: RequestOutput[], duration: number, percentiles: number[]): BenchMetrics {
  const ok = outputs.filter((o) => o.success);
  const values: Record<MetricName, number[]> = { ttft: [], tpot: [], itl: [], e2el: [] };
  let totalInput = 0;
  let totalOutput = 0;
  for (const o of ok) {
    totalInput += o.promptLen;
    totalOutput += o.outputTokens;
    values.ttft.push(o.ttft);
    values.e2el.push(o.latency);
    values.itl.push(...o.itl);
    if (o.outputTokens > 1) values.tpot.push((o.latency - o.ttft) / (o.outputTokens - 1));
  }
  let peakOutput = 0;
  let peakConcurrency = 0;
  if (ok.length) {
    const t0 = Math.min(...ok.map((o) => o.startTime));
    const end = Math.max(...ok.map((o) => o.startTime + o.latency));
    const buckets = Math.ceil(end - t0) + 1;
    const tokens = new Float64Array(buckets);
    const inFlight = new Float64Array(buckets);
    for (const o of ok) {
      let t = o.startTime + o.ttft;
      tokens[Math.floor(t - t0)]++;
      for (const gap of o.itl) tokens[Math.floor((t += gap) - t0)]++;
      for (let s = Math.floor(o.startTime - t0); s <= Math.floor(o.startTime + o.latency - t0); s++) inFlight[s]++;
    }
    peakOutput = Math.max(...tokens);
    peakConcurrency = Math.max(...inFlight);
  }
  const stats = {} as BenchMetrics['stats'];
  for (const m of METRICS) {
    const v = values[m].map((x) => x * 1000).sort((a, b) => a - b);
    stats[m] = { mean: mean(v), median: percentile(v, 50), std: std(v), percentiles: percentiles.map((p) => [p, percentile(v, p)]) };
  }
  return {
    completed: ok.length,
    failed: outputs.length - ok.length,
    duration,
    totalInput,
    totalOutput,
    requestThroughput: ok.length / duration,
    outputThroughput: totalOutput / duration,
    totalTokenThroughput: (totalInput + totalOutput) / duration,
    peakOutputThroughput: peakOutput,
    peakConcurrency,
    stats,
  };
}

const HEADERS: Record<MetricName, [string, string]> = {
  ttft: ['Time to First Token', 'TTFT'],
  tpot: ['Time per Output Token (excl. 1st token)', 'TPOT'],
  itl: ['Inter-token Latency', 'ITL'],
  e2el: ['End-to-end Latency', 'E2EL'],
};

const center = (s: string, fill: string) => {
  const pad = 50 - s.length;
  const left = Math.floor(pad / 2);
  return fill.repeat(Math.max(0, left)) + s + fill.repeat(Math.max(0, pad - left));
};
const row = (label: string, value: number | string) =>
  `${label.padEnd(40)} ${(typeof value === 'number' ? (Number.isInteger(value) ? String(value) : value.toFixed(2)) : value).padEnd(10)}`;
const f2 = (v: number) => v.toFixed(2);

/** The block `vllm bench serve` prints, line for line. */
export function formatBlock(m: BenchMetrics, o: { maxConcurrency?: number; requestRate: number; metrics: MetricName[] }): string {
  const lines = [center(' Serving Benchmark Result ', '='), row('Successful requests:', m.completed), row('Failed requests:', m.failed)];
  if (o.maxConcurrency !== undefined) lines.push(row('Maximum request concurrency:', o.maxConcurrency));
  if (Number.isFinite(o.requestRate)) lines.push(row('Request rate configured (RPS):', f2(o.requestRate)));
  lines.push(
    row('Benchmark duration (s):', f2(m.duration)),
    row('Total input tokens:', m.totalInput),
    row('Total generated tokens:', m.totalOutput),
    row('Request throughput (req/s):', f2(m.requestThroughput)),
    row('Output token throughput (tok/s):', f2(m.outputThroughput)),
    row('Peak output token throughput (tok/s):', f2(m.peakOutputThroughput)),
    row('Peak concurrent requests:', f2(m.peakConcurrency)),
    row('Total token throughput (tok/s):', f2(m.totalTokenThroughput)),
  );
  for (const name of o.metrics) {
    const [title, short] = HEADERS[name];
    const s = m.stats[name];
    lines.push(center(title, '-'), row(`Mean ${short} (ms):`, f2(s.mean)), row(`Median ${short} (ms):`, f2(s.median)));
    for (const [p, v] of s.percentiles) lines.push(row(`P${Number.isInteger(p) ? p : p.toFixed(1)} ${short} (ms):`, f2(v)));
  }
  lines.push('='.repeat(50));
  return lines.join('\n');
}

/** The --save-result JSON, with vLLM's key names. */
export function resultJson(m: BenchMetrics, outputs: RequestOutput[], info: Record<string, unknown>): Record<string, unknown> {
  const ok = outputs.filter((o) => o.success);
  const r: Record<string, unknown> = {
    ...info,
    duration: m.duration,
    completed: m.completed,
    failed: m.failed,
    total_input_tokens: m.totalInput,
    total_output_tokens: m.totalOutput,
    request_throughput: m.requestThroughput,
    output_throughput: m.outputThroughput,
    total_token_throughput: m.totalTokenThroughput,
    max_output_tokens_per_s: m.peakOutputThroughput,
    max_concurrent_requests: m.peakConcurrency,
  };
  for (const name of METRICS) {
    const s = m.stats[name];
    r[`mean_${name}_ms`] = s.mean;
    r[`median_${name}_ms`] = s.median;
    r[`std_${name}_ms`] = s.std;
    for (const [p, v] of s.percentiles) r[`p${p}_${name}_ms`] = v;
  }
  Object.assign(r, {
    input_lens: ok.map((o) => o.promptLen),
    output_lens: ok.map((o) => o.outputTokens),
    ttfts: ok.map((o) => o.ttft),
    itls: ok.map((o) => o.itl),
    errors: outputs.filter((o) => !o.success).map((o) => o.error),
  });
  return r;
}
