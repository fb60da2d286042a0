// Public library API of harmonium.
export type { ModelConfig, TensorLocation } from './model/types.js';
