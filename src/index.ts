// Public library API of harmonium.
export type { ModelConfig, TensorLocation } from './model/types.js';
export { openCheckpoint, expectedTensors, CheckpointError } from './model/checkpoint.js';
export type { Checkpoint, ExpectedTensor } from './model/checkpoint.js';
export { readConfig, parseConfig } from './model/config.js';
export { dummyConfig, dummyTensors } from './model/dummy.js';
export type { DummyModelName } from './model/dummy.js';
export { modelSizes } from './model/sizes.js';
export type { ModelSizes } from './model/sizes.js';
export { ensureTinyModel } from './model/tiny.js';
