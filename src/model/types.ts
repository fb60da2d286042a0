// The normalised model description every part of harmonium shares. src/model/config.ts builds it from a
// Hugging Face config.json (either rope form); src/model/dummy.ts holds the built-in gpt-oss configs.

export interface RopeSettings {
  type: 'yarn' | 'default';
  theta: number;
  factor: number;
  originalMaxPositions: number;
  betaFast: number;
  betaSlow: number;
  truncate: boolean;
}

export interface ModelConfig {
  numLayers: number;
  numExperts: number;
  expertsPerToken: number;
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  slidingWindow: number;
  /** Per layer: true = sliding_attention (window slidingWindow), false = full_attention. */
  layerSliding: boolean[];
  rope: RopeSettings;
  rmsNormEps: number;
  swigluLimit: number;
  maxPositions: number;
  eosTokenIds: number[];
  padTokenId: number;
  /** Expert weights as the checkpoint stores them. */
  expertFormat: 'mxfp4' | 'bf16';
}

export type TensorDType = 'BF16' | 'F32' | 'U8';

/** One tensor located in a safetensors file: absolute byte offset and length, validated by the loader. */
export interface TensorLocation {
  name: string;
  file: string;
  offset: number;
  nbytes: number;
  dtype: TensorDType;
  shape: number[];
}
