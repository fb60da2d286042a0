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
  seed?: number;
}

export interface NativeStepInput {
  /** All sequences' tokens back to back. */
  tokens: Int32Array;
  /** Absolute position of each token in its sequence. */
  positions: Int32Array;
  /** Tokens per sequence in this step (prefill chunk length, or 1 when decoding). */
  seqLens: Int32Array;
  /** [numSeqs * maxBlocksPerSeq] KV block ids per sequence. */
  blockTables: Int32Array;
  maxBlocksPerSeq: number;
  /** One output row per token (scoring) instead of one per sequence (its last token). */
  allPositions?: boolean;
  /** Per sequence: 1 = return the full fp32 logits of its rows. */
  fullLogits?: Uint8Array;
  /** Narrowed candidates per row (0..maxTopK()). */
  topK?: number;
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
}

/** What one step may hold on a loaded model (the addon checks every step against them). */
export interface NativeStepLimits {
  maxBatchTokens: number;
  maxSeqs: number;
  maxBlocksPerSeq: number;
  maxTopK: number;
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
  step(input: NativeStepInput): Promise<NativeStepOutput>;
  info(): NativeModelInfo;
  /** Frees the weights and the KV cache (deferred until a step in flight finishes). */
  close(): void;
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
  cudaDevices(): { count: number; reason: string };
}

export interface NativeLoadDefaults {
  blockSize: number;
  maxSeqs: number;
  maxBatchTokens: number;
  expertFormat: 'mxfp4' | 'bf16';
}

export interface NativeBuildInfo {
  cuda: boolean;
  cudaArchitectures: string;
  /** The defaults of every load option, per backend. */
  defaults: Record<'cpu' | 'cuda', NativeLoadDefaults>;
  /** The most narrowed candidates a step may ask for. */
  maxTopK: number;
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

/** The checkpoint tensors a config implies, from the native weight layout. */
export function weightLayout(config: ModelConfig): NativeTensorSpec[] {
  return loadAddon().weightLayout(config);
}

/** CUDA devices visible to this build (0 with the reason when none). */
export function cudaDevices(): { count: number; reason: string } {
  return loadAddon().cudaDevices();
}
