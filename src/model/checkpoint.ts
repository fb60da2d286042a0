// Opens a gpt-oss checkpoint directory exactly as Hugging Face ships it: config.json plus either one
// model.safetensors or shards listed by model.safetensors.index.json (weight_map). Every header is validated
// first (src/model/safetensors.ts), then every tensor the config implies is checked for presence, dtype and shape.
// Nothing is allocated for tensor data here: the result only says where each tensor's bytes are.
import { access, readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { readConfig } from './config.js';
import { CheckpointError, findDuplicateKey, readSafetensorsHeader, type SafetensorsEntry } from './safetensors.js';
import type { ModelConfig, TensorDType, TensorLocation } from './types.js';

export { CheckpointError } from './safetensors.js';

export interface Checkpoint {
  dir: string;
  config: ModelConfig;
  /** The tensors the model uses, in expectedTensors order; extra tensors in the files are not listed. */
  tensors: TensorLocation[];
}

export interface ExpectedTensor {
  name: string;
  /** The dtype we write and count sizes with. */
  dtype: TensorDType;
  /** Every dtype the loader accepts for this tensor (sinks come as BF16 or F32). */
  accepts: TensorDType[];
  shape: number[];
}

/** Every tensor the config implies, with its dtype and shape (model.md, "Checkpoint tensors"). */
export function expectedTensors(c: ModelConfig): ExpectedTensor[] {
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const E = c.numExperts;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const out: ExpectedTensor[] = [];
  const bf16 = (name: string, shape: number[]) => out.push({ name, dtype: 'BF16', accepts: ['BF16'], shape });
  const u8 = (name: string, shape: number[]) => out.push({ name, dtype: 'U8', accepts: ['U8'], shape });
  bf16('model.embed_tokens.weight', [c.vocabSize, H]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}.`;
    bf16(`${p}input_layernorm.weight`, [H]);
    bf16(`${p}self_attn.q_proj.weight`, [q, H]);
    bf16(`${p}self_attn.q_proj.bias`, [q]);
    bf16(`${p}self_attn.k_proj.weight`, [kv, H]);
    bf16(`${p}self_attn.k_proj.bias`, [kv]);
    bf16(`${p}self_attn.v_proj.weight`, [kv, H]);
    bf16(`${p}self_attn.v_proj.bias`, [kv]);
    bf16(`${p}self_attn.o_proj.weight`, [H, q]);
    bf16(`${p}self_attn.o_proj.bias`, [H]);
    out.push({ name: `${p}self_attn.sinks`, dtype: 'BF16', accepts: ['BF16', 'F32'], shape: [c.numHeads] });
    bf16(`${p}post_attention_layernorm.weight`, [H]);
    bf16(`${p}mlp.router.weight`, [E, H]);
    bf16(`${p}mlp.router.bias`, [E]);
    const x = `${p}mlp.experts.`;
    if (c.expertFormat === 'mxfp4') {
      // MXFP4: [E, out rows, in/32 blocks, 16 bytes] nibbles plus one E8M0 scale byte per block.
      u8(`${x}gate_up_proj_blocks`, [E, 2 * I, H / 32, 16]);
      u8(`${x}gate_up_proj_scales`, [E, 2 * I, H / 32]);
      bf16(`${x}gate_up_proj_bias`, [E, 2 * I]);
      u8(`${x}down_proj_blocks`, [E, H, I / 32, 16]);
      u8(`${x}down_proj_scales`, [E, H, I / 32]);
      bf16(`${x}down_proj_bias`, [E, H]);
    } else {
      // Unquantised transformers layout: stored [in, out] (x @ W), unlike the MXFP4 tensors.
      bf16(`${x}gate_up_proj`, [E, H, 2 * I]);
      bf16(`${x}gate_up_proj_bias`, [E, 2 * I]);
      bf16(`${x}down_proj`, [E, I, H]);
      bf16(`${x}down_proj_bias`, [E, H]);
    }
  }
  bf16('model.norm.weight', [H]);
  bf16('lm_head.weight', [c.vocabSize, H]);
  return out;
}

const INDEX = 'model.safetensors.index.json';
const SINGLE = 'model.safetensors';

/** Opens and validates a checkpoint directory. Throws CheckpointError (one line: file, tensor or field, what). */
export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  const kind = await stat(dir).then(
    (s) => (s.isDirectory() ? 'dir' : 'other'),
    () => 'missing',
  );
  if (kind !== 'dir') throw new CheckpointError(dir, 'model directory', kind === 'missing' ? 'does not exist' : 'is not a directory');
  const config = await readConfig(join(dir, 'config.json'));
  const locate = (await exists(join(dir, INDEX))) ? await shardedLocator(dir) : await singleLocator(dir);

  const tensors: TensorLocation[] = [];
  for (const want of expectedTensors(config)) {
    const { file, entry } = locate(want.name);
    if (!want.accepts.includes(entry.dtype as TensorDType)) {
      throw new CheckpointError(file, want.name, `dtype ${entry.dtype}, expected ${want.accepts.join(' or ')}`);
    }
    if (!sameShape(entry.shape, want.shape)) {
      throw new CheckpointError(file, want.name, `shape [${entry.shape}] disagrees with config.json, which implies [${want.shape}]`);
    }
    tensors.push({
      name: want.name,
      file,
      offset: entry.offset,
      nbytes: entry.nbytes,
      dtype: entry.dtype as TensorDType,
      shape: entry.shape,
    });
  }
  return { dir, config, tensors };
}

type Locator = (name: string) => { file: string; entry: SafetensorsEntry };

async function singleLocator(dir: string): Promise<Locator> {
  const file = join(dir, SINGLE);
  if (!(await exists(file))) {
    throw new CheckpointError(file, 'file', `missing (and there is no ${INDEX} listing shards)`);
  }
  const header = await readSafetensorsHeader(file);
  return (name) => {
    const entry = header.byName.get(name);
    if (!entry) throw new CheckpointError(file, name, 'missing tensor');
    return { file, entry };
  };
}

async function shardedLocator(dir: string): Promise<Locator> {
  const indexFile = join(dir, INDEX);
  let index: unknown;
  let text: string;
  try {
    text = await readFile(indexFile, 'utf8');
    index = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(indexFile, 'file', `not valid JSON (${(err as Error).message})`);
  }
  const dup = findDuplicateKey(text);
  if (dup.key !== undefined) throw new CheckpointError(indexFile, dup.depth === 1 ? dup.key : `${dup.parent}.${dup.key}`, 'given twice');
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new CheckpointError(indexFile, 'weight_map', 'missing or not an object');
  }
  const shardOf = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    // Only plain file names beside the index: a weight_map must not reach outside the checkpoint directory.
    if (typeof shard !== 'string' || shard === '' || basename(shard) !== shard || shard === '.' || shard === '..') {
      throw new CheckpointError(indexFile, `weight_map.${tensor}`, `${JSON.stringify(shard)} is not a shard file name`);
    }
    shardOf.set(tensor, shard);
  }
  // Every listed shard must exist and be sound, even one holding only tensors we do not use.
  const shards = [...new Set(shardOf.values())].sort();
  for (const shard of shards) {
    if (!(await exists(join(dir, shard)))) {
      const tensor = [...shardOf].find(([, s]) => s === shard)![0];
      throw new CheckpointError(indexFile, `weight_map.${tensor}`, `shard ${shard} is missing`);
    }
  }
  const headers = new Map<string, Awaited<ReturnType<typeof readSafetensorsHeader>>>();
  for (const shard of shards) headers.set(shard, await readSafetensorsHeader(join(dir, shard)));
  for (const [tensor, shard] of shardOf) {
    if (!headers.get(shard)!.byName.has(tensor)) {
      throw new CheckpointError(join(dir, shard), tensor, `listed in ${INDEX} but missing from this shard`);
    }
  }
  return (name) => {
    const shard = shardOf.get(name);
    if (shard === undefined) throw new CheckpointError(indexFile, name, 'missing tensor (not in weight_map)');
    return { file: join(dir, shard), entry: headers.get(shard)!.byName.get(name)! };
  };
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
