// POST /v1/chat/completions: the request checked and handed to Harmonium.chat(), the result as OpenAI's
// chat.completion, or streamed as chat.completion.chunk events (role first; reasoning, content and tool-call
// deltas; the finish reason; a usage chunk when stream_options.include_usage; [DONE]).
import type { FastifyReply } from 'fastify';
import type { ChatCompletionRequest, ChatEvent, ChatResult } from '../api/types.js';
import type { Tool } from '../harmony/types.js';
import { SAMPLING_KEYS } from '../sampling/params.js';
import { finishedChat, newId, nowSeconds, type ServerContext } from './context.js';
import { badRequest, toApiError } from './errors.js';
import { chatLogprobs } from './logprobs.js';
import { SseWriter } from './sse.js';
import { planToolChoice, type ToolPlan } from './tool_choice.js';
import { bodyObject, cacheSalt, checkKeys, checkN, includeUsage, optArray, optBool, optObject, optString, type Body } from './validate.js';

/** Harmony options the renderer takes beside the OpenAI fields. */
export const HARMONY_KEYS = ['model_identity', 'knowledge_cutoff', 'current_date', 'builtin_tools'] as const;

const CHAT_KEYS = new Set<string>([
  'model', 'messages', 'tools', 'tool_choice', 'parallel_tool_calls', 'reasoning_effort', 'stream', 'stream_options',
  'n', 'user', 'response_format', 'ignore_eos', 'cache_salt', ...SAMPLING_KEYS, ...HARMONY_KEYS,
]);

/** response_format: plain text only, until structured output exists. */
export function checkTextFormat(format: Body | undefined, param: string): void {
  if (format && format.type !== 'text')
    throw badRequest(param, `${JSON.stringify(format.type)} is not supported (structured output is not implemented); only "text"`, 'unsupported_value');
}

interface ChatCall {
  request: ChatCompletionRequest;
  plan: ToolPlan;
  stream: boolean;
  includeUsage: boolean;
  ignoreEos: boolean;
  cacheSalt: string | undefined;
}

function parseChat(ctx: ServerContext, raw: unknown): ChatCall {
  const body = bodyObject(raw);
  checkKeys(body, CHAT_KEYS);
  ctx.checkModel(body.model);
  if (!Array.isArray(body.messages)) throw badRequest('messages', 'must be an array of messages', 'invalid_type');
  optArray(body, 'tools');
  optBool(body, 'parallel_tool_calls');
  optString(body, 'user');
  checkN(body);
  checkTextFormat(optObject(body, 'response_format'), 'response_format');
  const stream = optBool(body, 'stream') === true;
  const usage = includeUsage(body);
  if (body.stream_options !== undefined && body.stream_options !== null && !stream)
    throw badRequest('stream_options', 'only allowed with stream: true');
  const plan = planToolChoice(body.tool_choice, body.tools as Tool[] | undefined, (c) => (c.function as Body | undefined)?.name);
  const request: Record<string, unknown> = { messages: body.messages };
  for (const k of ['reasoning_effort', ...HARMONY_KEYS, ...SAMPLING_KEYS]) if (body[k] !== undefined && body[k] !== null) request[k] = body[k];
  if (plan.tools) request.tools = plan.tools;
  return {
    request: request as unknown as ChatCompletionRequest,
    plan,
    stream,
    includeUsage: usage,
    ignoreEos: optBool(body, 'ignore_eos') === true,
    cacheSalt: cacheSalt(body),
  };
}

/** tool_choice none: a call the model wrote anyway is no answer (see tool_choice.ts). */
function enforce(result: ChatResult, plan: ToolPlan): ChatResult {
  if (!plan.forbidCalls || result.tool_calls.length === 0) return result;
  return { ...result, tool_calls: [], finish_reason: result.finish_reason === 'tool_calls' ? 'stop' : result.finish_reason, malformed: true };
}

function message(ctx: ServerContext, r: ChatResult): Body {
  const m: Body = { role: 'assistant', content: r.content === '' && r.tool_calls.length > 0 ? null : r.content };
  Object.assign(m, ctx.reasoning(r.reasoning));
  if (r.tool_calls.length > 0) m.tool_calls = r.tool_calls;
  return m;
}

export async function chatCompletions(ctx: ServerContext, rawBody: unknown, reply: FastifyReply): Promise<void> {
  await ctx.generation(reply, async (model, signal) => {
    const call = parseChat(ctx, rawBody);
    const stream = model.chat(call.request, {
      signal,
      assistantPrefix: call.plan.assistantPrefix,
      ignoreEos: call.ignoreEos,
      cacheSalt: call.cacheSalt,
    });
    const id = newId('chatcmpl-');
    const created = nowSeconds();
    const head = { id, created, model: ctx.modelName };
    if (!call.stream) {
      const r = enforce(await stream.result, call.plan);
      reply.send({
        ...head,
        object: 'chat.completion',
        choices: [
          {
            index: 0,
            message: message(ctx, r),
            logprobs: r.logprobs ? { content: chatLogprobs(r.logprobs, model.tokenizer) } : null,
            finish_reason: r.finish_reason,
            ...(r.malformed ? { malformed: true } : {}),
          },
        ],
        usage: r.usage,
      });
      return finishedChat(r);
    }

    const sse = new SseWriter(reply);
    const chunk = (delta: Body, finish: string | null = null, extra: Body = {}) => ({
      ...head,
      object: 'chat.completion.chunk',
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish, ...extra }],
      ...(call.includeUsage ? { usage: null } : {}),
    });
    const it = stream[Symbol.asyncIterator]();
    // The first event (or the request's failure) comes before any byte is sent: a bad request is still a 4xx.
    let next = await it.next();
    sse.send(chunk({ role: 'assistant', content: '' }));
    const started = new Set<number>();
    let calls = 0;
    let result: ChatResult | undefined;
    try {
      for (; !next.done; next = await it.next()) {
        const e: ChatEvent = next.value;
        if (e.type === 'reasoning') sse.send(chunk(ctx.reasoning(e.delta)));
        else if (e.type === 'content') sse.send(chunk({ content: e.delta }));
        else if (e.type === 'tool_arguments' && !call.plan.forbidCalls) {
          if (!started.has(e.index)) {
            started.add(e.index);
            sse.send(chunk({ tool_calls: [{ index: e.index, id: e.id, type: 'function', function: { name: e.name, arguments: '' } }] }));
          }
          sse.send(chunk({ tool_calls: [{ index: e.index, function: { arguments: e.delta } }] }));
        } else if (e.type === 'tool_call' && !call.plan.forbidCalls) {
          const index = calls++;
          if (!started.has(index)) sse.send(chunk({ tool_calls: [{ index, ...e.tool_call }] }));
        } else if (e.type === 'done') result = enforce(e.message, call.plan);
      }
    } catch (err) {
      if (signal.aborted) throw err;
      // Headers are out: the error goes as an event, then the stream ends.
      sse.send(toApiError(err).body());
      sse.end(true);
      return undefined;
    }
    const r = result!;
    const extra: Body = r.logprobs ? { logprobs: { content: chatLogprobs(r.logprobs, model.tokenizer) } } : {};
    if (r.malformed) extra.malformed = true;
    sse.send(chunk({}, r.finish_reason, extra));
    if (call.includeUsage) sse.send({ ...head, object: 'chat.completion.chunk', choices: [], usage: r.usage });
    sse.end(true);
    return finishedChat(r);
  });
}
