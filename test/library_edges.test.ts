// The library at its edges (issue 8): prompts far past the context, consumers that leave early, disposal, request
// fields it cannot honour, the shape of every error, and checkpoints with a small vocabulary.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Harmonium } from '../src/api.js';
import type { ChatCompletionRequest } from '../src/api/types.js';
import { runScore } from '../src/cli/score.js';
import {
  AddonError,
  CheckpointError,
  DeviceError,
  EngineRequestError,
  HarmoniumError,
  LoadOptionError,
  RequestError,
  SamplingParamError,
} from '../src/index.js';
import { loadAddon } from '../src/native.js';
import { packageRoot } from '../src/util/package_root.js';
import { writeRandomCheckpoint } from '../src/model/tiny.js';
import { cacheDir } from '../src/util/cache_dir.js';
import { HarmonyTokenizer } from '../src/tokenizer/tokenizer.js';

let model: Harmonium;
beforeAll(async () => {
  model = await Harmonium.load({ backend: 'cpu' });
}, 120_000);
afterAll(() => model?.close());

const allFree = () => expect(model.kvBlocks.free).toBe(model.kvBlocks.total);

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

describe('a prompt far longer than the context', () => {
  const long = 'word '.repeat(140_000);

  it('chat rejects with context_length_exceeded, not a stack overflow', async () => {
    const err = await rejection(model.chat({ messages: [{ role: 'user', content: long }] }).result);
    expect(err).toBeInstanceOf(EngineRequestError);
    expect((err as EngineRequestError).code).toBe('context_length_exceeded');
  }, 60_000);

  it('the tokenizer encodes it, special tokens allowed or not', () => {
    const t = new HarmonyTokenizer();
    expect(t.encode(long).length).toBeGreaterThan(100_000);
    expect(t.encode(`<|start|>${long}`, { allowSpecial: true }).length).toBeGreaterThan(100_000);
  });
});

describe('leaving the iteration early cancels the call', () => {
  it('break out of generate(): .result rejects with an AbortError and every KV block is free again', async () => {
    const gen = model.generate([200006, 1428, 200008], { temperature: 0, max_tokens: 2000 });
    let seen = 0;
    for await (const _ of gen) if (++seen === 3) break;
    const err = await rejection(gen.result);
    expect((err as Error).name).toBe('AbortError');
    expect(gen.progress().usage.completion_tokens).toBeLessThan(50);
    allFree();
    expect(model.inFlight).toBe(0);
  }, 60_000);

  it('return() on a chat iterator waiting for its next event', async () => {
    const stream = model.chat({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2000 });
    const it = stream[Symbol.asyncIterator]();
    const pending = it.next();
    // inside the prompt's prefill (~80 ms here): random weights may write their first event within 200 ms
    await new Promise((r) => setTimeout(r, 20));
    await it.return!();
    expect((await pending).done).toBe(true);
    expect(((await rejection(stream.result)) as Error).name).toBe('AbortError');
    allFree();
  }, 60_000);

  it('a consumer that iterates to the end cancels nothing', async () => {
    const gen = model.generate([200006, 1428], { temperature: 0, max_tokens: 5 });
    const tokens: number[] = [];
    for await (const t of gen) tokens.push(t.token);
    expect((await gen.result).tokens).toEqual(tokens);
  }, 60_000);
});

describe('Harmonium implements Symbol.asyncDispose', () => {
  it('await using closes the model', async () => {
    const m = await Harmonium.load({ backend: 'cpu' });
    await m[Symbol.asyncDispose]();
    const err = await rejection(m.generate([1, 2]).result);
    expect(err).toBeInstanceOf(EngineRequestError);
    expect((err as EngineRequestError).code).toBe('closed');
  }, 60_000);
});

describe('request fields the engine cannot honour are refused, naming the field', () => {
  const base = { messages: [{ role: 'user', content: 'hi' }] } as ChatCompletionRequest;
  const cases: [string, Record<string, unknown>, string][] = [
    ['an unknown key', { frobnicate: 1 }, 'frobnicate'],
    ['n above 1', { n: 2 }, 'n'],
    ['a JSON response_format', { response_format: { type: 'json_object' } }, 'response_format'],
    ['tool_choice required', { tool_choice: 'required' }, 'tool_choice'],
    ['tool_choice naming a function', { tool_choice: { type: 'function', function: { name: 'f' } } }, 'tool_choice'],
    ['stream (a transport field)', { stream: true }, 'stream'],
    ['empty messages', { messages: [] }, 'messages'],
  ];
  for (const [what, extra, param] of cases) {
    it(what, async () => {
      const err = await rejection(model.chat({ ...base, ...extra } as ChatCompletionRequest).result);
      expect(err).toBeInstanceOf(RequestError);
      expect(err).toMatchObject({ code: 'invalid_request', param });
      expect((err as Error).message).toContain(param);
    });
  }

  it('accepts what it can honour: model, n 1, text format, tool_choice auto', async () => {
    const r = await model.chat({ ...base, model: 'x', n: 1, response_format: { type: 'text' }, tool_choice: 'auto', max_tokens: 2 } as ChatCompletionRequest).result;
    expect(r.usage.completion_tokens).toBe(2);
  });

  it('a renderer error carries the field path as param', async () => {
    const err = await rejection(model.chat({ messages: [{ role: 'wizard', content: 'x' }] } as unknown as ChatCompletionRequest).result);
    expect(err).toMatchObject({ code: 'invalid_request', param: 'messages[0].role' });
  });
});

describe('every error is a HarmoniumError with a code', () => {
  it('load options: LoadOptionError naming the option', async () => {
    for (const [opts, param] of [
      [{ contextLength: 1 }, 'contextLength'],
      [{ dummyWeights: 'gpt-oss-7b' }, 'dummyWeights'],
      [{ backend: 'tpu' }, 'backend'],
      [{ contextLength: 1e9 }, 'contextLength'],
    ] as const) {
      const err = await rejection(Harmonium.load(opts as never));
      expect(err).toBeInstanceOf(LoadOptionError);
      expect(err).toMatchObject({ code: 'invalid_load_option', param });
    }
  }, 60_000);

  it.skipIf(loadAddon().cudaDevices().count > 0)('backend cuda without a GPU: DeviceError', async () => {
    const err = await rejection(Harmonium.load({ backend: 'cuda' }));
    expect(err).toBeInstanceOf(DeviceError);
    expect(err).toMatchObject({ code: 'no_cuda_device', param: 'backend' });
  });

  it('a bad checkpoint: CheckpointError', async () => {
    const err = await rejection(Harmonium.load({ model: '/nonexistent/model' }));
    expect(err).toBeInstanceOf(CheckpointError);
    expect((err as CheckpointError).code).toBe('invalid_checkpoint');
  });

  it('sampling: SamplingParamError is a RequestError with param', async () => {
    const err = await rejection(model.chat({ messages: [{ role: 'user', content: 'x' }], temperature: 9 }).result);
    expect(err).toBeInstanceOf(SamplingParamError);
    expect(err).toBeInstanceOf(RequestError);
    expect(err).toMatchObject({ code: 'invalid_request', param: 'temperature' });
  });

  it('each class is a HarmoniumError whose name is its class', () => {
    for (const e of [
      new RequestError('x'),
      new SamplingParamError('top_p', 'x'),
      new EngineRequestError('closed', 'x'),
      new LoadOptionError('model', 'x'),
      new CheckpointError('f', 's', 'w'),
      new DeviceError('x'),
      new AddonError('x'),
    ]) {
      expect(e).toBeInstanceOf(HarmoniumError);
      expect(typeof e.code).toBe('string');
      expect(e.name).toBe(e.constructor.name);
    }
  });
});

describe('a checkpoint with a small vocabulary and eos/pad ids past it (what transformers writes)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hm-smallvocab-'));
    await writeRandomCheckpoint(
      dir,
      {
        architectures: ['GptOssForCausalLM'],
        model_type: 'gpt_oss',
        hidden_size: 32,
        intermediate_size: 32,
        num_hidden_layers: 2,
        num_local_experts: 4,
        num_experts_per_tok: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        vocab_size: 96,
        max_position_embeddings: 131072,
        sliding_window: 8,
        layer_types: ['sliding_attention', 'full_attention'],
        rope_theta: 150000,
        rope_scaling: { rope_type: 'yarn', factor: 32, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, truncate: false },
        eos_token_id: 200002,
        pad_token_id: 199999,
        quantization_config: { quant_method: 'mxfp4' },
      },
      7,
    );
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('score works', async () => {
    const r = await runScore({ model: dir, tokens: '1,2,3,4' });
    expect(r.logprobs).toHaveLength(3);
    expect(Number.isFinite(r.perplexity)).toBe(true);
  }, 60_000);

  it('generate works; chat says the vocabulary lacks the harmony tokens', async () => {
    await using small = await Harmonium.load({ model: dir, numBlocks: 8 });
    expect((await small.generate([1, 2, 3], { max_tokens: 3 }).result).tokens).toHaveLength(3);
    const err = await rejection(small.chat({ messages: [{ role: 'user', content: 'hi' }] }).result);
    expect(err).toMatchObject({ code: 'vocabulary_too_small' });
    expect((err as Error).message).toMatch(/harmony/);
  }, 60_000);
});

describe('the tiny model cache lives outside the package', () => {
  it('HARMONIUM_CACHE, else the platform user cache directory', () => {
    expect(cacheDir({ HARMONIUM_CACHE: '/x/y' })).toBe('/x/y');
    expect(cacheDir({ XDG_CACHE_HOME: '/c' }, 'linux')).toBe('/c/harmonium');
    expect(cacheDir({}, 'darwin')).toMatch(/Library\/Caches\/harmonium$/);
    expect(cacheDir({ LOCALAPPDATA: 'C:\\L' }, 'win32')).toContain('harmonium');
    expect(cacheDir().startsWith(packageRoot())).toBe(false);
  });
});
