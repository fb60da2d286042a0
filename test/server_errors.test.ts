// The server's refusals, each as the OpenAI error object with a string code: 400 for bad fields (wrong types
// are errors, never coerced; unknown fields name themselves), 401 without the key, 404 for an unknown model or
// route, 413 for an oversize body, 503 while the model loads, and the refusal to bind a public address without
// a key. The openai client sees them as its typed errors.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Harmonium } from '../src/api.js';
import { serve, type ServerHandle } from '../src/server/serve.js';

let model: Harmonium;
let server: ServerHandle;
const KEY = 'sk-test-key';

beforeAll(async () => {
  model = await Harmonium.load({ numBlocks: 64, contextLength: 512 });
  server = await serve(model, { port: 0, apiKey: KEY, bodyLimit: 64 * 1024 });
});

afterAll(async () => {
  await server?.close();
  model?.close();
});

async function post(path: string, body: unknown, key: string | null = KEY, raw?: string) {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (key !== null) headers.authorization = `Bearer ${key}`;
  const r = await fetch(`${server.url}${path}`, { method: 'POST', headers, body: raw ?? JSON.stringify(body) });
  const json = (await r.json()) as { error: { message: string; type: string; param: string | null; code: string } };
  return { status: r.status, error: json.error, headers: r.headers };
}

const chat = (extra: Record<string, unknown>) => ({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, ...extra });

describe('server errors', () => {
  it('400 names the field: wrong types, unknown fields, unsupported values', async () => {
    const cases: [Record<string, unknown>, string, string][] = [
      [chat({ temperature: '0.5' }), 'temperature', 'invalid_value'],
      [chat({ temperature: 9 }), 'temperature', 'invalid_value'],
      [chat({ stream: 'yes' }), 'stream', 'invalid_type'],
      [chat({ max_tokens: 1.5 }), 'max_tokens', 'invalid_value'],
      [chat({ frobnicate: 1 }), 'frobnicate', 'unknown_parameter'],
      [chat({ n: 2 }), 'n', 'unsupported_value'],
      [chat({ response_format: { type: 'json_schema', json_schema: {} } }), 'response_format', 'unsupported_value'],
      [chat({ tool_choice: 'required' }), 'tool_choice', 'invalid_value'],
      [chat({ stream_options: { include_usage: true } }), 'stream_options', 'invalid_request_error'],
      [chat({ messages: 'hi' }), 'messages', 'invalid_type'],
      [chat({ messages: [{ role: 'wizard', content: 'x' }] }), 'messages[0].role', 'invalid_request_error'],
      [chat({ top_logprobs: 3 }), 'top_logprobs', 'invalid_value'],
    ];
    for (const [body, param, code] of cases) {
      const r = await post('/v1/chat/completions', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.error.param, JSON.stringify(r.error)).toBe(param);
      expect(r.error.code).toBe(code);
      expect(r.error.type).toBe('invalid_request_error');
      expect(r.error.message.length).toBeGreaterThan(0);
    }
    const resp = await post('/v1/responses', { model: 'tiny', input: 'hi', store: true });
    expect([resp.status, resp.error.param]).toEqual([400, 'store']);
    const comp = await post('/v1/completions', { model: 'tiny', prompt: 'x', echo: true });
    expect([comp.status, comp.error.param]).toEqual([400, 'echo']);
    const bad = await post('/v1/chat/completions', null, KEY, '{"messages": [');
    expect(bad.status).toBe(400);
  });

  it('400 context_length_exceeded, also when streaming (before any 200)', async () => {
    const long = 'word '.repeat(600);
    for (const stream of [false, true]) {
      const r = await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: long }], stream }));
      expect(r.status).toBe(400);
      expect(r.error.code).toBe('context_length_exceeded');
    }
  });

  it('401 without a valid key on every route but /health; the openai client raises AuthenticationError', async () => {
    expect((await post('/v1/chat/completions', chat({}), null)).status).toBe(401);
    const wrong = await post('/v1/chat/completions', chat({}), 'sk-wrong');
    expect([wrong.status, wrong.error.code, wrong.error.type]).toEqual([401, 'invalid_api_key', 'authentication_error']);
    expect((await fetch(`${server.url}/v1/models`)).status).toBe(401);
    expect((await fetch(`${server.url}/metrics`)).status).toBe(401);
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'sk-wrong', maxRetries: 0 });
    await expect(client.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const ok = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
    expect((await ok.models.list()).data[0].id).toBe('tiny');
  });

  it('404 for an unknown model or route', async () => {
    const m = await post('/v1/chat/completions', chat({ model: 'gpt-5' }));
    expect([m.status, m.error.code, m.error.param]).toEqual([404, 'model_not_found', 'model']);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
    await expect(client.chat.completions.create({ model: 'gpt-5', messages: [{ role: 'user', content: 'x' }] })).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const r = await post('/v1/nothing', {});
    expect([r.status, r.error.code]).toEqual([404, 'not_found']);
  });

  it('413 for a body over the limit', async () => {
    const r = await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: 'x'.repeat(100_000) }] }));
    expect([r.status, r.error.code]).toEqual([413, 'request_too_large']);
  });

  it('refuses to listen on a public address without a key', async () => {
    await expect(serve(model, { host: '0.0.0.0', port: 0 })).rejects.toThrow(/without an API key/);
  });

  it('503 with load progress while the model loads, then 200', async () => {
    let resolve!: (m: Harmonium) => void;
    const loading = new Promise<Harmonium>((r) => (resolve = r));
    const s = await serve(loading, { port: 0, servedModelName: 'tiny' });
    try {
      s.onLoadProgress(10, 100);
      const h = await fetch(`${s.url}/health`);
      expect(h.status).toBe(503);
      expect(await h.json()).toEqual({ status: 'loading', loaded_bytes: 10, total_bytes: 100 });
      const c = await fetch(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chat({})) });
      expect(c.status).toBe(503);
      expect(((await c.json()) as { error: { code: string } }).error.code).toBe('model_loading');
      resolve(model);
      await s.ready;
      expect((await fetch(`${s.url}/health`)).status).toBe(200);
    } finally {
      await s.close();
    }
  });
});
