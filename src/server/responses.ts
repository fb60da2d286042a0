// POST /v1/responses: a Responses request (translated by responses_input.ts) run through Harmonium.chat(). The
// output is a list of items in the order the model wrote them: `reasoning` (content: reasoning_text parts),
// `message` (output_text), `function_call`. Streaming sends OpenAI's event sequence, each with its
// sequence_number: response.created, response.in_progress, then per item output_item.added, content_part.added,
// the deltas (reasoning_text / output_text / function_call_arguments) and their .done events, content_part.done,
// output_item.done; last response.completed (response.incomplete when cut by max_output_tokens) with the usage.
import type { FastifyReply } from 'fastify';
import type { ChatCompletionRequest, ChatEvent, ChatResult } from '../api/types.js';
import type { HarmonyTokenizer } from '../tokenizer/tokenizer.js';
import { HARMONY_KEYS, checkTextFormat } from './chat.js';
import { finishedChat, newId, nowSeconds, type ServerContext } from './context.js';
import { badRequest, toApiError } from './errors.js';
import { chatLogprobs } from './logprobs.js';
import { inputMessages, inputTools, reasoningEffort } from './responses_input.js';
import { SseWriter } from './sse.js';
import { planToolChoice, type ToolPlan } from './tool_choice.js';
import { bodyObject, cacheSalt, checkKeys, optArray, optBool, optInt, optObject, optString, type Body } from './validate.js';

const RESPONSES_KEYS = new Set<string>([
  'model', 'input', 'instructions', 'tools', 'tool_choice', 'parallel_tool_calls', 'reasoning', 'stream', 'store',
  'max_output_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'seed', 'top_logprobs', 'text', 'metadata', 'user',
  'truncation', 'stop', 'frequency_penalty', 'presence_penalty', 'repetition_penalty', 'logit_bias', 'ignore_eos',
  'cache_salt', ...HARMONY_KEYS,
]);
const PASSED = ['temperature', 'top_p', 'top_k', 'min_p', 'seed', 'stop', 'frequency_penalty', 'presence_penalty', 'repetition_penalty', 'logit_bias'];

interface ResponsesCall {
  body: Body;
  request: Record<string, unknown>;
  plan: ToolPlan;
  stream: boolean;
  ignoreEos: boolean;
  cacheSalt: string | undefined;
}

function parseResponses(ctx: ServerContext, raw: unknown): ResponsesCall {
  const body = bodyObject(raw);
  checkKeys(body, RESPONSES_KEYS);
  ctx.checkModel(body.model);
  if (body.input === undefined) throw badRequest('input', 'is required', 'invalid_value');
  if (optBool(body, 'store') === true) throw badRequest('store', 'responses are not stored by this server; send store: false', 'unsupported_value');
  if (body.truncation !== undefined && body.truncation !== null && body.truncation !== 'disabled')
    throw badRequest('truncation', 'only "disabled" is supported', 'unsupported_value');
  const text = optObject(body, 'text');
  if (text) {
    checkKeys(text, new Set(['format']), 'text.');
    checkTextFormat(optObject(text, 'format', 'text.'), 'text.format');
  }
  optObject(body, 'metadata');
  optString(body, 'user');
  optBool(body, 'parallel_tool_calls');
  const tools = inputTools(optArray(body, 'tools'));
  const plan = planToolChoice(body.tool_choice, tools, (c) => c.name);
  const request: Record<string, unknown> = { messages: inputMessages(optString(body, 'instructions'), body.input) };
  if (plan.tools) request.tools = plan.tools;
  const effort = reasoningEffort(body);
  if (effort !== undefined) request.reasoning_effort = effort;
  for (const k of [...PASSED, ...HARMONY_KEYS]) if (body[k] !== undefined && body[k] !== null) request[k] = body[k];
  const maxOut = optInt(body, 'max_output_tokens');
  if (maxOut !== undefined) request.max_tokens = maxOut;
  const top = optInt(body, 'top_logprobs');
  if (top !== undefined) Object.assign(request, { logprobs: true, top_logprobs: top });
  return { body, request, plan, stream: optBool(body, 'stream') === true, ignoreEos: optBool(body, 'ignore_eos') === true, cacheSalt: cacheSalt(body) };
}

/** The response object around its output (in_progress while streaming, completed or incomplete at the end). */
function envelope(ctx: ServerContext, call: ResponsesCall, id: string, created: number, status: string, output: Body[], r?: ChatResult, tokenizer?: HarmonyTokenizer): Body {
  const b = call.body;
  return {
    id,
    object: 'response',
    created_at: created,
    status,
    model: ctx.modelName,
    output,
    error: null,
    incomplete_details: status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
    instructions: b.instructions ?? null,
    max_output_tokens: b.max_output_tokens ?? null,
    metadata: b.metadata ?? {},
    parallel_tool_calls: b.parallel_tool_calls ?? true,
    reasoning: { effort: (call.request.reasoning_effort as string | undefined) ?? 'medium', summary: null },
    store: false,
    temperature: b.temperature ?? 1,
    top_p: b.top_p ?? 1,
    text: { format: { type: 'text' } },
    tool_choice: b.tool_choice ?? 'auto',
    tools: b.tools ?? [],
    truncation: 'disabled',
    usage:
      r && tokenizer
        ? {
            input_tokens: r.usage.prompt_tokens,
            input_tokens_details: { cached_tokens: r.usage.prompt_tokens_details?.cached_tokens ?? 0 },
            output_tokens: r.usage.completion_tokens,
            // The chain of thought's length re-tokenized: its text is exact, the count can differ by a token at a boundary.
            output_tokens_details: { reasoning_tokens: r.reasoning ? tokenizer.encode(r.reasoning).length : 0 },
            total_tokens: r.usage.total_tokens,
          }
        : null,
  };
}

/** The output items as the model wrote them, built from the chat events: one item per run of one kind. */
class OutputBuilder {
  readonly items: Body[] = [];
  private open: Body | undefined;
  private callIndex = -1;
  private calls = 0;

  constructor(
    private readonly emit: (type: string, data: Body) => void,
    private readonly plan: ToolPlan,
  ) {}

  private get outputIndex(): number {
    return this.items.length - 1;
  }

  private start(item: Body, part?: Body): void {
    this.close();
    this.items.push(item);
    this.open = item;
    this.emit('response.output_item.added', { output_index: this.outputIndex, item: structuredClone(item) });
    if (part) this.emit('response.content_part.added', { item_id: item.id, output_index: this.outputIndex, content_index: 0, part: structuredClone(part) });
  }

  /** Ends the open item: its .done events. */
  close(): void {
    const item = this.open;
    if (!item) return;
    this.open = undefined;
    const at = { item_id: item.id, output_index: this.outputIndex };
    if (item.type === 'reasoning' || item.type === 'message') {
      const part = (item.content as Body[])[0];
      if (item.type === 'reasoning') this.emit('response.reasoning_text.done', { ...at, content_index: 0, text: part.text });
      else this.emit('response.output_text.done', { ...at, content_index: 0, text: part.text, logprobs: [] });
      this.emit('response.content_part.done', { ...at, content_index: 0, part });
    } else {
      this.emit('response.function_call_arguments.done', { ...at, name: item.name, arguments: item.arguments });
    }
    item.status = 'completed';
    this.emit('response.output_item.done', { output_index: this.outputIndex, item });
  }

  push(e: ChatEvent): void {
    if (e.type === 'reasoning' || e.type === 'content') {
      const kind = e.type === 'reasoning' ? 'reasoning' : 'message';
      if (this.open?.type !== kind) {
        const part = kind === 'reasoning' ? { type: 'reasoning_text', text: '' } : { type: 'output_text', text: '', annotations: [], logprobs: [] };
        const item =
          kind === 'reasoning'
            ? { type: 'reasoning', id: newId('rs_'), summary: [], content: [{ ...part }], status: 'in_progress' }
            : { type: 'message', id: newId('msg_'), role: 'assistant', status: 'in_progress', content: [{ ...part }] };
        this.start(item, part);
      }
      const part = (this.open!.content as Body[])[0];
      part.text += e.delta;
      const at = { item_id: this.open!.id, output_index: this.outputIndex, content_index: 0, delta: e.delta };
      this.emit(kind === 'reasoning' ? 'response.reasoning_text.delta' : 'response.output_text.delta', kind === 'message' ? { ...at, logprobs: [] } : at);
    } else if (e.type === 'tool_arguments' && !this.plan.forbidCalls) {
      if (this.callIndex !== e.index) {
        this.callIndex = e.index;
        this.start({ type: 'function_call', id: newId('fc_'), call_id: e.id, name: e.name, arguments: '', status: 'in_progress' });
      }
      this.open!.arguments += e.delta;
      this.emit('response.function_call_arguments.delta', { item_id: this.open!.id, output_index: this.outputIndex, delta: e.delta });
    } else if (e.type === 'tool_call' && !this.plan.forbidCalls) {
      const index = this.calls++;
      if (this.callIndex !== index) {
        this.callIndex = index;
        this.start({ type: 'function_call', id: newId('fc_'), call_id: e.tool_call.id, name: e.tool_call.function.name, arguments: '', status: 'in_progress' });
      }
      this.open!.arguments = e.tool_call.function.arguments; // the parser's final text (e.g. an array unwrapped)
      this.close();
    }
  }
}

export async function responses(ctx: ServerContext, rawBody: unknown, reply: FastifyReply): Promise<void> {
  await ctx.generation(reply, async (model, signal) => {
    const call = parseResponses(ctx, rawBody);
    const stream = model.chat(call.request as unknown as ChatCompletionRequest, {
      signal,
      assistantPrefix: call.plan.assistantPrefix,
      ignoreEos: call.ignoreEos,
      cacheSalt: call.cacheSalt,
    });
    const id = newId('resp_');
    const created = nowSeconds();
    const sse = call.stream ? new SseWriter(reply) : undefined;
    let seq = 0;
    const emit = (type: string, data: Body) => sse?.send({ type, sequence_number: seq++, ...data }, type);
    const builder = new OutputBuilder(emit, call.plan);
    const it = stream[Symbol.asyncIterator]();
    let next = await it.next(); // a failing request fails before any byte is sent
    emit('response.created', { response: envelope(ctx, call, id, created, 'in_progress', []) });
    emit('response.in_progress', { response: envelope(ctx, call, id, created, 'in_progress', []) });
    let result: ChatResult | undefined;
    try {
      for (; !next.done; next = await it.next()) {
        if (next.value.type === 'done') result = next.value.message;
        else builder.push(next.value);
      }
    } catch (err) {
      if (signal.aborted || !sse) throw err;
      const e = toApiError(err);
      emit('error', { code: e.code, message: e.message, param: e.param });
      sse.end(false);
      return undefined;
    }
    builder.close();
    const r = result!;
    if (r.logprobs) {
      const msg = builder.items.find((i) => i.type === 'message');
      if (msg) (msg.content as Body[])[0].logprobs = chatLogprobs(r.logprobs, model.tokenizer);
    }
    const status = r.finish_reason === 'length' ? 'incomplete' : 'completed';
    const response = envelope(ctx, call, id, created, status, builder.items, r, model.tokenizer);
    if (r.malformed || (call.plan.forbidCalls && r.tool_calls.length > 0)) response.malformed = true;
    if (sse) {
      emit(status === 'completed' ? 'response.completed' : 'response.incomplete', { response });
      sse.end(false);
    } else reply.send(response);
    return finishedChat(r);
  });
}
