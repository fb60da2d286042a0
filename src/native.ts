// The one typed boundary to the native addon: every export of build/Release/harmonium.node is declared here,
// and this is the only module that loads it. Everything else imports these types and functions. The addon reads
// every object strictly: a missing required key or an unknown one is an error naming it.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { ModelConfig, TensorDType, TensorLocation } from './model/types.js';
import { packageRoot } from './util/package_root.js';
import { AddonError } from './errors.js';

/** Load options; an option left out takes the native default (buildInfo().defaults[backend]). */
export interface NativeLoadOptions {
  backend: 'cpu' | 'cuda';
  /** CUDA only: 'mxfp4' decodes experts inside the matmul (sm_90+); 'bf16' decodes them once at load. */
  expertFormat?: 'mxfp4' | 'bf16';
  /** KV blocks to allocate; 0 = as many as fit. */
  numBlocks?: number;
  blockSize?: number;
  maxSeqs?: number;
  maxBatchTokens?: number;
  threads?: number;
  device?: number;
  /** Fill the weights with random values on the device instead of reading tensors. */
  dummy?: boolean;
  /**
   * Sliding-window layers keep their KV in blocks of their own (steps carry windowTables), so a sequence holds
   * only its window's blocks for them and a block is half as large: the same memory holds about twice the
   * context (native/kv_layout.h). Default false: one block table serves every layer.
   */
  windowKv?: boolean;
  seed?: number;
}

/**
 * One model step. The step contract: steps of a model run one at a time in the order step() was called, and a
 * step may be called before the one before it resolved (the addon queues it and starts it the moment the device
 * is free, so the device never waits for the host's round trip). A token that is not yet known is named instead:
 * `tokens[i] = -1 - r` is the token the step called just before this one (and accepted by step()) produced for
 * its output row r: its in-step draw where that row was sampled in the step (`sampling` mode 1 or 2), else its
 * argmax (never a host-side draw from full logits). If that step fails, this one rejects too. Every other check
 * runs when step() is called, so a bad step rejects without running and leaves no step for the next to name.
 */
export interface NativeStepInput {
  /** All sequences' tokens back to back; a negative value names a token of the previous step (above). */
  tokens: Int32Array;
  /** Absolute position of each token in its sequence. */
  positions: Int32Array;
  /** Tokens per sequence in this step (prefill chunk length, or 1 when decoding). */
  seqLens: Int32Array;
  /** [numSeqs * maxBlocksPerSeq] KV block ids per sequence. */
  blockTables: Int32Array;
  /**
   * Required when limits.kvWindow > 0 (a windowKv load), else absent: the sliding layers' block ids, the same
   * shape and addressing. Only the entries of a sequence's window and chunk are read (positions first -
   * kvWindow + 1 .. last), so the others may name anything (given back to the pool).
   */
  windowTables?: Int32Array;
  maxBlocksPerSeq: number;
  /** One output row per token (scoring) instead of one per sequence (its last token). */
  allPositions?: boolean;
  /** Per sequence: 1 = return the full fp32 logits of its rows. */
  fullLogits?: Uint8Array;
  /** Narrowed candidates per row (0..maxTopK()). */
  topK?: number;
  /** Sampling in the step, one entry per sequence (its output row); absent = no row is sampled. */
  sampling?: NativeSampling;
}

/**
 * Per-sequence sampling parameters and the tokens whose logits an adjustment touches (native/sampling.h has the
 * definition the step applies). Entries are a CSR list: sequence s owns entries entryOffsets[s] ..
 * entryOffsets[s + 1] - 1, ids strictly increasing.
 */
export interface NativeSampling {
  /** 0 = not sampled in the step, 1 = greedy over the adjusted logits, 2 = a draw. */
  mode: Uint8Array;
  temperature: Float32Array;
  /** 0 = off. */
  topK: Int32Array;
  topP: Float32Array;
  minP: Float32Array;
  repetitionPenalty: Float32Array;
  frequencyPenalty: Float32Array;
  presencePenalty: Float32Array;
  /** [2 * numSeqs] the noise keys of (seed, step): StepNoise in src/sampling/rng.ts. */
  noiseKeys: Uint32Array;
  /** [numSeqs + 1] */
  entryOffsets: Int32Array;
  entryIds: Int32Array;
  entryBias: Float32Array;
  /** Occurrences in the output so far. */
  entryCounts: Int32Array;
  /** 1 = the token occurs in the prompt. */
  entryInPrompt: Uint8Array;
  /**
   * Per sequence, for a step submitted ahead: 1 = its one token is a previous-step token (tokens[i] = -1 - r)
   * that counts as one more occurrence in its output, so the addon adds it to the sequence's entries when the step
   * starts (that entry's count + 1, or a new entry in id order: no bias, count 1, not in the prompt). The backend
   * then sees the entries the host would have sent had it known the token. Only for sampled sequences.
   */
  countPrevious?: Uint8Array;
}

export interface NativeStepOutput {
  numRows: number;
  vocab: number;
  topK: number;
  argmax: Int32Array;
  maxLogit: Float32Array;
  /** log sum exp of the row's logits over the whole vocabulary (temperature 1). */
  logsumexp: Float32Array;
  /** [numRows * topK] ids by logit descending, ties by lower id. */
  topIds: Int32Array;
  topLogits: Float32Array;
  /** Rows whose full logits follow, in order. */
  logitsRows: Int32Array;
  /** [logitsRows.length * vocab] */
  logits: Float32Array;
  /** [numRows] with `sampling`: the token drawn in the step (-1 where mode is 0), and its raw logit. */
  sampled?: Int32Array;
  sampledLogit?: Float32Array;
}

/** What one step may hold on a loaded model (the addon checks every step against them). */
export interface NativeStepLimits {
  maxBatchTokens: number;
  maxSeqs: number;
  maxBlocksPerSeq: number;
  /** > 0: the model was loaded with windowKv and steps carry windowTables for windows of this many positions. */
  kvWindow: number;
  maxTopK: number;
  /** The most sampling entries one step may carry. */
  maxSampleEntries: number;
}

export interface NativeModelInfo {
  backend: string;
  deviceName: string;
  expertFormat: string;
  numBlocks: number;
  blockSize: number;
  limits: NativeStepLimits;
  weightBytes: number;
  kvBytes: number;
  deviceTotalBytes: number;
  deviceFreeBytes: number;
}

export interface NativeModel {
  /** Queues one step (NativeStepInput has the contract); resolves when it has run. */
  step(input: NativeStepInput): Promise<NativeStepOutput>;
  info(): NativeModelInfo;
  /**
   * Frees the weights and the KV cache, once the steps already accepted have run; later steps reject. Resolves
   * when they are freed (await it before loading another model into the same device memory).
   */
  close(): Promise<void>;
}

export interface NativeAddon {
  loadModel(
    config: ModelConfig,
    tensors: TensorLocation[],
    options: NativeLoadOptions,
    onProgress?: (done: number, total: number) => void,
  ): Promise<NativeModel>;
  buildInfo(): NativeBuildInfo;
  /** Every tensor the config implies: the one weight layout both native loaders bind by name. */
  weightLayout(config: ModelConfig): NativeTensorSpec[];
  /** The CPU reference of sampling in the step, over rows of given logits ([rows * vocab]). */
  sampleLogits(logits: Float32Array, vocab: number, sampling: NativeSampling): { sampled: Int32Array; sampledLogit: Float32Array };
  cudaDevices(): { count: number; reason: string };
}

export interface NativeLoadDefaults {
  blockSize: number;
  maxSeqs: number;
  maxBatchTokens: number;
  expertFormat: 'mxfp4' | 'bf16';
  windowKv: boolean;
}

export interface NativeBuildInfo {
  cuda: boolean;
  cudaArchitectures: string;
  /** The defaults of every load option, per backend. */
  defaults: Record<'cpu' | 'cuda', NativeLoadDefaults>;
  /** The most narrowed candidates a step may ask for. */
  maxTopK: number;
  /** The most sampling entries (NativeSampling's entry arrays) one step may carry. */
  maxSampleEntries: number;
}

export interface NativeTensorSpec {
  name: string;
  /** The dtype written and counted. */
  dtype: TensorDType;
  /** Every dtype the loaders accept (sinks come as BF16 or F32). */
  accepts: TensorDType[];
  shape: number[];
}

let cached: NativeAddon | undefined;

export function loadAddon(): NativeAddon {
  if (cached) return cached;
  // HARMONIUM_BUILD_DIR lets a developer test an addon built into another folder (e.g. build-cuda/).
  const buildDir = process.env.HARMONIUM_BUILD_DIR ?? join(packageRoot(), 'build');
  const path = join(buildDir, 'Release', 'harmonium.node');
  if (!existsSync(path)) {
    throw new AddonError(
      `the native addon is not built (${path} is missing): run \`npm rebuild harmonium\` (in a checkout of harmonium: \`npm run build\`); building needs CMake >= 3.18 and a C++17 compiler`,
    );
  }
  const require = createRequire(import.meta.url);
  cached = require(path) as NativeAddon;
  return cached;
}

let built: NativeBuildInfo | undefined;

/** The addon's build: CUDA or not, load defaults, limits. */
export function buildInfo(): NativeBuildInfo {
  built ??= loadAddon().buildInfo();
  return built;
}

/** The most narrowed candidates a model step returns per row. */
export function maxTopK(): number {
  return buildInfo().maxTopK;
}

/** The most sampling entries one model step may carry (beyond them the host samples from full logits). */
export function maxSampleEntries(): number {
  return buildInfo().maxSampleEntries;
}

/** The checkpoint tensors a config implies, from the native weight layout. */
export function weightLayout(config: ModelConfig): NativeTensorSpec[] {
  return loadAddon().weightLayout(config);
}

/** CUDA devices visible to this build (0 with the reason when none). */
export function cudaDevices(): { count: number; reason: string } {
  return loadAddon().cudaDevices();
}
