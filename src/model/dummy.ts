// The built-in gpt-oss configs (docs/model.md, "The two models", as the published config.json files state them), for running
// with random weights (--dummy-weights) when no checkpoint is at hand: benchmarks, sizes, memory planning.
import { configFromJson } from './config.js';
import { expectedTensors } from './checkpoint.js';
import { DTYPE_BYTES } from './sizes.js';
import type { ModelConfig, TensorLocation } from './types.js';

export type DummyModelName = 'gpt-oss-20b' | 'gpt-oss-120b';
export const DUMMY_MODEL_NAMES: readonly DummyModelName[] = ['gpt-oss-20b', 'gpt-oss-120b'];

/** The published config.json of each model (fields the loader reads). */
export function publishedConfigJson(name: DummyModelName): Record<string, unknown> {
  const numLayers = name === 'gpt-oss-20b' ? 24 : 36;
  return {
    architectures: ['GptOssForCausalLM'],
    model_type: 'gpt_oss',
    attention_bias: true,
    eos_token_id: 200002,
    pad_token_id: 199999,
    experts_per_token: 4,
    num_experts_per_tok: 4,
    head_dim: 64,
    hidden_size: 2880,
    intermediate_size: 2880,
    layer_types: Array.from({ length: numLayers }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention')),
    max_position_embeddings: 131072,
    num_attention_heads: 64,
    num_hidden_layers: numLayers,
    num_key_value_heads: 8,
    num_local_experts: name === 'gpt-oss-20b' ? 32 : 128,
    quantization_config: {
      modules_to_not_convert: ['model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head'],
      quant_method: 'mxfp4',
    },
    rms_norm_eps: 1e-5,
    rope_scaling: {
      beta_fast: 32.0,
      beta_slow: 1.0,
      factor: 32.0,
      original_max_position_embeddings: 4096,
      rope_type: 'yarn',
      truncate: false,
    },
    rope_theta: 150000,
    sliding_window: 128,
    swiglu_limit: 7.0,
    tie_word_embeddings: false,
    vocab_size: 201088,
  };
}

export function isDummyModelName(name: string): name is DummyModelName {
  return (DUMMY_MODEL_NAMES as readonly string[]).includes(name);
}

/** The exact config of gpt-oss-20b or gpt-oss-120b. */
export function dummyConfig(name: DummyModelName): ModelConfig {
  if (!isDummyModelName(name)) {
    throw new Error(`--dummy-weights: "${name}" is not one of ${DUMMY_MODEL_NAMES.join(', ')}`);
  }
  return configFromJson(publishedConfigJson(name), `<built-in ${name}>/config.json`);
}

/** The tensors the config implies, with no file behind them (the native side fills them with random values). */
export function dummyTensors(config: ModelConfig): TensorLocation[] {
  return expectedTensors(config).map((t) => ({
    name: t.name,
    file: '',
    offset: 0,
    nbytes: t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype],
    dtype: t.dtype,
    shape: t.shape,
  }));
}
