// Loading a model onto a backend: opens the checkpoint (or takes a built-in config for random weights), hands the
// validated tensor locations to the native addon, and returns the one object that owns the native model. With
// src/native.ts, the only module that talks to the addon: tools that drive one sequence directly (score, the
// benchmark) do it through LoadedModel.score() and GreedySequence, not with raw steps of their own.
import {
  buildInfo,
  cudaDevices,
  loadAddon,
  type NativeLoadDefaults,
  type NativeLoadOptions,
  type NativeModel,
  type NativeModelInfo,
  type NativeStepInput,
  type NativeStepOutput,
} from '../native.js';
import { openCheckpoint } from './checkpoint.js';
import { dummyConfig, dummyTensors, type DummyModelName } from './dummy.js';
import type { ModelConfig, TensorLocation } from './types.js';

export interface LoadModelOptions extends Omit<NativeLoadOptions, 'dummy' | 'backend'> {
  /** A checkpoint directory in the Hugging Face layout. */
  model?: string;
  /** Random weights for a built-in config instead of a checkpoint (exactly one of model / dummy). */
  dummy?: DummyModelName;
  backend: 'cpu' | 'cuda';
  /** Bytes read (or filled) so far and in all. */
  onProgress?: (done: number, total: number) => void;
}

/** A model on a backend. Owns the native weights and KV cache; close() frees them. */
export class LoadedModel {
  /** Set by close(): resolves once the native model is freed. */
  private freed?: Promise<void>;
  /** step() takes a step before the previous one resolved, with previous-step tokens (src/native.ts). */
  readonly pipelines = true;

  constructor(
    readonly config: ModelConfig,
    readonly native: NativeModel,
    readonly backend: 'cpu' | 'cuda',
    /** The checkpoint directory, or the built-in name for dummy weights. */
    readonly source: string,
  ) {}

  step(input: NativeStepInput): Promise<NativeStepOutput> {
    if (this.freed) return Promise.reject(new Error('model is closed'));
    return this.native.step(input);
  }

  info(): NativeModelInfo {
    if (this.freed) throw new Error('model is closed');
    return this.native.info();
  }

  /**
   * Runs `tokens` as one sequence in ONE prefill at positions 0..T-1 on KV blocks 0.. (the model must not be
   * serving anything else; with window KV the sliding layers take the blocks after those) and returns every
   * position's full fp32 logits [T * V] and their logsumexp [T].
   */
  async score(tokens: readonly number[]): Promise<{ logits: Float32Array; logsumexp: Float32Array; prefillMs: number }> {
    const T = tokens.length;
    const V = this.config.vocabSize;
    const blocks = Math.ceil(T / this.info().blockSize);
    const start = performance.now();
    const out = await this.step({
      tokens: Int32Array.from(tokens),
      positions: Int32Array.from(tokens, (_, i) => i),
      seqLens: Int32Array.of(T),
      ...soloTables(this, blocks),
      maxBlocksPerSeq: blocks,
      allPositions: true,
      fullLogits: Uint8Array.of(1),
    });
    const prefillMs = performance.now() - start;
    if (out.numRows !== T || out.logits.length !== T * V) {
      throw new Error(`score: the backend returned ${out.numRows} rows of logits for ${T} tokens`);
    }
    return { logits: out.logits, logsumexp: out.logsumexp, prefillMs };
  }

  /**
   * Frees the weights and the KV cache (after the steps in flight, if any: a pipelined caller may have one queued
   * ahead). Resolves once they are freed; safe to call twice (the same promise). loadModel() waits for every close
   * still freeing, so a caller that does not await this still gets the memory back before the next load.
   */
  close(): Promise<void> {
    if (!this.freed) {
      const freed = this.native.close();
      freeing.add(freed);
      this.freed = freed.finally(() => freeing.delete(freed));
    }
    return this.freed;
  }
}

/** Closes still freeing their device memory (LoadedModel.close). */
const freeing = new Set<Promise<void>>();

export async function loadModel(opts: LoadModelOptions): Promise<LoadedModel> {
  await Promise.all(freeing);
  const { model, dummy, onProgress, ...native } = opts;
  if ((model === undefined) === (dummy === undefined)) {
    throw new Error('loadModel: give exactly one of model (a checkpoint directory) or dummy (a built-in config name)');
  }
  if (native.backend !== 'cpu' && native.backend !== 'cuda') {
    throw new Error(`loadModel: unknown backend '${String(native.backend)}' (expected cpu or cuda)`);
  }
  let config: ModelConfig;
  let tensors: TensorLocation[];
  if (dummy !== undefined) {
    config = dummyConfig(dummy);
    tensors = dummyTensors(config);
  } else {
    ({ config, tensors } = await openCheckpoint(model!));
  }
  const addon = loadAddon();
  const handle = await addon.loadModel(config, tensors, { ...native, dummy: dummy !== undefined }, onProgress);
  return new LoadedModel(config, handle, native.backend, model ?? dummy!);
}

/**
 * One greedy sequence on KV blocks 0.. of a model serving nothing else: the benchmark's decode loop, one step a
 * call. decode() keeps one step queued behind the one running (the step contract in src/native.ts), so the device
 * never waits for the host between tokens.
 */
export class GreedySequence {
  private length = 0;
  private readonly tables: SoloTables;
  /** A decode step's input, reused: step() copies what it is given before it returns. */
  private readonly next: NativeStepInput;

  /** capacity: the most tokens the sequence will hold. */
  constructor(
    private readonly model: LoadedModel,
    capacity: number,
  ) {
    const blocks = Math.ceil(capacity / model.info().blockSize);
    this.tables = soloTables(model, blocks);
    // -1: the previous step's row 0, i.e. this sequence's last argmax
    this.next = { tokens: Int32Array.of(-1), positions: new Int32Array(1), seqLens: Int32Array.of(1), ...this.tables, maxBlocksPerSeq: blocks, topK: 1 };
  }

  /** Appends tokens (a prefill chunk, or one token to decode) in one step; resolves to the argmax after the last. */
  async append(tokens: Int32Array): Promise<number> {
    const first = this.length;
    const out = await this.model.step({
      tokens,
      positions: Int32Array.from(tokens, (_, i) => first + i),
      seqLens: Int32Array.of(tokens.length),
      ...this.tables,
      maxBlocksPerSeq: this.tables.blockTables.length,
      topK: 1,
    });
    this.length += tokens.length;
    return out.argmax[0];
  }

  /**
   * Decodes `count` tokens after the last append(), each step's input the token the step before it produced,
   * with one step queued ahead of the one running; yields each token as its step resolves. The same tokens as
   * append() of each argmax in turn.
   */
  async *decode(count: number): AsyncGenerator<number> {
    let running = count > 0 ? this.submit() : undefined;
    for (let i = 0; i < count; i++) {
      const ahead = i + 1 < count ? this.submit() : undefined;
      const out = await running!;
      running = ahead;
      yield out.argmax[0];
    }
  }

  /** Queues the next decode step. Its failure is reported when it is awaited (or not at all if decode() is left early). */
  private submit(): Promise<NativeStepOutput> {
    this.next.positions[0] = this.length++;
    const p = this.model.step(this.next);
    p.catch(() => {});
    return p;
  }
}

/** The native defaults of the load options for a backend (blockSize, maxSeqs, maxBatchTokens, expertFormat). */
export function loadDefaults(backend: 'cpu' | 'cuda'): NativeLoadDefaults {
  return buildInfo().defaults[backend];
}

/** CUDA devices this build can use: 0 with the reason when none (no GPU, no driver, or a CPU-only build). */
export function cudaDeviceCount(): { count: number; reason: string } {
  return cudaDevices();
}

interface SoloTables {
  blockTables: Int32Array;
  windowTables?: Int32Array;
}

/**
 * One sequence's tables on a model serving nothing else: blocks 0 .. n-1, and with window KV (limits.kvWindow > 0)
 * n .. 2n-1 for the sliding layers (every block kept: the pool must hold 2n).
 */
function soloTables(model: LoadedModel, blocks: number): SoloTables {
  const blockTables = Int32Array.from({ length: blocks }, (_, i) => i);
  if (!model.info().limits.kvWindow) return { blockTables };
  return { blockTables, windowTables: Int32Array.from({ length: blocks }, (_, i) => blocks + i) };
}
