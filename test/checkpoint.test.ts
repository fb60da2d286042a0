// openCheckpoint on small random checkpoints in the real layout (single file and sharded), the committed oracle
// fixtures, and every bad input the issue lists: each fails with one line naming the file and the tensor or field.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CheckpointError, expectedTensors, openCheckpoint } from '../src/model/checkpoint.js';
import { readTensorBytes } from '../src/model/safetensors.js';
import { modelSizes } from '../src/model/sizes.js';
import { writeRandomCheckpoint, type WriteOptions } from '../src/model/tiny.js';

const SMALL = {
  model_type: 'gpt_oss',
  num_hidden_layers: 2,
  num_local_experts: 4,
  num_experts_per_tok: 2,
  hidden_size: 64,
  intermediate_size: 32,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
  vocab_size: 96,
  max_position_embeddings: 131072,
  sliding_window: 8,
  layer_types: ['sliding_attention', 'full_attention'],
  rope_theta: 150000,
  rope_scaling: { rope_type: 'yarn', factor: 32, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, truncate: false },
  eos_token_id: 95,
  pad_token_id: 94,
  quantization_config: { quant_method: 'mxfp4' },
};

let root: string;
let n = 0;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'hm-ckpt-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function make(options: WriteOptions = {}, config: Record<string, unknown> = SMALL): Promise<string> {
  const dir = join(root, `m${n++}`);
  await writeRandomCheckpoint(dir, config, 7, options);
  return dir;
}

async function expectError(dir: string, file: string, subject: string, what: RegExp) {
  const err = await openCheckpoint(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CheckpointError);
  const msg = (err as Error).message;
  expect(msg.split('\n')).toHaveLength(1);
  expect(msg.startsWith(`${join(dir, file)}: ${subject}: `), msg).toBe(true);
  expect(msg).toMatch(what);
}

describe('openCheckpoint', () => {
  it('opens a single-file checkpoint: every implied tensor, absolute offsets', async () => {
    const dir = await make();
    const ck = await openCheckpoint(dir);
    expect(ck.config.numLayers).toBe(2);
    const want = expectedTensors(ck.config);
    expect(ck.tensors.map((t) => t.name)).toEqual(want.map((t) => t.name));
    expect(want).toHaveLength(1 + 2 * 19 + 2);
    const blocks = ck.tensors.find((t) => t.name === 'model.layers.1.mlp.experts.down_proj_blocks')!;
    expect(blocks).toMatchObject({ dtype: 'U8', shape: [4, 64, 1, 16], nbytes: 4 * 64 * 16 });
    const scales = ck.tensors.find((t) => t.name === 'model.layers.1.mlp.experts.gate_up_proj_scales')!;
    expect(scales.shape).toEqual([4, 64, 2]);
    // The offset is absolute: reading the file there gives the tensor's bytes.
    const file = await readFile(blocks.file);
    const bytes = await readTensorBytes(blocks);
    expect(bytes.equals(file.subarray(blocks.offset, blocks.offset + blocks.nbytes))).toBe(true);
    expect(file.readBigUInt64LE(0) + 8n).toBeLessThanOrEqual(BigInt(ck.tensors[0].offset));
  });

  it('opens the same model sharded, with identical tensor bytes', async () => {
    const one = await openCheckpoint(await make());
    const dir = await make({ shards: 3 });
    expect((await readdir(dir)).sort()).toEqual([
      'config.json',
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
      'model.safetensors.index.json',
    ]);
    const three = await openCheckpoint(dir);
    expect(new Set(three.tensors.map((t) => t.file)).size).toBe(3);
    for (let i = 0; i < one.tensors.length; i++) {
      const [a, b] = [one.tensors[i], three.tensors[i]];
      expect(b.name).toBe(a.name);
      expect((await readTensorBytes(b)).equals(await readTensorBytes(a))).toBe(true);
    }
  });

  it('accepts fp32 sinks, ignores extra tensors, and reads bf16 experts without quantization_config', async () => {
    const f32 = await openCheckpoint(await make({ sinksF32: true }));
    expect(f32.tensors.find((t) => t.name.endsWith('.sinks'))!.dtype).toBe('F32');
    const extra = await openCheckpoint(
      await make({ edit: (ts) => [...ts, { name: 'model.layers.0.mlp.extra', dtype: 'F16', shape: [3], data: new Uint8Array(6) }] }),
    );
    expect(extra.tensors.some((t) => t.name.includes('extra'))).toBe(false);
    const { quantization_config: _, ...bf16Config } = SMALL;
    const bf16 = await openCheckpoint(await make({}, bf16Config));
    expect(bf16.config.expertFormat).toBe('bf16');
    expect(bf16.tensors.find((t) => t.name === 'model.layers.0.mlp.experts.gate_up_proj')!.shape).toEqual([4, 64, 64]);
    expect(bf16.tensors.find((t) => t.name === 'model.layers.0.mlp.experts.down_proj')!.shape).toEqual([4, 32, 64]);
    // sizes.ts counts exactly the bytes the loader finds, in both expert formats.
    for (const ck of [bf16, await openCheckpoint(await make())]) {
      expect(ck.tensors.reduce((a, t) => a + t.nbytes, 0)).toBe(modelSizes(ck.config).bytes.total);
    }
  });

  it('opens the committed oracle fixtures (written by the Python safetensors library)', async () => {
    const fixtures = join(import.meta.dirname, 'fixtures');
    const cases = existsSync(fixtures) ? await readdir(fixtures) : [];
    for (const c of cases) {
      if (!existsSync(join(fixtures, c, 'config.json'))) continue;
      const ck = await openCheckpoint(join(fixtures, c));
      expect(ck.tensors.length).toBe(expectedTensors(ck.config).length);
    }
  });

  it('a missing tensor', async () => {
    const dir = await make({ edit: (ts) => ts.filter((t) => t.name !== 'model.layers.1.self_attn.k_proj.bias') });
    await expectError(dir, 'model.safetensors', 'model.layers.1.self_attn.k_proj.bias', /missing tensor/);
  });

  it('a shape that disagrees with the config', async () => {
    const dir = await make({
      edit: (ts) =>
        ts.map((t) =>
          t.name === 'model.layers.0.mlp.router.weight' ? { ...t, shape: [5, 64], data: new Uint8Array(5 * 64 * 2) } : t,
        ),
    });
    await expectError(dir, 'model.safetensors', 'model.layers.0.mlp.router.weight', /shape \[5,64\] disagrees with config.json, which implies \[4,64\]/);
  });

  it('a dtype the model does not take', async () => {
    const dir = await make({
      edit: (ts) => ts.map((t) => (t.name === 'lm_head.weight' ? { ...t, dtype: 'F16', data: new Uint8Array(96 * 64 * 2) } : t)),
    });
    await expectError(dir, 'model.safetensors', 'lm_head.weight', /dtype F16, expected BF16/);
  });

  it('an unknown dtype in any tensor, even one the model does not use', async () => {
    const dir = await make({ edit: (ts) => [...ts, { name: 'zz.unused', dtype: 'I8', shape: [4], data: new Uint8Array(4) }] });
    const file = join(dir, 'model.safetensors');
    const bytes = await readFile(file);
    const at = bytes.indexOf('"I8"');
    bytes.write('"Q8"', at);
    await writeFile(file, bytes);
    await expectError(dir, 'model.safetensors', 'zz.unused', /unknown dtype "Q8"/);
  });

  it('a truncated weights file', async () => {
    const dir = await make();
    const file = join(dir, 'model.safetensors');
    const size = (await readFile(file)).length;
    await truncate(file, size - 10);
    await expectError(dir, 'model.safetensors', 'lm_head.weight', /past the end of the file/);
    await truncate(file, 5);
    await expectError(dir, 'model.safetensors', 'header', /truncated/);
  });

  it('a sharded index pointing to a missing shard', async () => {
    const dir = await make({ shards: 2 });
    await unlink(join(dir, 'model-00002-of-00002.safetensors'));
    await expectError(dir, 'model.safetensors.index.json', 'weight_map.model.layers.1.self_attn.q_proj.weight', /shard model-00002-of-00002.safetensors is missing/);
  });

  it('a tensor in weight_map missing from its shard', async () => {
    const dir = await make({ shards: 2 });
    const indexFile = join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(await readFile(indexFile, 'utf8'));
    index.weight_map['model.norm.weight'] = 'model-00001-of-00002.safetensors';
    await writeFile(indexFile, JSON.stringify(index));
    await expectError(dir, 'model-00001-of-00002.safetensors', 'model.norm.weight', /listed in model.safetensors.index.json but missing/);
  });

  it('a tensor absent from weight_map, and a weight_map leaving the directory', async () => {
    const dir = await make({ shards: 2 });
    const indexFile = join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(await readFile(indexFile, 'utf8'));
    delete index.weight_map['model.norm.weight'];
    await writeFile(indexFile, JSON.stringify(index));
    await expectError(dir, 'model.safetensors.index.json', 'model.norm.weight', /not in weight_map/);
    index.weight_map['model.norm.weight'] = '../elsewhere.safetensors';
    await writeFile(indexFile, JSON.stringify(index));
    await expectError(dir, 'model.safetensors.index.json', 'weight_map.model.norm.weight', /not a shard file name/);
    await writeFile(indexFile, '{"weight_map": {"lm_head.weight": "a.safetensors", "lm_head.weight": "b.safetensors"}}');
    await expectError(dir, 'model.safetensors.index.json', 'weight_map.lm_head.weight', /given twice/);
    await writeFile(indexFile, '{"weight_map": ');
    await expectError(dir, 'model.safetensors.index.json', 'file', /not valid JSON/);
  });

  it('no weights file at all', async () => {
    const dir = await make();
    await unlink(join(dir, 'model.safetensors'));
    await expectError(dir, 'model.safetensors', 'file', /missing/);
  });

  it('a malformed config.json: not JSON, missing field, wrongly typed field, no file', async () => {
    const dir = await make();
    const cfg = join(dir, 'config.json');
    await writeFile(cfg, '{"num_hidden_layers": 2');
    await expectError(dir, 'config.json', 'file', /not valid JSON/);
    const { vocab_size: _, ...noVocab } = SMALL;
    await writeFile(cfg, JSON.stringify(noVocab));
    await expectError(dir, 'config.json', 'vocab_size', /missing/);
    await writeFile(cfg, JSON.stringify({ ...SMALL, num_attention_heads: 'four' }));
    await expectError(dir, 'config.json', 'num_attention_heads', /must be an integer/);
    await unlink(cfg);
    await expectError(dir, 'config.json', 'file', /cannot read \(ENOENT\)/);
  });

  it('a config that disagrees with the weights (more experts than stored)', async () => {
    const dir = await make();
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...SMALL, num_local_experts: 8 }));
    await expectError(dir, 'model.safetensors', 'model.layers.0.mlp.router.weight', /shape \[4,64\] disagrees/);
  });
});
