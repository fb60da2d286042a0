// `harmonium inspect`: what a checkpoint (or a built-in gpt-oss config) is made of. Prints the config, the
// parameter counts (total and active per token), the bytes by kind, the bytes one decoded token must read, and
// which layers slide. Needs no GPU and no native addon.
import type { Command } from 'commander';
import { openCheckpoint } from '../model/checkpoint.js';
import { dummyConfig, isDummyModelName, DUMMY_MODEL_NAMES } from '../model/dummy.js';
import { modelSizes, type ModelSizes } from '../model/sizes.js';
import { ensureTinyModel } from '../model/tiny.js';
import type { ModelConfig } from '../model/types.js';

export interface InspectOptions {
  model?: string;
  dummyWeights?: string;
  tiny?: boolean;
  json?: boolean;
}

export interface InspectReport {
  /** The checkpoint directory, or `built-in <name>` for --dummy-weights. */
  source: string;
  config: ModelConfig;
  slidingLayers: number[];
  fullLayers: number[];
  sizes: ModelSizes;
  /** Only for a real checkpoint: the bytes of the tensors the model uses, as stored, and the files they are in. */
  checkpoint?: { tensorBytes: number; files: string[] };
}

/** Memory bandwidth the decode-limit line divides by: the H100 figure (docs/performance.md). */
const REFERENCE_BANDWIDTH = 3.0e12;

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('print a model\'s config, parameter counts, bytes by kind and sliding layers (no GPU needed)')
    .option('--model <dir>', 'a Hugging Face gpt-oss checkpoint directory')
    .option('--dummy-weights <name>', `a built-in config with no weights: ${DUMMY_MODEL_NAMES.join(' | ')}`)
    .option('--tiny', 'the embedded tiny model (generated on first use)')
    .option('--json', 'machine-readable output')
    .action(async (opts: InspectOptions) => {
      process.stdout.write(await runInspect(opts));
    });
}

/** The command's whole output for these options; throws a one-line error on bad options or a bad checkpoint. */
export async function runInspect(opts: InspectOptions): Promise<string> {
  const report = await inspectReport(opts);
  return opts.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report);
}

export async function inspectReport(opts: InspectOptions): Promise<InspectReport> {
  const given = [opts.model !== undefined, opts.dummyWeights !== undefined, opts.tiny === true].filter(Boolean).length;
  if (given !== 1) {
    throw new Error(`inspect: give exactly one of --model DIR, --dummy-weights ${DUMMY_MODEL_NAMES.join('|')}, --tiny`);
  }
  if (opts.dummyWeights !== undefined) {
    if (!isDummyModelName(opts.dummyWeights)) {
      throw new Error(`inspect: --dummy-weights: "${opts.dummyWeights}" is not one of ${DUMMY_MODEL_NAMES.join(', ')}`);
    }
    return describe(`built-in ${opts.dummyWeights} (no weights)`, dummyConfig(opts.dummyWeights));
  }
  const dir = opts.tiny ? await ensureTinyModel() : opts.model!;
  const ck = await openCheckpoint(dir);
  const report = describe(dir, ck.config);
  report.checkpoint = {
    tensorBytes: ck.tensors.reduce((a, t) => a + t.nbytes, 0),
    files: [...new Set(ck.tensors.map((t) => t.file))],
  };
  return report;
}

function describe(source: string, config: ModelConfig): InspectReport {
  const slidingLayers: number[] = [];
  const fullLayers: number[] = [];
  config.layerSliding.forEach((s, i) => (s ? slidingLayers : fullLayers).push(i));
  return { source, config, slidingLayers, fullLayers, sizes: modelSizes(config) };
}

export function formatReport(r: InspectReport): string {
  const c = r.config;
  const s = r.sizes;
  const p = s.params;
  const b = s.bytes;
  const d = s.decodeBytesPerToken;
  const rope =
    c.rope.type === 'yarn'
      ? `yarn, theta ${c.rope.theta}, factor ${c.rope.factor}, original context ${c.rope.originalMaxPositions}, ` +
        `beta fast/slow ${c.rope.betaFast}/${c.rope.betaSlow}, truncate ${c.rope.truncate}`
      : `plain, theta ${c.rope.theta}`;
  const expertKind = c.expertFormat === 'mxfp4' ? 'MXFP4 blocks + E8M0 scales, bf16 biases' : 'bf16, with biases';
  const lines = [
    `model         ${r.source}`,
    `layers        ${c.numLayers}: sliding (window ${c.slidingWindow}) ${list(r.slidingLayers)}; full ${list(r.fullLayers)}`,
    `experts       ${c.numExperts} per layer, ${c.expertsPerToken} per token, stored ${c.expertFormat}`,
    `hidden        ${c.hiddenSize}; expert intermediate ${c.intermediateSize}`,
    `attention     ${c.numHeads} query heads, ${c.numKvHeads} KV heads, head_dim ${c.headDim}, learned sinks`,
    `vocab         ${c.vocabSize}`,
    `rope          ${rope}`,
    `context       ${c.maxPositions} positions; rms_norm_eps ${c.rmsNormEps}; swiglu_limit ${c.swigluLimit}`,
    `eos / pad     ${c.eosTokenIds.join(', ') || '-'} / ${c.padTokenId >= 0 ? c.padTokenId : '-'}`,
    '',
    `parameters    ${count(p.total)} total, ${count(p.activePerToken)} active per token (top-${c.expertsPerToken} experts + attention + router + norms + lm_head)`,
    `  experts     ${count(p.experts)} (${count(p.perExpert)} per expert)`,
    `  attention   ${count(p.attention)} (q/k/v/o weights and biases, sinks)`,
    `  router      ${count(p.router)}`,
    `  norms       ${count(p.norms)}`,
    `  embedding   ${count(p.embedding)}`,
    `  lm_head     ${count(p.lmHead)}`,
    '',
    'bytes by kind',
    ...table([
      [`experts (${expertKind})`, `${bytes(b.experts)} (${bytes(b.perExpert)} per expert)`],
      ['attention + router + norms (bf16)', bytes(b.attentionRouterNorms)],
      ['embedding (bf16)', bytes(b.embedding)],
      ['lm_head (bf16)', bytes(b.lmHead)],
      ['total', bytes(b.total)],
      ...(r.checkpoint
        ? [['as stored', `${bytes(r.checkpoint.tensorBytes)} of used tensors in ${r.checkpoint.files.length} file(s)`] as Row]
        : []),
    ]),
    '',
    'decode at batch 1: minimum bytes read per token',
    ...table([
      [`experts (${c.expertsPerToken} of ${c.numExperts} per layer)`, bytes(d.experts)],
      ['attention + router', bytes(d.attentionRouter)],
      ['lm_head', bytes(d.lmHead)],
      ['total', `${bytes(d.total)}: at most ${Math.round(REFERENCE_BANDWIDTH / d.total)} tokens/s at 3.0 TB/s`],
    ]),
    `kv cache      ${bytes(s.kvBytesPerContextToken)} per context token (${r.fullLayers.length} full layers), ` +
      `plus ${bytes(s.kvBytesSlidingPerSeq)} per sequence for the ${r.slidingLayers.length} sliding layers`,
  ];
  return lines.join('\n') + '\n';
}

type Row = [string, string];

function table(rows: Row[]): string[] {
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`);
}

function list(layers: number[]): string {
  return layers.length ? layers.join(' ') : 'none';
}

function count(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(2)} K`;
  return String(n);
}

function bytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(3)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} KB`;
  return `${n} B`;
}
