// POST /v1/completions: raw generation (no chat format) from prompt text (encoded as plain text: special-token
// spellings stay text) or token ids, via Harmonium.generate(). `logprobs` is the legacy integer (0..5 alternatives).
// Streamed as text_completion chunks, a usage chunk when stream_options.include_usage, then [DONE].
import type { FastifyReply } from 'fastify';
import type { GeneratedToken, GenerateResult } from '../api/types.js';
import { SAMPLING_KEYS, type SamplingParams } from '../sampling/params.js';
import { newId, nowSeconds, type ServerContext } from './context.js';
import { badRequest, toApiError } from './errors.js';
import { completionLogprobs } from './logprobs.js';
import { SseWriter } from './sse.js';
import { bodyObject, cacheSalt, checkKeys, checkN, includeUsage, optBool, optInt, optString, type Body } from './validate.js';

const COMPLETION_KEYS = new Set<string>([
  'model', 'prompt', 'stream', 'stream_options', 'n', 'best_of', 'echo', 'suffix', 'user', 'ignore_eos', 'cache_salt', ...SAMPLING_KEYS,
]);
const MAX_COMPLETION_LOGPROBS = 5;

/** A prompt: a string, token ids, or a one-element array of either. */
function promptTokens(prompt: unknown, encode: (s: string) => number[]): number[] {
  if (Array.isArray(prompt) && prompt.length === 1 && (typeof prompt[0] === 'string' || Array.isArray(prompt[0]))) prompt = prompt[0];
  if (typeof prompt === 'string') return encode(prompt);
  if (Array.isArray(prompt) && prompt.length > 0 && prompt.every((t) => typeof t === 'number' && Number.isInteger(t))) return prompt as number[];
  if (Array.isArray(prompt) && prompt.length > 1) throw badRequest('prompt', 'one prompt per request (batched prompts are not supported)', 'unsupported_value');
  throw badRequest('prompt', 'must be a string or a non-empty array of token ids', 'invalid_type');
}

interface CompletionCall {
  sampling: SamplingParams;
  stream: boolean;
  includeUsage: boolean;
  top: number | undefined;
  ignoreEos: boolean;
  cacheSalt: string | undefined;
}

function parse(body: Body): CompletionCall {
  checkKeys(body, COMPLETION_KEYS);
  checkN(body);
  const bestOf = optInt(body, 'best_of');
  if (bestOf !== undefined && bestOf !== 1) throw badRequest('best_of', 'only best_of = 1 is supported', 'unsupported_value');
  if (optBool(body, 'echo') === true) throw badRequest('echo', 'echo is not supported', 'unsupported_value');
  if (optString(body, 'suffix') !== undefined) throw badRequest('suffix', 'suffix is not supported', 'unsupported_value');
  optString(body, 'user');
  const stream = optBool(body, 'stream') === true;
  const usage = includeUsage(body);
  const sampling: Record<string, unknown> = {};
  for (const k of SAMPLING_KEYS) if (body[k] !== undefined && body[k] !== null && k !== 'logprobs') sampling[k] = body[k];
  const top = optInt(body, 'logprobs');
  if (top !== undefined) {
    if (top < 0 || top > MAX_COMPLETION_LOGPROBS) throw badRequest('logprobs', `must be in 0..${MAX_COMPLETION_LOGPROBS}, got ${top}`, 'invalid_value');
    Object.assign(sampling, { logprobs: true, top_logprobs: top });
  }
  return { sampling: sampling as SamplingParams, stream, includeUsage: usage, top, ignoreEos: optBool(body, 'ignore_eos') === true, cacheSalt: cacheSalt(body) };
}

export async function completions(ctx: ServerContext, rawBody: unknown, reply: FastifyReply): Promise<void> {
  await ctx.generation(reply, async (model, signal) => {
    const body = bodyObject(rawBody);
    ctx.checkModel(body.model);
    const call = parse(body);
    const tokens = promptTokens(body.prompt, (s) => model.tokenizer.encode(s));
    const stream = model.generate(tokens, call.sampling, { signal, ignoreEos: call.ignoreEos, cacheSalt: call.cacheSalt });
    const head = { id: newId('cmpl-'), object: 'text_completion', created: nowSeconds(), model: ctx.modelName };
    const logprobs = (ts: GeneratedToken[], offset: number) =>
      call.top === undefined ? null : completionLogprobs(ts, model.tokenizer, offset, call.top > 0);
    const finished = (r: GenerateResult) => ({ usage: r.usage, timings: r.timings, finishReason: r.finish_reason });
    if (!call.stream) {
      const out: GeneratedToken[] = [];
      for await (const t of stream) out.push(t);
      const r = await stream.result;
      reply.send({ ...head, choices: [{ index: 0, text: r.text, logprobs: logprobs(out, 0), finish_reason: r.finish_reason }], usage: r.usage });
      return finished(r);
    }
    const sse = new SseWriter(reply);
    const chunk = (text: string, lp: unknown, finish: string | null) => ({
      ...head,
      choices: [{ index: 0, text, logprobs: lp, finish_reason: finish }],
      ...(call.includeUsage ? { usage: null } : {}),
    });
    const it = stream[Symbol.asyncIterator]();
    let next = await it.next(); // a failing request fails before any byte is sent
    let offset = 0;
    try {
      for (; !next.done; next = await it.next()) {
        const t = next.value;
        // A token that only starts a character (or is cut by a stop string) has no text yet: nothing to send.
        if (t.text !== '' || call.top !== undefined) sse.send(chunk(t.text, logprobs([t], offset), null));
        offset += t.text.length;
      }
      const r = await stream.result;
      sse.send(chunk(r.text.slice(offset), null, r.finish_reason)); // what the detokenizer and stop strings held back
      if (call.includeUsage) sse.send({ ...head, choices: [], usage: r.usage });
      sse.end(true);
      return finished(r);
    } catch (err) {
      if (signal.aborted) throw err;
      sse.send(toApiError(err).body());
      sse.end(true);
      return undefined;
    }
  });
}
