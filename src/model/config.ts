// Hugging Face gpt-oss config.json -> ModelConfig. Reads both rope forms (rope_theta + rope_scaling as shipped,
// and the newer rope_parameters), layer_types, sliding_window, swiglu_limit and quantization_config. Anything we
// cannot compute exactly as transformers would (another rope type, attention_factor, a different SwiGLU alpha,
// another quantisation) is refused with one line naming the file and the field, rather than run wrongly.
import { readFile } from 'node:fs/promises';
import { CheckpointError, findDuplicateKey } from './safetensors.js';
import type { ModelConfig, RopeSettings } from './types.js';

type Json = Record<string, unknown>;

/** Reads and validates `file` (a config.json). */
export async function readConfig(file: string): Promise<ModelConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new CheckpointError(file, 'file', `cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  return parseConfig(text, file);
}

/** Parses config.json text; `file` only names the source in errors. */
export function parseConfig(text: string, file: string): ModelConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(file, 'file', `not valid JSON (${(err as Error).message})`);
  }
  if (!isObject(json)) throw new CheckpointError(file, 'file', 'is not a JSON object');
  // Of two equal keys JSON.parse keeps the last without a word; an ambiguous config is refused instead.
  const dup = findDuplicateKey(text);
  if (dup.key !== undefined) throw new CheckpointError(file, dup.depth === 1 ? dup.key : `${dup.parent}.${dup.key}`, 'given twice');
  return configFromJson(json, file);
}

/** Validates an already-parsed config.json object. */
export function configFromJson(c: Json, file: string): ModelConfig {
  const f = new Fields(c, file);

  const modelType = f.str('model_type', null);
  if (modelType !== null && modelType !== 'gpt_oss') f.fail('model_type', `"${modelType}" is not gpt_oss`);

  const numLayers = f.int('num_hidden_layers', 1);
  const numExperts = f.alias('num_local_experts', 'num_experts', 1);
  const expertsPerToken = f.alias('num_experts_per_tok', 'experts_per_token', 1);
  if (expertsPerToken > numExperts) {
    f.fail('num_experts_per_tok', `${expertsPerToken} exceeds num_local_experts ${numExperts}`);
  }
  const hiddenSize = f.int('hidden_size', 1);
  const intermediateSize = f.int('intermediate_size', 1);
  const numHeads = f.int('num_attention_heads', 1);
  const numKvHeads = f.optInt('num_key_value_heads', 1) ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    f.fail('num_key_value_heads', `${numKvHeads} does not divide num_attention_heads ${numHeads}`);
  }
  // transformers: head_dim if given, else hidden_size / num_attention_heads.
  const headDim = f.optInt('head_dim', 2) ?? Math.floor(hiddenSize / numHeads);
  if (headDim % 2 !== 0) f.fail('head_dim', `${headDim} is odd; RoPE rotates pairs`);
  const vocabSize = f.int('vocab_size', 1);
  const maxPositions = f.int('max_position_embeddings', 1);

  // Layer kinds: explicit layer_types, else transformers' default (even layers slide, layer 0 included).
  let layerSliding: boolean[];
  const types = c.layer_types;
  if (types === undefined || types === null) {
    layerSliding = Array.from({ length: numLayers }, (_, i) => i % 2 === 0);
  } else {
    if (!Array.isArray(types)) f.fail('layer_types', 'must be an array');
    const arr = types as unknown[];
    if (arr.length !== numLayers) f.fail('layer_types', `has ${arr.length} entries, num_hidden_layers is ${numLayers}`);
    layerSliding = arr.map((t, i) => {
      if (t === 'sliding_attention') return true;
      if (t === 'full_attention') return false;
      return f.fail(`layer_types[${i}]`, `${JSON.stringify(t)} is neither sliding_attention nor full_attention`);
    });
  }
  let slidingWindow = 0;
  if (layerSliding.some((s) => s)) slidingWindow = f.int('sliding_window', 1);
  else slidingWindow = f.optInt('sliding_window', 1) ?? 0;

  const rmsNormEps = f.optNum('rms_norm_eps', (v) => v > 0) ?? 1e-5;
  const swigluLimit = f.optNum('swiglu_limit', (v) => v > 0) ?? 7.0;
  const swigluAlpha = f.optNum('swiglu_alpha', (v) => v > 0);
  if (swigluAlpha !== undefined && swigluAlpha !== 1.702) f.fail('swiglu_alpha', `${swigluAlpha} is not supported (only 1.702)`);
  if (c.attention_bias === false) f.fail('attention_bias', 'false is not supported (gpt-oss attention has biases)');
  if (c.tie_word_embeddings === true) f.fail('tie_word_embeddings', 'true is not supported (gpt-oss has its own lm_head)');
  const prf = f.optNum('partial_rotary_factor', (v) => v > 0);
  if (prf !== undefined && prf !== 1) f.fail('partial_rotary_factor', `${prf} is not supported (only 1)`);

  const eosTokenIds = eosIds(f, c.eos_token_id);
  const padTokenId = f.optInt('pad_token_id', 0) ?? -1;

  const rope = readRope(f, c, maxPositions);
  const expertFormat = readQuantization(f, c, hiddenSize, intermediateSize);

  return {
    numLayers,
    numExperts,
    expertsPerToken,
    hiddenSize,
    intermediateSize,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    slidingWindow,
    layerSliding,
    rope,
    rmsNormEps,
    swigluLimit,
    maxPositions,
    eosTokenIds,
    padTokenId,
    expertFormat,
  };
}

// An id at or past vocab_size is accepted (transformers writes the real ids into small random test models): no
// generated token can equal it, so it never stops anything, and scoring never reads it.
function eosIds(f: Fields, v: unknown): number[] {
  if (v === undefined || v === null) return [];
  const ids = Array.isArray(v) ? v : [v];
  ids.forEach((id, i) => {
    if (!Number.isSafeInteger(id) || (id as number) < 0) {
      f.fail(Array.isArray(v) ? `eos_token_id[${i}]` : 'eos_token_id', `${JSON.stringify(id)} is not a token id`);
    }
  });
  return ids as number[];
}

/**
 * The rope forms: `rope_parameters` {rope_type, rope_theta, ...} (rope_theta may also sit at the top level), or
 * `rope_theta` + `rope_scaling` {rope_type (or type), ...}, where rope_scaling null means plain RoPE.
 */
function readRope(f: Fields, c: Json, maxPositions: number): RopeSettings {
  let params: Json | null;
  let where: string;
  let theta: number;
  if (c.rope_parameters !== undefined && c.rope_parameters !== null) {
    where = 'rope_parameters';
    if (!isObject(c.rope_parameters)) f.fail(where, 'must be an object');
    params = c.rope_parameters as Json;
    const inner = params.rope_theta;
    theta = inner !== undefined ? f.num(`${where}.rope_theta`, inner, (v) => v > 0) : f.num('rope_theta', c.rope_theta, (v) => v > 0);
  } else if (Object.hasOwn(c, 'rope_scaling')) {
    where = 'rope_scaling';
    if (c.rope_scaling !== null && !isObject(c.rope_scaling)) f.fail(where, 'must be an object or null');
    params = c.rope_scaling as Json | null;
    theta = f.num('rope_theta', c.rope_theta, (v) => v > 0);
  } else {
    return f.fail('rope_scaling', 'missing (neither rope_scaling nor rope_parameters is given)');
  }
  const plain: RopeSettings = {
    type: 'default',
    theta,
    factor: 1,
    originalMaxPositions: maxPositions,
    betaFast: 32,
    betaSlow: 1,
    truncate: true,
  };
  if (params === null) return plain;
  const type = params.rope_type ?? params.type;
  if (type === 'default') return plain;
  if (type !== 'yarn') return f.fail(`${where}.rope_type`, `${JSON.stringify(type)} is not supported (only yarn or default)`);
  for (const key of ['attention_factor', 'mscale', 'mscale_all_dim']) {
    if (params[key] !== undefined && params[key] !== null) f.fail(`${where}.${key}`, 'is not supported');
  }
  const factor = f.num(`${where}.factor`, params.factor, (v) => v >= 1);
  const omp = params.original_max_position_embeddings;
  let originalMaxPositions = maxPositions;
  if (omp !== undefined && omp !== null) {
    originalMaxPositions = f.num(`${where}.original_max_position_embeddings`, omp, (v) => Number.isSafeInteger(v) && v > 0);
    // transformers versions disagree on whether this ratio or `factor` wins; we only accept configs where they agree.
    if (maxPositions / originalMaxPositions !== factor) {
      f.fail(`${where}.factor`, `${factor} disagrees with max_position_embeddings / original_max_position_embeddings = ${maxPositions / originalMaxPositions}`);
    }
  }
  const opt = (key: string, dflt: number) =>
    params![key] === undefined || params![key] === null ? dflt : f.num(`${where}.${key}`, params![key], (v) => v > 0);
  const betaFast = opt('beta_fast', 32);
  const betaSlow = opt('beta_slow', 1);
  let truncate = true;
  if (params.truncate !== undefined && params.truncate !== null) {
    if (typeof params.truncate !== 'boolean') f.fail(`${where}.truncate`, 'must be true or false');
    truncate = params.truncate as boolean;
  }
  return { type: 'yarn', theta, factor, originalMaxPositions, betaFast, betaSlow, truncate };
}

/** quantization_config mxfp4 -> MXFP4 expert tensors; no quantization_config -> bf16 expert tensors. */
function readQuantization(f: Fields, c: Json, hidden: number, intermediate: number): 'mxfp4' | 'bf16' {
  const q = c.quantization_config;
  if (q === undefined || q === null) return 'bf16';
  if (!isObject(q)) return f.fail('quantization_config', 'must be an object');
  if (q.quant_method !== 'mxfp4') {
    return f.fail('quantization_config.quant_method', `${JSON.stringify(q.quant_method)} is not supported (only mxfp4)`);
  }
  if (hidden % 32 !== 0) f.fail('hidden_size', `${hidden} is not a multiple of the MXFP4 block (32)`);
  if (intermediate % 32 !== 0) f.fail('intermediate_size', `${intermediate} is not a multiple of the MXFP4 block (32)`);
  return 'mxfp4';
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Typed field access that fails with `<file>: <field>: <what>`. */
class Fields {
  constructor(
    private readonly c: Json,
    private readonly file: string,
  ) {}

  fail(field: string, what: string): never {
    throw new CheckpointError(this.file, field, what);
  }

  int(key: string, min: number): number {
    const v = this.c[key];
    if (v === undefined || v === null) this.fail(key, 'missing');
    return this.checkInt(key, v, min);
  }

  optInt(key: string, min: number): number | undefined {
    const v = this.c[key];
    return v === undefined || v === null ? undefined : this.checkInt(key, v, min);
  }

  /** A field with two accepted names (both present must agree). */
  alias(key: string, other: string, min: number): number {
    const a = this.optInt(key, min);
    const b = this.optInt(other, min);
    if (a === undefined && b === undefined) this.fail(key, `missing (nor is ${other} given)`);
    if (a !== undefined && b !== undefined && a !== b) this.fail(key, `${a} disagrees with ${other} ${b}`);
    return (a ?? b)!;
  }

  str(key: string, dflt: string | null): string | null {
    const v = this.c[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'string') this.fail(key, `must be a string, got ${JSON.stringify(v)}`);
    return v as string;
  }

  num(field: string, v: unknown, ok: (v: number) => boolean): number {
    if (v === undefined || v === null) this.fail(field, 'missing');
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(field, `must be a number, got ${JSON.stringify(v)}`);
    if (!ok(v as number)) this.fail(field, `${v} is out of range`);
    return v as number;
  }

  optNum(key: string, ok: (v: number) => boolean): number | undefined {
    const v = this.c[key];
    return v === undefined || v === null ? undefined : this.num(key, v, ok);
  }

  private checkInt(key: string, v: unknown, min: number): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) this.fail(key, `must be an integer, got ${JSON.stringify(v)}`);
    if ((v as number) < min) this.fail(key, `${v} is below ${min}`);
    return v as number;
  }
}
