// `harmonium bench serve`: vLLM's `bench serve` against any OpenAI-compatible server (ours, vLLM, llama-server):
// the same flags, definitions and printed block (src/bench/serve_metrics.ts), a progress bar, a JSON result.
import { writeFileSync } from 'node:fs';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { randomDataset, sharegptDataset } from '../bench/serve_dataset.js';
import { computeMetrics, formatBlock, METRICS, resultJson, type MetricName } from '../bench/serve_metrics.js';
import { runBenchmark } from '../bench/serve_run.js';
import { intFlag } from './serve.js';

interface BenchServeFlags {
  baseUrl: string;
  endpoint: '/v1/completions' | '/v1/chat/completions';
  model?: string;
  datasetName: 'random' | 'sharegpt';
  datasetPath?: string;
  numPrompts: number;
  randomInputLen: number;
  randomOutputLen: number;
  randomRangeRatio: number;
  sharegptOutputLen?: number;
  requestRate: number;
  maxConcurrency?: number;
  ignoreEos?: boolean;
  temperature: number;
  seed: number;
  percentileMetrics: string;
  metricPercentiles: string;
  saveResult?: string | boolean;
  disableTqdm?: boolean;
}

const positiveNumber = (v: string) => {
  const n = v === 'inf' ? Infinity : Number(v);
  if (!(n > 0)) throw new InvalidArgumentError('expected a number > 0 or inf');
  return n;
};

const fraction = (v: string) => {
  const n = Number(v);
  if (!(n >= 0 && n < 1)) throw new InvalidArgumentError('expected a number in [0, 1)');
  return n;
};

async function servedModel(baseUrl: string, apiKey: string | undefined): Promise<string> {
  const res = await fetch(`${baseUrl}/v1/models`, { headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} });
  if (!res.ok) throw new Error(`GET ${baseUrl}/v1/models: HTTP ${res.status}; give --model`);
  const list = (await res.json()) as { data?: { id: string }[] };
  const id = list.data?.[0]?.id;
  if (!id) throw new Error(`GET ${baseUrl}/v1/models lists no model; give --model`);
  return id;
}

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('benchmarks');
  bench
    .command('serve')
    .description("vLLM's serving benchmark against any OpenAI-compatible server (API key from OPENAI_API_KEY)")
    .option('--base-url <url>', 'the server', 'http://127.0.0.1:8000')
    .addOption(new Option('--endpoint <path>', 'API to call').choices(['/v1/completions', '/v1/chat/completions']).default('/v1/completions'))
    .option('--model <name>', 'model name to send (default: the first of GET /v1/models)')
    .addOption(new Option('--dataset-name <name>', 'prompts').choices(['random', 'sharegpt']).default('random'))
    .option('--dataset-path <file>', 'ShareGPT JSON (for --dataset-name sharegpt)')
    .option('--num-prompts <n>', 'requests to send', intFlag(1), 1000)
    .option('--random-input-len <n>', 'prompt tokens (random)', intFlag(1), 1024)
    .option('--random-output-len <n>', 'max tokens per answer (random)', intFlag(1), 128)
    .option('--random-range-ratio <r>', 'lengths drawn from [len * (1 - r), len * (1 + r)]', fraction, 0)
    .option('--sharegpt-output-len <n>', 'max tokens per answer instead of the reply length (sharegpt)', intFlag(1))
    .option('--request-rate <r>', 'requests per second (Poisson arrivals), or inf: all at once', positiveNumber, Infinity)
    .option('--max-concurrency <n>', 'requests in flight at most', intFlag(1))
    .option('--ignore-eos', 'generate to max tokens (sends ignore_eos)')
    .option('--temperature <t>', 'sampling temperature (vLLM bench default: 0, greedy)', Number, 0)
    .option('--seed <n>', 'dataset seed', intFlag(0), 0)
    .option('--percentile-metrics <list>', 'metrics to print, of ttft,tpot,itl,e2el', 'ttft,tpot,itl,e2el')
    .option('--metric-percentiles <list>', 'percentiles to print', '99')
    .option('--save-result [file]', 'write the result JSON (default name: harmonium-<rate>qps-concurrency<n>-<model>-<date>.json)')
    .option('--disable-tqdm', 'no progress bar')
    .action(async (f: BenchServeFlags) => {
      const metrics = f.percentileMetrics.split(',').map((s) => s.trim()) as MetricName[];
      for (const m of metrics) if (!METRICS.includes(m)) throw new Error(`--percentile-metrics: unknown metric '${m}' (ttft, tpot, itl, e2el)`);
      const percentiles = f.metricPercentiles.split(',').map(Number);
      if (percentiles.some((p) => !(p > 0 && p < 100))) throw new Error('--metric-percentiles: each must be in (0, 100)');
      if (f.datasetName === 'sharegpt' && !f.datasetPath) throw new Error('--dataset-name sharegpt needs --dataset-path');
      const baseUrl = f.baseUrl.replace(/\/+$/, '');
      const apiKey = process.env.OPENAI_API_KEY;
      const model = f.model ?? (await servedModel(baseUrl, apiKey));
      const requests =
        f.datasetName === 'random'
          ? randomDataset({ numPrompts: f.numPrompts, inputLen: f.randomInputLen, outputLen: f.randomOutputLen, rangeRatio: f.randomRangeRatio, seed: f.seed })
          : sharegptDataset(f.datasetPath!, f.numPrompts, f.seed, f.sharegptOutputLen);
      const out = process.stdout;
      out.write(`Traffic request rate: ${Number.isFinite(f.requestRate) ? f.requestRate : 'inf'}\nBurstiness factor: 1.0 (Poisson process)\nMaximum request concurrency: ${f.maxConcurrency ?? 'None'}\n`);
      const { outputs, duration } = await runBenchmark(requests, {
        baseUrl,
        endpoint: f.endpoint,
        model,
        ignoreEos: f.ignoreEos === true,
        temperature: f.temperature,
        apiKey,
        requestRate: f.requestRate,
        maxConcurrency: f.maxConcurrency,
        seed: f.seed,
        progress: f.disableTqdm ? undefined : process.stderr,
      });
      const m = computeMetrics(outputs, duration, percentiles);
      out.write(`${formatBlock(m, { maxConcurrency: f.maxConcurrency, requestRate: f.requestRate, metrics })}\n`);
      const firstError = outputs.find((o) => !o.success)?.error;
      if (firstError) process.stderr.write(`harmonium: ${m.failed} request(s) failed; the first: ${firstError}\n`);
      if (f.saveResult) {
        const stamp = new Date().toISOString().replace(/[-:]/g, '').slice(0, 15);
        const file =
          typeof f.saveResult === 'string'
            ? f.saveResult
            : `harmonium-${Number.isFinite(f.requestRate) ? f.requestRate : 'inf'}qps-concurrency${f.maxConcurrency ?? 'None'}-${model.split('/').pop()}-${stamp}.json`;
        const info = {
          date: stamp,
          backend: 'openai',
          endpoint: f.endpoint,
          model_id: model,
          base_url: baseUrl,
          dataset_name: f.datasetName,
          num_prompts: f.numPrompts,
          request_rate: Number.isFinite(f.requestRate) ? f.requestRate : 'inf',
          burstiness: 1.0,
          max_concurrency: f.maxConcurrency ?? null,
          random_input_len: f.randomInputLen,
          random_output_len: f.randomOutputLen,
          ignore_eos: f.ignoreEos === true,
        };
        writeFileSync(file, `${JSON.stringify(resultJson(m, outputs, info), null, 2)}\n`);
        process.stderr.write(`harmonium: result written to ${file}\n`);
      }
      if (m.completed === 0) throw new Error('every request failed');
    });
}
