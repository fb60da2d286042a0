// Dummy weights are one model whatever the backend: the CPU and the CUDA backend fill them from the same
// counter-based generator (native/dummy_init.h; its bits are checked exactly by the op test dummy_init), so the
// same seed gives the same first-step logits up to the CUDA kernels' bf16 activations, and another seed gives a
// different model. Skips without a CUDA device.
import { describe, expect, it } from 'vitest';
import { configFromJson } from '../../src/model/config.js';
import { loadAddon } from '../../src/native.js';
import { gpuCount } from '../helpers/gpu.js';

const gpus = gpuCount();

// Small, but in the shapes the CUDA kernels take: head_dim 64, GQA 4:1 (heads 8 / kv 2), 8 experts top 4.
const CONFIG_JSON = {
  model_type: 'gpt_oss',
  hidden_size: 256,
  intermediate_size: 256,
  num_hidden_layers: 2,
  num_local_experts: 8,
  num_experts_per_tok: 4,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  head_dim: 64,
  vocab_size: 1000,
  sliding_window: 128,
  layer_types: ['sliding_attention', 'full_attention'],
  max_position_embeddings: 4096,
  rope_theta: 150000,
  rope_scaling: { rope_type: 'yarn', factor: 32, beta_fast: 32, beta_slow: 1, original_max_position_embeddings: 128, truncate: false },
  rms_norm_eps: 1e-5,
  swiglu_limit: 7.0,
  quantization_config: { quant_method: 'mxfp4' },
};

async function firstLogits(backend: 'cpu' | 'cuda', seed: number, expertFormat?: 'mxfp4' | 'bf16'): Promise<Float32Array> {
  const config = configFromJson(CONFIG_JSON, '<test>/config.json');
  const opts = { backend, dummy: true, seed, numBlocks: 4, blockSize: 16, ...(expertFormat ? { expertFormat } : {}) };
  const m = await loadAddon().loadModel(config, [], opts);
  try {
    const r = await m.step({
      tokens: Int32Array.of(3, 141, 59, 26, 535),
      positions: Int32Array.of(0, 1, 2, 3, 4),
      seqLens: Int32Array.of(5),
      blockTables: Int32Array.of(0),
      maxBlocksPerSeq: 1,
      allPositions: true,
      fullLogits: Uint8Array.of(1),
    });
    return r.logits;
  } finally {
    m.close();
  }
}

function diffRatio(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

describe('dummy weights: same seed, same model on the CPU and the CUDA backend', () => {
  it.skipIf(gpus > 0)('skips: no CUDA device', () => {
    console.log('no CUDA device: GPU dummy-weight test skipped');
  });
  it.skipIf(gpus === 0)('first-step logits agree CPU vs CUDA (mxfp4 and bf16 experts); another seed differs', async () => {
    const cpu = await firstLogits('cpu', 7);
    const mx = await firstLogits('cuda', 7, 'mxfp4');
    const bf = await firstLogits('cuda', 7, 'bf16');
    const other = await firstLogits('cpu', 8);
    const dMx = diffRatio(mx, cpu);
    const dBf = diffRatio(bf, cpu);
    const dOther = diffRatio(other, cpu);
    console.log(`dummy seed 7: CUDA mxfp4 vs CPU ${dMx.toExponential(2)}, bf16 vs CPU ${dBf.toExponential(2)}; seed 8 vs 7 ${dOther.toExponential(2)}`);
    expect(dMx).toBeLessThan(2e-2);
    expect(dBf).toBeLessThan(2e-2);
    expect(dOther).toBeGreaterThan(0.2);
  });
});
