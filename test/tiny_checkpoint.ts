// Test helper (not a test file): writes a small random gpt-oss checkpoint in the Hugging Face layout (config.json
// + model.safetensors, MXFP4 experts), seeded, with the same kinds of values as test/oracle/make_case.py, so the
// CPU backend and the CLI can be exercised without the oracle fixtures.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeSafetensors, type TensorToWrite } from '../src/model/safetensors_write.js';

export interface TinyShape {
  layers: number;
  hidden: number;
  intermediate: number;
  experts: number;
  topk: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  slidingWindow: number;
}

export const TINY: TinyShape = {
  layers: 3,
  hidden: 64,
  intermediate: 32,
  experts: 6,
  topk: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 16,
  vocab: 200,
  slidingWindow: 6,
};

// mulberry32 (uniform) + Box-Muller (normal): a tiny seeded generator.
function generator(seed: number): { uniform: () => number; normal: () => number } {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return { uniform, normal };
}

function bf16Bytes(values: number[]): Uint8Array {
  const f = new Float32Array(values);
  const u = new Uint32Array(f.buffer);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < u.length; i++) out[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16; // round to nearest even
  return new Uint8Array(out.buffer);
}

export async function writeTinyCheckpoint(dir: string, shape: TinyShape = TINY, seed = 7): Promise<void> {
  const { layers, hidden: H, intermediate: I, experts: E, heads: nq, kvHeads: nkv, headDim: D, vocab: V } = shape;
  const rng = generator(seed);
  const vals = (n: number, scale: number, offset = 0) => Array.from({ length: n }, () => offset + scale * rng.normal());
  const t: TensorToWrite[] = [];
  const bf16 = (name: string, dims: number[], scale: number, offset = 0) =>
    t.push({ name, dtype: 'BF16', shape: dims, data: bf16Bytes(vals(dims.reduce((a, b) => a * b, 1), scale, offset)) });
  const u8 = (name: string, dims: number[], lo: number, hi: number) => {
    const n = dims.reduce((a, b) => a * b, 1);
    const bytes = new Uint8Array(n);
    for (let i = 0; i < n; i++) bytes[i] = lo + Math.floor(rng.uniform() * (hi - lo + 1));
    t.push({ name, dtype: 'U8', shape: dims, data: bytes });
  };
  bf16('model.embed_tokens.weight', [V, H], 1);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    bf16(`${p}input_layernorm.weight`, [H], 0.2, 1);
    bf16(`${p}self_attn.q_proj.weight`, [nq * D, H], 1 / Math.sqrt(H));
    bf16(`${p}self_attn.q_proj.bias`, [nq * D], 0.1);
    bf16(`${p}self_attn.k_proj.weight`, [nkv * D, H], 1 / Math.sqrt(H));
    bf16(`${p}self_attn.k_proj.bias`, [nkv * D], 0.1);
    bf16(`${p}self_attn.v_proj.weight`, [nkv * D, H], 1 / Math.sqrt(H));
    bf16(`${p}self_attn.v_proj.bias`, [nkv * D], 0.1);
    bf16(`${p}self_attn.o_proj.weight`, [H, nq * D], 1 / Math.sqrt(nq * D));
    bf16(`${p}self_attn.o_proj.bias`, [H], 0.1);
    bf16(`${p}self_attn.sinks`, [nq], 1.5);
    bf16(`${p}post_attention_layernorm.weight`, [H], 0.2, 1);
    bf16(`${p}mlp.router.weight`, [E, H], 2 / Math.sqrt(H));
    bf16(`${p}mlp.router.bias`, [E], 0.5);
    u8(`${p}mlp.experts.gate_up_proj_blocks`, [E, 2 * I, H / 32, 16], 0, 255);
    u8(`${p}mlp.experts.gate_up_proj_scales`, [E, 2 * I, H / 32], 121, 124);
    bf16(`${p}mlp.experts.gate_up_proj_bias`, [E, 2 * I], 0.5);
    u8(`${p}mlp.experts.down_proj_blocks`, [E, H, I / 32, 16], 0, 255);
    u8(`${p}mlp.experts.down_proj_scales`, [E, H, I / 32], 121, 124);
    bf16(`${p}mlp.experts.down_proj_bias`, [E, H], 0.1);
  }
  bf16('model.norm.weight', [H], 0.2, 1);
  bf16('lm_head.weight', [V, H], 1 / Math.sqrt(H));

  const config = {
    architectures: ['GptOssForCausalLM'],
    model_type: 'gpt_oss',
    attention_bias: true,
    hidden_size: H,
    intermediate_size: I,
    num_hidden_layers: layers,
    num_local_experts: E,
    num_experts_per_tok: shape.topk,
    experts_per_token: shape.topk,
    num_attention_heads: nq,
    num_key_value_heads: nkv,
    head_dim: D,
    vocab_size: V,
    sliding_window: shape.slidingWindow,
    layer_types: Array.from({ length: layers }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention')),
    max_position_embeddings: 2048,
    rope_theta: 150000,
    rope_scaling: { rope_type: 'yarn', factor: 32, beta_fast: 32, beta_slow: 1, original_max_position_embeddings: 64, truncate: false },
    rms_norm_eps: 1e-5,
    swiglu_limit: 7.0,
    tie_word_embeddings: false,
    eos_token_id: V - 1,
    pad_token_id: V - 2,
    quantization_config: { quant_method: 'mxfp4', modules_to_not_convert: ['model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head'] },
  };
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  await writeSafetensors(join(dir, 'model.safetensors'), t);
}
