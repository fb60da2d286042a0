// `harmonium score`: runs a token sequence through the model as ONE prefill (every position's logits) and prints
// each position's log-probability of the next given token and the perplexity over the T-1 predictions; --out
// writes the fp32 logits [T, V] as a .npy file. The direct way to hold a backend against an oracle's logits.
import type { Command } from 'commander';
import { Option } from 'commander';
import { Harmonium, type ScoreResult } from '../api.js';
import { writeNpy } from '../util/npy.js';

export type { ScoreResult } from '../api.js';

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
  if (backend === 'cuda') {
    const devices = Harmonium.cudaDevices();
    if (devices.count === 0) {
      throw new Error(`score: --backend cuda needs a CUDA GPU, and none is usable here (${devices.reason || 'no device found'}); use --backend cpu`);
    }
  }
  const result = await Harmonium.score(tokens, { model: opts.model, backend, expertFormat: opts.expertFormat });
  if (opts.out !== undefined) await writeNpy(opts.out, result.logits, [tokens.length, result.vocab]);
  return result;
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
