// The server on the embedded tiny model (real CPU backend, random weights: the text is noise, the protocol is
// real), driven by the official openai client over loopback: chat and Responses, streaming and not, completions,
// logprobs, models, health, metrics.
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

const messages = [{ role: 'user' as const, content: 'hi' }];
/** A usage without its cached-token details: a repeated prompt is served from the prefix cache. */
const counts = <U extends object>(u: U | null | undefined) => {
  const { prompt_tokens_details: _p, input_tokens_details: _i, ...rest } = (u ?? {}) as Record<string, unknown>;
  return rest;
};

describe('server on the tiny model', () => {
  it('answers a chat completion with usage, reasoning fields and a finish reason', async () => {
    const r = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 8, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.model).toBe('tiny');
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0].finish_reason).toMatch(/^(stop|length)$/);
    expect(r.usage!.completion_tokens).toBeGreaterThan(0);
    expect(r.usage!.completion_tokens).toBeLessThanOrEqual(8);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + r.usage!.completion_tokens);
    const m = r.choices[0].message as unknown as Record<string, unknown>;
    expect(m.role).toBe('assistant');
    expect('reasoning' in m && 'reasoning_content' in m).toBe(true);
  });

  it('streams a chat completion: role first, one finish chunk, the usage chunk, the same tokens as without streaming', async () => {
    const plain = await client.chat.completions.create({ messages, model: 'tiny', max_tokens: 6, temperature: 0 });
    const stream = await client.chat.completions.create({ messages, model: 'tiny', max_tokens: 6, temperature: 0, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    const finishes = chunks.filter((c) => c.choices[0]?.finish_reason);
    expect(finishes).toHaveLength(1);
    const last = chunks[chunks.length - 1];
    expect(last.choices).toEqual([]);
    expect(counts(last.usage)).toEqual(counts(plain.usage));
    const content = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(content).toBe(plain.choices[0].message.content ?? '');
  });

  it('returns logprobs with top alternatives', async () => {
    const r = await client.chat.completions.create({ messages, model: 'tiny', max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3 });
    const lp = r.choices[0].logprobs!.content!;
    expect(lp).toHaveLength(r.usage!.completion_tokens);
    for (const t of lp) {
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.top_logprobs).toHaveLength(3);
      // Greedy: the chosen token is the most likely one.
      expect(t.top_logprobs[0].logprob).toBeCloseTo(t.logprob, 5);
      expect(typeof t.token).toBe('string');
    }
  });

  it('answers the Responses API, streaming and not, with exact usage', async () => {
    const r = await client.responses.create({ model: 'tiny', input: 'hi', max_output_tokens: 6, temperature: 0 });
    expect(r.object).toBe('response');
    expect(['completed', 'incomplete']).toContain(r.status);
    expect(r.usage!.output_tokens).toBeLessThanOrEqual(6);
    const stream = await client.responses.create({ model: 'tiny', input: 'hi', max_output_tokens: 6, temperature: 0, stream: true });
    const events = [];
    for await (const e of stream) events.push(e);
    expect(events[0].type).toBe('response.created');
    expect(events[1].type).toBe('response.in_progress');
    const end = events[events.length - 1] as { type: string; response: typeof r };
    expect(['response.completed', 'response.incomplete']).toContain(end.type);
    expect(counts(end.response.usage)).toEqual(counts(r.usage));
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
  });

  it('completes raw text and token ids, streaming and not', async () => {
    const a = await client.completions.create({ model: 'tiny', prompt: 'Once upon', max_tokens: 5, temperature: 0, logprobs: 2 });
    expect(a.object).toBe('text_completion');
    expect(a.usage!.completion_tokens).toBe(5);
    expect(a.choices[0].logprobs!.tokens).toHaveLength(5);
    expect(a.choices[0].logprobs!.top_logprobs![0]).toBeTypeOf('object');
    const ids = model.tokenizer.encode('Once upon');
    const b = await client.completions.create({ model: 'tiny', prompt: ids, max_tokens: 5, temperature: 0 });
    expect(b.choices[0].text).toBe(a.choices[0].text);
    const s = await client.completions.create({ model: 'tiny', prompt: 'Once upon', max_tokens: 5, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage;
    for await (const c of s) {
      text += c.choices[0]?.text ?? '';
      if (c.usage) usage = c.usage;
    }
    expect(text).toBe(a.choices[0].text);
    expect(counts(usage)).toEqual(counts(a.usage));
  });

  it('lists the model, reports health and Prometheus metrics under vLLM names', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['tiny']);
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    for (const name of [
      'vllm:num_requests_running',
      'vllm:num_requests_waiting',
      'vllm:kv_cache_usage_perc',
      'vllm:prompt_tokens_total',
      'vllm:generation_tokens_total',
      'vllm:time_to_first_token_seconds_bucket',
      'vllm:time_per_output_token_seconds_bucket',
      'vllm:e2e_request_latency_seconds_bucket',
      'vllm:num_preemptions_total',
    ])
      expect(metrics).toContain(name);
    expect(metrics).toMatch(/vllm:kv_cache_usage_perc\{model_name="tiny"\} 0\n/);
  });
});
