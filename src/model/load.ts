// Loading a model onto a backend: opens the checkpoint (or takes a built-in config for random weights), hands the
// validated tensor locations to the native addon, and returns the one object that owns the native model.
import { loadAddon, type NativeLoadOptions, type NativeModel, type NativeModelInfo, type NativeStepInput, type NativeStepOutput } from '../native.js';
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
  private closed = false;

  constructor(
    readonly config: ModelConfig,
    readonly native: NativeModel,
    readonly backend: 'cpu' | 'cuda',
    /** The checkpoint directory, or the built-in name for dummy weights. */
    readonly source: string,
  ) {}

  step(input: NativeStepInput): Promise<NativeStepOutput> {
    if (this.closed) return Promise.reject(new Error('model is closed'));
    return this.native.step(input);
  }

  info(): NativeModelInfo {
    if (this.closed) throw new Error('model is closed');
    return this.native.info();
  }

  /** Frees the weights and the KV cache (after a step in flight, if any). Safe to call twice. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.native.close();
  }
}

export async function loadModel(opts: LoadModelOptions): Promise<LoadedModel> {
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
