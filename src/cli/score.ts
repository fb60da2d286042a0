// `harmonium score`: runs a token sequence through the model as ONE prefill (every position's logits) and prints
// each position's log-probability of the next given token and the perplexity over the T-1 predictions; --out
// writes the fp32 logits [T, V] as a .npy file. The direct way to hold a backend against an oracle's logits.
import type { Command } from 'commander';
import { Option } from 'commander';
import { loadModel } from '../model/load.js';
import { ensureTinyModel } from '../model/tiny.js';
import { loadAddon } from '../native.js';
import { writeNpy } from '../util/npy.js';

export interface ScoreOptions {
  /** Checkpoint directory; the embedded tiny model when absent. */
  model?: string;
  /** Comma-separated token ids, e.g. "1,2,3". */
  tokens: string;
  backend?: 'cpu' | 'cuda';
  /** Write the logits [T, V] (fp32) here. */
  out?: string;
  /** CUDA only: decode MXFP4 experts inside the matmul (default) or once at load to bf16 (the fallback path). */
  expertFormat?: 'mxfp4' | 'bf16';
  /** Print the result as JSON (without the logits). */
  json?: boolean;
}

export interface ScoreResult {
  tokens: number[];
  /** [T - 1]: log p(tokens[t + 1] | tokens[0..t]) */
  logprobs: number[];
  /** exp(-mean(logprobs)); NaN when there is nothing to predict (one token). */
  perplexity: number;
  vocab: number;
  /** [T * V] */
  logits: Float32Array;
  backend: string;
  deviceName: string;
  prefillMs: number;
}

export function registerScore(program: Command): void {
  program
    .command('score')
    .description('log-probability of each next token and the perplexity of a token sequence (one prefill)')
    .option('--model <dir>', 'a gpt-oss checkpoint directory (default: the embedded tiny model)')
    .requiredOption('--tokens <ids>', 'comma-separated token ids, e.g. 1,2,3')
    .addOption(new Option('--backend <name>', 'where to run').choices(['cpu', 'cuda']).default('cpu'))
    .option('--out <file>', 'write the fp32 logits [T, V] as a .npy file')
    .addOption(new Option('--expert-format <format>', 'cuda: MXFP4 in the matmul, or the bf16 fallback').choices(['mxfp4', 'bf16']))
    .option('--json', 'machine-readable output (everything but the logits)')
    .action(async (opts: ScoreOptions) => {
      const result = await runScore(opts);
      process.stdout.write(opts.json ? scoreJson(result, opts) : formatScore(result, opts));
    });
}

/** Parses "1,2,3" (spaces allowed); throws a one-line error naming the bad entry. */
export function parseTokenList(text: string): number[] {
  const parts = text.split(',').map((s) => s.trim());
  if (parts.length === 0 || (parts.length === 1 && parts[0] === '')) throw new Error('score: --tokens is empty');
  return parts.map((p, i) => {
    if (!/^\d+$/.test(p) || !Number.isSafeInteger(Number(p))) {
      throw new Error(`score: --tokens entry ${i} ("${p}") is not a non-negative integer token id`);
    }
    return Number(p);
  });
}

export async function runScore(opts: ScoreOptions): Promise<ScoreResult> {
  const tokens = parseTokenList(opts.tokens);
  const backend = opts.backend ?? 'cpu';
  if (backend !== 'cpu' && backend !== 'cuda') throw new Error(`score: unknown backend '${String(backend)}' (expected cpu or cuda)`);
  if (backend === 'cuda') {
    const devices = loadAddon().cudaDevices();
    if (devices.count === 0) {
      throw new Error(`score: --backend cuda needs a CUDA GPU, and none is usable here (${devices.reason || 'no device found'}); use --backend cpu`);
    }
  }
  const T = tokens.length;
  const blockSize = 16;
  const numBlocks = Math.ceil(T / blockSize);
  const model = await loadModel({
    model: opts.model ?? (await ensureTinyModel()),
    backend,
    blockSize,
    numBlocks,
    maxSeqs: 1,
    maxBatchTokens: Math.max(T, 16),
    ...(opts.expertFormat ? { expertFormat: opts.expertFormat } : {}),
  });
  try {
    const V = model.config.vocabSize;
    tokens.forEach((id, i) => {
      if (id >= V) throw new Error(`score: token ${i} (id ${id}) is outside the vocabulary 0..${V - 1}`);
    });
    if (T > model.config.maxPositions) throw new Error(`score: ${T} tokens exceed the model's ${model.config.maxPositions} positions`);
    const start = performance.now();
    const out = await model.step({
      tokens: Int32Array.from(tokens),
      positions: Int32Array.from(tokens, (_, i) => i),
      seqLens: Int32Array.of(T),
      blockTables: Int32Array.from({ length: numBlocks }, (_, i) => i),
      maxBlocksPerSeq: numBlocks,
      allPositions: true,
      fullLogits: Uint8Array.of(1),
    });
    const prefillMs = performance.now() - start;
    if (out.numRows !== T || out.logits.length !== T * V) {
      throw new Error(`score: the backend returned ${out.numRows} rows of logits for ${T} tokens`);
    }
    const logprobs: number[] = [];
    for (let t = 0; t + 1 < T; t++) logprobs.push(out.logits[t * V + tokens[t + 1]] - out.logsumexp[t]);
    const mean = logprobs.reduce((a, b) => a + b, 0) / logprobs.length;
    if (opts.out !== undefined) await writeNpy(opts.out, out.logits, [T, V]);
    const info = model.info();
    return {
      tokens,
      logprobs,
      perplexity: logprobs.length > 0 ? Math.exp(-mean) : NaN,
      vocab: V,
      logits: out.logits,
      backend: info.backend,
      deviceName: info.deviceName,
      prefillMs,
    };
  } finally {
    model.close();
  }
}

export function scoreJson(r: ScoreResult, opts: Pick<ScoreOptions, 'model' | 'out'>): string {
  const { logits: _, perplexity, ...rest } = r;
  return JSON.stringify({ model: opts.model ?? 'tiny', ...rest, perplexity: Number.isNaN(perplexity) ? null : perplexity, out: opts.out ?? null }, null, 2) + '\n';
}

export function formatScore(r: ScoreResult, opts: Pick<ScoreOptions, 'model' | 'out'>): string {
  const lines: string[] = [];
  lines.push(`model    ${opts.model ?? 'embedded tiny model'}`);
  lines.push(`backend  ${r.backend} (${r.deviceName})`);
  lines.push(`tokens   ${r.tokens.length}, one prefill in ${r.prefillMs.toFixed(1)} ms`);
  lines.push('');
  lines.push(`${'pos'.padStart(6)} ${'token'.padStart(8)} ${'next'.padStart(8)} ${'logprob'.padStart(12)}`);
  r.logprobs.forEach((lp, t) => {
    lines.push(`${String(t).padStart(6)} ${String(r.tokens[t]).padStart(8)} ${String(r.tokens[t + 1]).padStart(8)} ${lp.toFixed(6).padStart(12)}`);
  });
  lines.push('');
  if (r.logprobs.length === 0) {
    lines.push('perplexity  n/a (one token: nothing to predict)');
  } else {
    const mean = r.logprobs.reduce((a, b) => a + b, 0) / r.logprobs.length;
    lines.push(`perplexity  ${r.perplexity.toFixed(4)} over ${r.logprobs.length} predictions (mean logprob ${mean.toFixed(6)})`);
  }
  if (opts.out !== undefined) lines.push(`logits   [${r.tokens.length}, ${r.vocab}] fp32 written to ${opts.out}`);
  return lines.join('\n') + '\n';
}
