// The engine behind the library on the CPU backend with the embedded tiny model (random weights: the text is
// noise, so these check structure, determinism and isolation between requests, not content).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Harmonium } from '../src/api.js';
import type { ChatCompletionRequest, ChatEvent } from '../src/api/types.js';
import { EngineRequestError } from '../src/engine/engine.js';
import { SamplingParamError } from '../src/sampling/params.js';

let model: Harmonium;

beforeAll(async () => {
  model = await Harmonium.load({ backend: 'cpu' });
}, 120_000);

afterAll(() => model?.close());

const ask = (content: string, extra: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest => ({
  messages: [{ role: 'user', content }],
  max_tokens: 12,
  ...extra,
});

async function collect(stream: AsyncIterable<ChatEvent>): Promise<ChatEvent[]> {
  const events: ChatEvent[] = [];
  for await (const e of stream) events.push(e);
  return events;
}

describe('engine on the CPU backend (tiny model)', () => {
  it('several chats in flight: each finishes, and each equals its solo run', async () => {
    const requests = [
      ask('hello', { seed: 1 }),
      ask('what is the weather like in Paris today?', { seed: 2, temperature: 0.7, top_p: 0.9 }),
      ask('count to three', { temperature: 0 }),
      ask('x', { seed: 4, top_k: 20, max_tokens: 20 }),
    ];
    const solo = [];
    for (const r of requests) solo.push(await model.chat(r).result);
    const streams = requests.map((r) => model.chat(r));
    const results = await Promise.all(streams.map((s) => s.result));
    results.forEach((r, i) => {
      expect(r.content).toBe(solo[i].content);
      expect(r.reasoning).toBe(solo[i].reasoning);
      expect({ ...r.usage, prompt_tokens_details: undefined }).toEqual({ ...solo[i].usage, prompt_tokens_details: undefined });
      expect(r.usage.completion_tokens).toBe(requests[i].max_tokens);
      expect(r.finish_reason).toBe('length');
    });
    expect(model.inFlight).toBe(0);
  }, 120_000);

  it('streams events ending in done, and the same seed gives the same text', async () => {
    const a = model.chat(ask('hi', { seed: 7, logprobs: true, max_tokens: 40 }));
    const events = await collect(a);
    const done = events[events.length - 1];
    expect(done.type).toBe('done');
    const text = events.map((e) => (e.type === 'content' ? e.delta : '')).join('');
    const result = await a.result;
    expect(done.type === 'done' && done.message).toEqual(result);
    expect(text).toBe(result.content);
    expect(result.timings.time_to_first_token_ms).toBeGreaterThan(0);
    const ids = (r: typeof result) => r.logprobs!.map((t) => t.token);
    expect(ids(result)).toHaveLength(40);
    const b = await model.chat(ask('hi', { seed: 7, logprobs: true, max_tokens: 40 })).result;
    expect(b.content).toBe(result.content);
    expect(ids(b)).toEqual(ids(result));
    const c = await model.chat(ask('hi', { seed: 8, logprobs: true, max_tokens: 40 })).result;
    expect(ids(c)).not.toEqual(ids(result));
  }, 60_000);

  it('an aborted chat rejects and frees its place; the others finish', async () => {
    const ac = new AbortController();
    const long = model.chat(ask('go on', { seed: 3, max_tokens: 500 }), { signal: ac.signal });
    const other = model.chat(ask('short', { seed: 5 }));
    let seen = 0;
    const iterate = (async () => {
      for await (const e of long) {
        if (e.type === 'content' && ++seen === 2) ac.abort();
      }
    })();
    await expect(long.result).rejects.toMatchObject({ name: 'AbortError' });
    await expect(iterate).rejects.toMatchObject({ name: 'AbortError' });
    expect((await other.result).usage.completion_tokens).toBe(12);
    expect(model.inFlight).toBe(0);
  }, 60_000);

  it('bad sampling values reject with the parameter named', async () => {
    const s = model.chat(ask('hi', { temperature: 3 }));
    await expect(s.result).rejects.toBeInstanceOf(SamplingParamError);
    await expect(s.result).rejects.toThrow(/^temperature: must be <= 2/);
    await expect(collect(s)).rejects.toThrow(/temperature/);
    await expect(model.chat(ask('hi', { top_p: 0 })).result).rejects.toThrow(/^top_p/);
    await expect(model.generate([1, 2], { logit_bias: { '999999': 1 } }).result).rejects.toThrow(/^logit_bias/);
  });

  it('a bad request (unknown role) rejects clearly', async () => {
    const bad = { messages: [{ role: 'robot', content: 'x' }] } as unknown as ChatCompletionRequest;
    await expect(model.chat(bad).result).rejects.toThrow(/robot/);
  });

  it('generate streams tokens with raw logprobs and stops at max_tokens', async () => {
    const g = model.generate([200006, 1428, 200008], { temperature: 0, max_tokens: 6, logprobs: true, top_logprobs: 3 });
    const toks = [];
    for await (const t of g) toks.push(t);
    const r = await g.result;
    expect(r.tokens).toEqual(toks.map((t) => t.token));
    expect(r.finish_reason).toBe('length');
    for (const t of toks) {
      expect(t.top_logprobs).toHaveLength(3);
      expect(t.top_logprobs![0].token).toBe(t.token); // greedy takes the most likely token
      expect(t.logprob).toBeCloseTo(t.top_logprobs![0].logprob, 6);
      expect(t.logprob!).toBeLessThan(0);
    }
    const again = await model.generate([200006, 1428, 200008], { temperature: 0, max_tokens: 6 }).result;
    expect(again.tokens).toEqual(r.tokens);
  });

  it('stop strings end generation and are not returned', async () => {
    const r = await model.generate([1, 2, 3], { temperature: 0, max_tokens: 8 }).result;
    const piece = r.text.slice(3, 6);
    const cut = await model.generate([1, 2, 3], { temperature: 0, max_tokens: 8, stop: [piece] }).result;
    expect(cut.finish_reason).toBe('stop');
    expect(cut.text).toBe(r.text.slice(0, r.text.indexOf(piece)));
  });
});

describe('context limits and close', () => {
  it('a prompt longer than the context is refused; other requests are served', async () => {
    const small = await Harmonium.load({ backend: 'cpu', contextLength: 96 });
    try {
      const long = small.chat(ask('word '.repeat(200)));
      const ok = small.chat(ask('hi', { seed: 1 }));
      await expect(long.result).rejects.toBeInstanceOf(EngineRequestError);
      await expect(long.result).rejects.toThrow(/the context holds 96/);
      expect((await ok.result).usage.completion_tokens).toBe(12);
      // A prompt that fits but leaves little room ends at the context, not past it.
      const tight = await small.generate(Array(90).fill(1000), { seed: 1, max_tokens: 50 }).result;
      expect(tight.usage.completion_tokens).toBe(6);
      expect(tight.finish_reason).toBe('length');
    } finally {
      small.close();
    }
  }, 60_000);

  it('close() rejects calls in flight and later calls', async () => {
    const m = await Harmonium.load({ backend: 'cpu' });
    const s = m.chat(ask('hi', { max_tokens: 200 }));
    m.close();
    await expect(s.result).rejects.toThrow(/closed/);
    await expect(m.chat(ask('hi')).result).rejects.toThrow(/closed/);
    m.close();
  }, 60_000);

  it('load rejects bad options', async () => {
    await expect(Harmonium.load({ backend: 'tpu' as never })).rejects.toThrow(/unknown backend/);
    await expect(Harmonium.load({ dummyWeights: 'gpt-oss-7b' as never })).rejects.toThrow(/unknown dummy weights/);
    await expect(Harmonium.load({ contextLength: 1 })).rejects.toThrow(/contextLength/);
  });
});
