// The one weight layout (native/weight_layout.cpp, read through the addon's weightLayout()): it must name exactly
// the tensors of checkpoints written by transformers' own writer (the oracle fixtures), with their dtypes and
// shapes; the bf16-expert layout is pinned by a hand-written list. Also the addon's strict reading of what it is
// given, and the limits and defaults it publishes.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { configFromJson, readConfig } from '../src/model/config.js';
import { loadModel } from '../src/model/load.js';
import { readSafetensorsHeader } from '../src/model/safetensors.js';
import { buildInfo, weightLayout } from '../src/native.js';
import { fixtureCases, fixturesDir } from './helpers/fixtures.js';

const SMALL_JSON = {
  model_type: 'gpt_oss',
  hidden_size: 64,
  intermediate_size: 32,
  num_hidden_layers: 1,
  num_local_experts: 4,
  num_experts_per_tok: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
  vocab_size: 100,
  sliding_window: 8,
  layer_types: ['sliding_attention'],
  max_position_embeddings: 256,
  rope_theta: 150000,
  rope_scaling: { rope_type: 'yarn', factor: 32, beta_fast: 32, beta_slow: 1, original_max_position_embeddings: 8, truncate: false },
  rms_norm_eps: 1e-5,
  swiglu_limit: 7.0,
};

describe('weight layout', () => {
  for (const name of fixtureCases()) {
    it(`${name}: names, dtypes and shapes match the checkpoint transformers wrote`, async () => {
      const dir = join(fixturesDir, name);
      const config = await readConfig(join(dir, 'config.json'));
      const inFiles = new Map<string, { dtype: string; shape: number[] }>();
      for (const f of readdirSync(dir).filter((f) => f.endsWith('.safetensors'))) {
        const header = await readSafetensorsHeader(join(dir, f));
        for (const [n, e] of header.byName) inFiles.set(n, { dtype: e.dtype, shape: e.shape });
      }
      const layout = weightLayout(config);
      expect(layout.map((t) => t.name).sort()).toEqual([...inFiles.keys()].sort());
      for (const t of layout) {
        const f = inFiles.get(t.name)!;
        expect(t.accepts, t.name).toContain(f.dtype);
        expect(t.shape, t.name).toEqual(f.shape);
      }
    });
  }

  it('bf16 experts: the unquantised transformers layout, [E, in, out]', () => {
    const c = configFromJson(SMALL_JSON, '<test>/config.json');
    expect(c.expertFormat).toBe('bf16');
    const got = weightLayout(c).map((t) => `${t.name} ${t.accepts.join('|')} [${t.shape}]`);
    const p = 'model.layers.0.';
    expect(got).toEqual([
      'model.embed_tokens.weight BF16 [100,64]',
      `${p}input_layernorm.weight BF16 [64]`,
      `${p}self_attn.q_proj.weight BF16 [64,64]`,
      `${p}self_attn.q_proj.bias BF16 [64]`,
      `${p}self_attn.k_proj.weight BF16 [32,64]`,
      `${p}self_attn.k_proj.bias BF16 [32]`,
      `${p}self_attn.v_proj.weight BF16 [32,64]`,
      `${p}self_attn.v_proj.bias BF16 [32]`,
      `${p}self_attn.o_proj.weight BF16 [64,64]`,
      `${p}self_attn.o_proj.bias BF16 [64]`,
      `${p}self_attn.sinks BF16|F32 [4]`,
      `${p}post_attention_layernorm.weight BF16 [64]`,
      `${p}mlp.router.weight BF16 [4,64]`,
      `${p}mlp.router.bias BF16 [4]`,
      `${p}mlp.experts.gate_up_proj BF16 [4,64,64]`,
      `${p}mlp.experts.gate_up_proj_bias BF16 [4,64]`,
      `${p}mlp.experts.down_proj BF16 [4,32,64]`,
      `${p}mlp.experts.down_proj_bias BF16 [4,64]`,
      'model.norm.weight BF16 [64]',
      'lm_head.weight BF16 [100,64]',
    ]);
  });

  it('MXFP4 experts: E2M1 blocks [E, out, in/32, 16] and E8M0 scales [E, out, in/32]', () => {
    const c = configFromJson({ ...SMALL_JSON, quantization_config: { quant_method: 'mxfp4' } }, '<test>/config.json');
    const experts = weightLayout(c).filter((t) => t.name.includes('.experts.'));
    expect(experts.map((t) => `${t.name.slice('model.layers.0.mlp.experts.'.length)} ${t.dtype} [${t.shape}]`)).toEqual([
      'gate_up_proj_blocks U8 [4,64,2,16]',
      'gate_up_proj_scales U8 [4,64,2]',
      'gate_up_proj_bias BF16 [4,64]',
      'down_proj_blocks U8 [4,64,1,16]',
      'down_proj_scales U8 [4,64,1]',
      'down_proj_bias BF16 [4,64]',
    ]);
  });
});

describe('the addon reads strictly and publishes its limits', () => {
  const config = configFromJson(SMALL_JSON, '<test>/config.json');

  it('an unknown or missing config key is an error naming it', () => {
    expect(() => weightLayout({ ...config, hiddenSizee: 64 } as never)).toThrow(/config\.hiddenSizee: unknown key/);
    const { hiddenSize: _, ...missing } = config;
    expect(() => weightLayout(missing as never)).toThrow(/config\.hiddenSize: missing/);
    expect(() => weightLayout({ ...config, rope: { ...config.rope, factor: undefined } } as never)).toThrow(/config\.rope\.factor: missing/);
  });

  it('an unknown load option is an error naming it', async () => {
    await expect(loadModel({ dummy: 'gpt-oss-20b', backend: 'cpu', maxSeq: 4 } as never)).rejects.toThrow(/options\.maxSeq: unknown key/);
  });

  it('buildInfo() carries the defaults, the top-k and sampling-entry limits; info() the limits a model was loaded with', async () => {
    const b = buildInfo();
    expect(b.maxTopK).toBe(256);
    expect(b.maxSampleEntries).toBe(2 ** 20);
    expect(b.defaults.cpu).toMatchObject({ blockSize: 16, maxSeqs: 16, maxBatchTokens: 512 });
    expect(b.defaults.cuda).toMatchObject({ blockSize: 16, maxSeqs: 16, maxBatchTokens: 8192 });
    const m = await loadModel({ model: join(fixturesDir, fixtureCases()[0]), backend: 'cpu', numBlocks: 4 });
    try {
      const info = m.info();
      expect(info.blockSize).toBe(b.defaults.cpu.blockSize);
      expect(info.limits).toMatchObject({ maxSeqs: 16, maxBatchTokens: 512, maxTopK: 256, maxSampleEntries: 2 ** 20 });
      expect(info.limits.maxBlocksPerSeq).toBe(Math.ceil(m.config.maxPositions / info.blockSize));
    } finally {
      m.close();
    }
  });
});
