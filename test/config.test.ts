// config.json -> ModelConfig: the shipped gpt-oss-20b and -120b files, both rope forms, and every refusal.
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/model/config.js';
import { CheckpointError } from '../src/model/safetensors.js';

const layerTypes = (n: number) =>
  Array.from({ length: n }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention'));

// As published with openai/gpt-oss-20b (docs/model.md), rope_theta + rope_scaling form.
const GPT_OSS_20B = `{
  "architectures": ["GptOssForCausalLM"],
  "attention_bias": true,
  "attention_dropout": 0.0,
  "eos_token_id": 200002,
  "experts_per_token": 4,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2880,
  "initial_context_length": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 2880,
  "layer_types": ${JSON.stringify(layerTypes(24))},
  "max_position_embeddings": 131072,
  "model_type": "gpt_oss",
  "num_attention_heads": 64,
  "num_experts_per_tok": 4,
  "num_hidden_layers": 24,
  "num_key_value_heads": 8,
  "num_local_experts": 32,
  "output_router_logits": false,
  "pad_token_id": 199999,
  "quantization_config": {
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
    "quant_method": "mxfp4"
  },
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "factor": 32.0,
    "original_max_position_embeddings": 4096,
    "rope_type": "yarn",
    "truncate": false
  },
  "rope_theta": 150000,
  "router_aux_loss_coef": 0.9,
  "sliding_window": 128,
  "swiglu_limit": 7.0,
  "tie_word_embeddings": false,
  "transformers_version": "4.55.0.dev0",
  "use_cache": true,
  "vocab_size": 201088
}`;

const GPT_OSS_120B = GPT_OSS_20B.replace('"num_hidden_layers": 24', '"num_hidden_layers": 36')
  .replace('"num_local_experts": 32', '"num_local_experts": 128')
  .replace(JSON.stringify(layerTypes(24)), JSON.stringify(layerTypes(36)));

const FILE = '/m/config.json';

function edit(fn: (c: Record<string, any>) => void): string {
  const c = JSON.parse(GPT_OSS_20B);
  fn(c);
  return JSON.stringify(c);
}

function expectFail(text: string, field: string, what: RegExp) {
  let err: unknown;
  try {
    parseConfig(text, FILE);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(CheckpointError);
  const msg = (err as Error).message;
  expect(msg.split('\n')).toHaveLength(1);
  expect(msg.startsWith(`${FILE}: ${field}: `)).toBe(true);
  expect(msg).toMatch(what);
}

describe('config.json', () => {
  it('reads the shipped gpt-oss-20b config', () => {
    const c = parseConfig(GPT_OSS_20B, FILE);
    expect(c).toEqual({
      numLayers: 24,
      numExperts: 32,
      expertsPerToken: 4,
      hiddenSize: 2880,
      intermediateSize: 2880,
      numHeads: 64,
      numKvHeads: 8,
      headDim: 64,
      vocabSize: 201088,
      slidingWindow: 128,
      layerSliding: Array.from({ length: 24 }, (_, i) => i % 2 === 0),
      rope: { type: 'yarn', theta: 150000, factor: 32, originalMaxPositions: 4096, betaFast: 32, betaSlow: 1, truncate: false },
      rmsNormEps: 1e-5,
      swigluLimit: 7,
      maxPositions: 131072,
      eosTokenIds: [200002],
      padTokenId: 199999,
      expertFormat: 'mxfp4',
    });
  });

  it('reads the shipped gpt-oss-120b config', () => {
    const c = parseConfig(GPT_OSS_120B, FILE);
    expect(c.numLayers).toBe(36);
    expect(c.numExperts).toBe(128);
    expect(c.layerSliding.filter((s) => s)).toHaveLength(18);
    expect(c.layerSliding[0]).toBe(true);
    expect(c.layerSliding[35]).toBe(false);
  });

  it('reads the rope_parameters form to the same config', () => {
    const text = edit((c) => {
      c.rope_parameters = { ...c.rope_scaling, rope_theta: 150000 };
      delete c.rope_scaling;
      delete c.rope_theta;
    });
    expect(parseConfig(text, FILE)).toEqual(parseConfig(GPT_OSS_20B, FILE));
    const topTheta = edit((c) => {
      c.rope_parameters = c.rope_scaling;
      delete c.rope_scaling;
    });
    expect(parseConfig(topTheta, FILE).rope.theta).toBe(150000);
  });

  it('defaults: layer_types (even layers slide), kv heads, head_dim, eos list, bf16 experts, plain rope', () => {
    const c = parseConfig(
      edit((c) => {
        delete c.layer_types;
        delete c.experts_per_token;
        delete c.quantization_config;
        delete c.head_dim;
        c.hidden_size = c.intermediate_size = 4096;
        c.eos_token_id = [200002, 199999];
        c.rope_scaling = null;
      }),
      FILE,
    );
    expect(c.layerSliding.slice(0, 4)).toEqual([true, false, true, false]);
    expect(c.headDim).toBe(4096 / 64);
    expect(c.eosTokenIds).toEqual([200002, 199999]);
    expect(c.expertFormat).toBe('bf16');
    expect(c.rope.type).toBe('default');
  });

  it('a head_dim that RoPE cannot rotate', () => expectFail(edit((c) => delete c.head_dim), 'head_dim', /45 is odd/));
  it('a field given twice', () =>
    expectFail(GPT_OSS_20B.replace('"num_hidden_layers": 24,', '"num_hidden_layers": 24, "num_hidden_layers": 2,'), 'num_hidden_layers', /given twice/));
  it('a config.json that is not JSON', () => expectFail('{"num_hidden_layers": 2,', 'file', /not valid JSON/));
  it('a config.json that is not an object', () => expectFail('[1]', 'file', /not a JSON object/));
  it('a missing field', () => expectFail(edit((c) => delete c.hidden_size), 'hidden_size', /missing/));
  it('a wrongly typed field', () => expectFail(edit((c) => (c.num_local_experts = '32')), 'num_local_experts', /integer/));
  it('a fractional count', () => expectFail(edit((c) => (c.num_hidden_layers = 2.5)), 'num_hidden_layers', /integer/));
  it('experts per token missing under both names', () =>
    expectFail(
      edit((c) => {
        delete c.num_experts_per_tok;
        delete c.experts_per_token;
      }),
      'num_experts_per_tok',
      /missing/,
    ));
  it('experts per token names disagreeing', () =>
    expectFail(edit((c) => (c.experts_per_token = 2)), 'num_experts_per_tok', /disagrees/));
  it('layer_types of the wrong length', () =>
    expectFail(edit((c) => c.layer_types.pop()), 'layer_types', /23 entries/));
  it('an unknown layer type', () =>
    expectFail(edit((c) => (c.layer_types[3] = 'chunked_attention')), 'layer_types[3]', /chunked_attention/));
  it('sliding layers without sliding_window', () =>
    expectFail(edit((c) => delete c.sliding_window), 'sliding_window', /missing/));
  it('another rope type', () =>
    expectFail(edit((c) => (c.rope_scaling.rope_type = 'longrope')), 'rope_scaling.rope_type', /not supported/));
  it('rope_theta missing', () => expectFail(edit((c) => delete c.rope_theta), 'rope_theta', /missing/));
  it('no rope description', () => expectFail(edit((c) => delete c.rope_scaling), 'rope_scaling', /missing/));
  it('a yarn factor that disagrees with the context lengths', () =>
    expectFail(edit((c) => (c.rope_scaling.factor = 16)), 'rope_scaling.factor', /disagrees/));
  it('yarn attention_factor', () =>
    expectFail(edit((c) => (c.rope_scaling.attention_factor = 1.2)), 'rope_scaling.attention_factor', /not supported/));
  it('another quantisation', () =>
    expectFail(edit((c) => (c.quantization_config.quant_method = 'fp8')), 'quantization_config.quant_method', /not supported/));
  it('kv heads not dividing heads', () =>
    expectFail(edit((c) => (c.num_key_value_heads = 7)), 'num_key_value_heads', /does not divide/));
  it('top-k above the expert count', () =>
    expectFail(edit((c) => (c.num_experts_per_tok = c.experts_per_token = 64)), 'num_experts_per_tok', /exceeds/));
  it('another model type', () => expectFail(edit((c) => (c.model_type = 'llama')), 'model_type', /not gpt_oss/));
  it('tied embeddings', () => expectFail(edit((c) => (c.tie_word_embeddings = true)), 'tie_word_embeddings', /not supported/));
  it('an eos id that is not a token id', () =>
    expectFail(edit((c) => (c.eos_token_id = [1, -3])), 'eos_token_id[1]', /not a token id/));
});
