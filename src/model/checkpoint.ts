// Opens a gpt-oss checkpoint directory exactly as Hugging Face ships it: config.json plus either one
// model.safetensors or shards listed by model.safetensors.index.json (weight_map). Every header is validated
// first (src/model/safetensors.ts), then every tensor the config implies is checked for presence, dtype and shape.
// Nothing is allocated for tensor data here: the result only says where each tensor's bytes are.
import { access, readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { readConfig } from './config.js';
import { CheckpointError, findDuplicateKey, readSafetensorsHeader, type SafetensorsEntry } from './safetensors.js';
import { weightLayout, type NativeTensorSpec } from '../native.js';
import type { ModelConfig, TensorDType, TensorLocation } from './types.js';

export { CheckpointError } from './safetensors.js';

export interface Checkpoint {
  dir: string;
  config: ModelConfig;
  /** The tensors the model uses, in expectedTensors order; extra tensors in the files are not listed. */
  tensors: TensorLocation[];
}

export type ExpectedTensor = NativeTensorSpec;

/** Every tensor the config implies, with its dtype and shape: the native weight layout (docs/checkpoint.md). */
export function expectedTensors(c: ModelConfig): ExpectedTensor[] {
  return weightLayout(c);
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
