// One benchmark request against an OpenAI-compatible server, streamed, timed as vLLM's `bench serve` times it:
// TTFT at the first chunk that carries text (content or reasoning), one inter-token latency per later chunk,
// E2EL at the end; the output token count from the server's usage (stream_options.include_usage) when given.
import type { BenchRequest } from './serve_dataset.js';

export interface RequestOutput {
  success: boolean;
  error: string;
  promptLen: number;
  outputTokens: number;
  /** Seconds. */
  ttft: number;
  itl: number[];
  latency: number;
  /** performance.now() / 1000 at send. */
  startTime: number;
}

export interface ClientOptions {
  baseUrl: string;
  endpoint: '/v1/completions' | '/v1/chat/completions';
  model: string;
  ignoreEos: boolean;
  temperature: number;
  apiKey?: string;
}

function body(o: ClientOptions, r: BenchRequest): Record<string, unknown> {
  const common = { model: o.model, temperature: o.temperature, stream: true, stream_options: { include_usage: true }, ...(o.ignoreEos ? { ignore_eos: true } : {}) };
  return o.endpoint === '/v1/completions'
    ? { ...common, prompt: r.prompt, max_tokens: r.outputLen }
    : { ...common, messages: [{ role: 'user', content: r.prompt }], max_completion_tokens: r.outputLen };
}

/** Text a chunk carries, whichever API it comes from. */
function chunkText(chunk: { choices?: { text?: string; delta?: Record<string, unknown> }[] }): string {
  const c = chunk.choices?.[0];
  if (!c) return '';
  if (typeof c.text === 'string') return c.text;
  const d = c.delta ?? {};
  for (const k of ['content', 'reasoning', 'reasoning_content']) if (typeof d[k] === 'string' && d[k] !== '') return d[k] as string;
  return Array.isArray(d.tool_calls) && d.tool_calls.length > 0 ? ' ' : '';
}

export async function sendRequest(o: ClientOptions, r: BenchRequest): Promise<RequestOutput> {
  const out: RequestOutput = { success: false, error: '', promptLen: r.promptLen, outputTokens: 0, ttft: 0, itl: [], latency: 0, startTime: performance.now() / 1000 };
  const st = performance.now();
  let last = st;
  let chunks = 0;
  try {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (o.apiKey) headers.authorization = `Bearer ${o.apiKey}`;
    const res = await fetch(`${o.baseUrl}${o.endpoint}`, { method: 'POST', headers, body: JSON.stringify(body(o, r)) });
    if (!res.ok || !res.body) {
      out.error = `HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`;
      return out;
    }
    const decoder = new TextDecoder();
    let buf = '';
    for await (const bytes of res.body) {
      buf += decoder.decode(bytes as Uint8Array, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n\n')) >= 0) {
        const event = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        for (const line of event.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message ?? JSON.stringify(chunk.error));
          if (chunk.usage?.completion_tokens !== undefined) out.outputTokens = chunk.usage.completion_tokens;
          if (chunkText(chunk) === '') continue;
          const now = performance.now();
          if (chunks === 0) out.ttft = (now - st) / 1000;
          else out.itl.push((now - last) / 1000);
          last = now;
          chunks++;
        }
      }
    }
    out.latency = (performance.now() - st) / 1000;
    if (out.outputTokens === 0) out.outputTokens = chunks; // a server without usage: one token per chunk
    out.success = chunks > 0;
    if (!out.success) out.error = 'the stream carried no text';
  } catch (err) {
    out.error = err instanceof Error ? err.message : String(err);
  }
  return out;
}
