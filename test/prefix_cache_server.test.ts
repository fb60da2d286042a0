// The prefix cache as the server shows it (tiny model, CPU): a repeated conversation reports its cached prompt
// tokens in usage (chat, completions, Responses), cache_salt keeps callers apart, /metrics counts queries and hits.
import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harmonium } from '../src/api.js';
import type { ServerHandle } from '../src/server/serve.js';
import { startTinyServer, type TinyServer } from './helpers/tiny_server.js';

let tiny: TinyServer;
let model: Harmonium;
let server: ServerHandle;
let client: OpenAI;

beforeAll(async () => {
  tiny = await startTinyServer();
  ({ model, server, client } = tiny);
});

afterAll(async () => {
  await tiny?.close();
});

const BS = () => model.info().blockSize;
const cachedOf = (u: unknown) => (u as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details.cached_tokens;

describe('prefix cache through the server', () => {
  it('reports cached prompt tokens, keeps salts apart and exports vLLM counters', async () => {
    const messages = [{ role: 'user' as const, content: 'tell me about the prefix cache '.repeat(8) }];
    const body = { model: 'tiny', messages, max_tokens: 2, temperature: 0 };
    const first = await client.chat.completions.create(body);
    expect(cachedOf(first.usage)).toBe(0);
    const second = await client.chat.completions.create(body);
    const whole = Math.floor((second.usage!.prompt_tokens - 1) / BS()) * BS();
    expect(cachedOf(second.usage)).toBe(whole);
    const salted = await client.chat.completions.create({ ...body, cache_salt: 'tenant-b' } as typeof body);
    expect(cachedOf(salted.usage)).toBe(0);
    await expect(client.chat.completions.create({ ...body, cache_salt: '' } as typeof body)).rejects.toMatchObject({ status: 400 });

    const prompt = 'Once upon a time there was a cache. '.repeat(6);
    await client.completions.create({ model: 'tiny', prompt, max_tokens: 2 });
    const again = await client.completions.create({ model: 'tiny', prompt, max_tokens: 2 });
    expect(cachedOf(again.usage)).toBeGreaterThan(0);
    const input = 'a Responses request that repeats itself '.repeat(6);
    await client.responses.create({ model: 'tiny', input, max_output_tokens: 2 });
    const r = await client.responses.create({ model: 'tiny', input, max_output_tokens: 2 });
    expect(r.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(0);

    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const value = (name: string) => Number(new RegExp(`^${name}\\{model_name="tiny"\\} (\\S+)$`, 'm').exec(metrics)?.[1]);
    const s = model.status();
    expect(value('vllm:prefix_cache_queries_total')).toBe(s.prefixCacheQueries);
    expect(value('vllm:prefix_cache_hits_total')).toBe(s.prefixCacheHits);
    expect(s.prefixCacheHits).toBeGreaterThanOrEqual(whole);
    expect(s.prefixCacheQueries).toBeGreaterThan(s.prefixCacheHits);
    expect(s.kvBlocksFree).toBe(s.kvBlocksTotal);
  }, 120_000);
});
