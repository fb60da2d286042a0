// The server on a scripted model (test/helpers/scripted_model.ts): given harmony completions replayed through
// the real path, so tool calls, reasoning and malformed output are covered with the openai client: chat and
// Responses, streaming and not, tool_choice enforcement, reasoning in and out.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type ServerHandle } from '../src/server/serve.js';
import { ScriptedModel } from './helpers/scripted_model.js';

const WEATHER_CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Tokyo"}<|call|>';
const SCRIPT = [
  { when: 'reason then answer', output: '<|channel|>analysis<|message|>The user wants 4.<|end|><|start|>assistant<|channel|>final<|message|>It is 4.<|return|>' },
  { when: 'weather in Tokyo', output: `<|channel|>analysis<|message|>Need the weather tool.<|end|><|start|>assistant${WEATHER_CALL}` },
  { when: 'sunny', output: '<|channel|>final<|message|>Sunny in Tokyo.<|return|>' },
  { when: 'break the format', output: '<|channel|>final<|message|>half an answer<|start|>what<|return|>' },
  { when: 'forced call', output: `<|channel|>analysis<|message|>I will not call.<|end|><|start|>assistant<|channel|>final<|message|>No.<|return|>` },
];
const FORCED = { when: 'forced call', output: WEATHER_CALL };
const TOOLS = [
  { type: 'function' as const, function: { name: 'get_weather', description: 'Weather now', parameters: { type: 'object', properties: { city: { type: 'string' } } } } },
  { type: 'function' as const, function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];
const RESPONSE_TOOLS = TOOLS.map((t) => ({ type: 'function' as const, name: t.function.name, parameters: t.function.parameters, strict: false }));

let scripted: ScriptedModel;
let server: ServerHandle;
let client: OpenAI;

beforeAll(async () => {
  scripted = await ScriptedModel.load(SCRIPT);
  server = await serve(scripted.model, { port: 0 });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'x', maxRetries: 0 });
});

afterAll(async () => {
  await server?.close();
  scripted?.model.close();
});

const user = (content: string) => [{ role: 'user' as const, content }];

describe('chat completions on the scripted model', () => {
  it('returns reasoning as reasoning and reasoning_content, the answer as content', async () => {
    const r = await client.chat.completions.create({ model: 'tiny', messages: user('reason then answer') });
    const m = r.choices[0].message as unknown as Record<string, unknown>;
    expect(m.content).toBe('It is 4.');
    expect(m.reasoning).toBe('The user wants 4.');
    expect(m.reasoning_content).toBe('The user wants 4.');
    expect(r.choices[0].finish_reason).toBe('stop');
  });

  it('streams delta.reasoning before delta.content', async () => {
    const s = await client.chat.completions.create({ model: 'tiny', messages: user('reason then answer'), stream: true });
    let reasoning = '';
    let content = '';
    for await (const c of s) {
      const d = c.choices[0]?.delta as Record<string, string> | undefined;
      if (d?.reasoning) {
        expect(content).toBe('');
        expect(d.reasoning_content).toBe(d.reasoning);
        reasoning += d.reasoning;
      }
      content += d?.content ?? '';
    }
    expect([reasoning, content]).toEqual(['The user wants 4.', 'It is 4.']);
  });

  it('returns a tool call, then takes the tool result and the reasoning back in', async () => {
    const r = await client.chat.completions.create({ model: 'tiny', messages: user('weather in Tokyo?'), tools: TOOLS });
    const choice = r.choices[0];
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.content).toBeNull();
    const call = choice.message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall;
    expect(call.function).toEqual({ name: 'get_weather', arguments: '{"city":"Tokyo"}' });
    expect(call.id).toMatch(/^call_/);
    const follow = await client.chat.completions.create({
      model: 'tiny',
      tools: TOOLS,
      messages: [
        ...user('weather in Tokyo?'),
        { role: 'assistant', content: null, tool_calls: [call], reasoning: 'Need the weather tool.' } as OpenAI.ChatCompletionAssistantMessageParam,
        { role: 'tool', tool_call_id: call.id, content: '{"sky":"sunny"}' },
      ],
    });
    expect(follow.choices[0].message.content).toBe('Sunny in Tokyo.');
    const prompt = scripted.prompts[scripted.prompts.length - 1];
    expect(prompt).toContain('<|start|>assistant<|channel|>analysis<|message|>Need the weather tool.<|end|>');
    expect(prompt).toContain('<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sky":"sunny"}<|end|>');
  });

  it('streams tool-call deltas: id and name first, then the arguments', async () => {
    const s = await client.chat.completions.create({ model: 'tiny', messages: user('weather in Tokyo?'), tools: TOOLS, stream: true });
    const deltas = [];
    let finish;
    for await (const c of s) {
      if (c.choices[0]?.delta.tool_calls) deltas.push(...c.choices[0].delta.tool_calls);
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    expect(deltas[0]).toMatchObject({ index: 0, type: 'function', function: { name: 'get_weather', arguments: '' } });
    expect(deltas[0].id).toMatch(/^call_/);
    expect(deltas.length).toBeGreaterThan(2);
    expect(deltas.map((d) => d.function?.arguments ?? '').join('')).toBe('{"city":"Tokyo"}');
    expect(finish).toBe('tool_calls');
  });

  it('flags malformed output and still answers 200 with the best effort', async () => {
    const r = await client.chat.completions.create({ model: 'tiny', messages: user('break the format') });
    const choice = r.choices[0] as unknown as Record<string, unknown>;
    expect(choice.malformed).toBe(true);
    expect((choice.message as { content: string }).content).toContain('half an answer');
  });

  it('enforces tool_choice: a named function and required prefill the call header; none renders no tools', async () => {
    scripted.script = [FORCED, ...SCRIPT];
    try {
      for (const tool_choice of [{ type: 'function' as const, function: { name: 'get_weather' } }, 'required' as const]) {
        const r = await client.chat.completions.create({ model: 'tiny', messages: user('forced call'), tools: TOOLS, tool_choice });
        const call = r.choices[0].message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall;
        expect(call.function).toEqual({ name: 'get_weather', arguments: '{"city":"Tokyo"}' });
        const prompt = scripted.prompts[scripted.prompts.length - 1];
        expect(prompt.endsWith(tool_choice === 'required' ? '<|start|>assistant<|channel|>commentary to=functions.' : '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>')).toBe(true);
      }
      // none: the model is told of no function, and a call it writes anyway is not an answer.
      const r = await client.chat.completions.create({ model: 'tiny', messages: user('forced call'), tools: TOOLS, tool_choice: 'none' });
      expect(scripted.prompts[scripted.prompts.length - 1]).not.toContain('namespace functions');
      expect(r.choices[0].message.tool_calls).toBeUndefined();
      expect(r.choices[0].finish_reason).toBe('stop');
      expect((r.choices[0] as unknown as { malformed: boolean }).malformed).toBe(true);
    } finally {
      scripted.script = SCRIPT;
    }
  });

  it('returns logprobs of the scripted tokens (all near 0)', async () => {
    const r = await client.chat.completions.create({ model: 'tiny', messages: user('reason then answer'), logprobs: true, top_logprobs: 2 });
    const lp = r.choices[0].logprobs!.content!;
    expect(lp.length).toBe(r.usage!.completion_tokens);
    for (const t of lp) expect(t.logprob).toBeGreaterThan(-1e-3);
    expect(lp.map((t) => t.token).join('')).toContain('It is 4.');
  });
});

describe('Responses API on the scripted model', () => {
  it('returns reasoning (reasoning_text parts) and the message', async () => {
    const r = await client.responses.create({ model: 'tiny', input: 'reason then answer', reasoning: { effort: 'low' } });
    expect(r.status).toBe('completed');
    expect(r.output.map((o) => o.type)).toEqual(['reasoning', 'message']);
    const reasoning = r.output[0] as OpenAI.Responses.ResponseReasoningItem;
    expect(reasoning.content).toEqual([{ type: 'reasoning_text', text: 'The user wants 4.' }]);
    expect(r.output_text).toBe('It is 4.');
    expect(r.usage!.output_tokens_details.reasoning_tokens).toBeGreaterThan(0);
    expect(scripted.prompts[scripted.prompts.length - 1]).toContain('Reasoning: low');
  });

  it('streams the events in order: reasoning deltas, text deltas, each with its .done, then completed', async () => {
    const s = await client.responses.create({ model: 'tiny', input: 'reason then answer', stream: true });
    const types: string[] = [];
    let reasoning = '';
    let text = '';
    let completed: OpenAI.Responses.Response | undefined;
    for await (const e of s) {
      types.push(e.type);
      if (e.type === 'response.reasoning_text.delta') reasoning += e.delta;
      if (e.type === 'response.output_text.delta') text += e.delta;
      if (e.type === 'response.completed') completed = e.response;
    }
    const dedup = types.filter((t, i) => t !== types[i - 1]);
    expect(dedup).toEqual([
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      'response.reasoning_text.delta',
      'response.reasoning_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.output_item.added',
      'response.content_part.added',
      'response.output_text.delta',
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    expect([reasoning, text]).toEqual(['The user wants 4.', 'It is 4.']);
    const message = completed!.output.find((o) => o.type === 'message') as OpenAI.Responses.ResponseOutputMessage;
    expect(message.content[0]).toMatchObject({ type: 'output_text', text: 'It is 4.' });
  });

  it('streams a function call with argument deltas and takes its output back', async () => {
    const s = await client.responses.create({ model: 'tiny', input: 'weather in Tokyo?', tools: RESPONSE_TOOLS, stream: true });
    let args = '';
    let done: OpenAI.Responses.Response | undefined;
    const types = new Set<string>();
    for await (const e of s) {
      types.add(e.type);
      if (e.type === 'response.function_call_arguments.delta') args += e.delta;
      if (e.type === 'response.completed') done = e.response;
    }
    expect(types.has('response.function_call_arguments.done')).toBe(true);
    expect(args).toBe('{"city":"Tokyo"}');
    const call = done!.output.find((o) => o.type === 'function_call') as OpenAI.Responses.ResponseFunctionToolCall;
    expect(call).toMatchObject({ name: 'get_weather', arguments: '{"city":"Tokyo"}' });
    const reasoning = done!.output.find((o) => o.type === 'reasoning')!;
    const follow = await client.responses.create({
      model: 'tiny',
      tools: RESPONSE_TOOLS,
      input: [
        { role: 'user', content: 'weather in Tokyo?' },
        reasoning as OpenAI.Responses.ResponseReasoningItem,
        { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments },
        { type: 'function_call_output', call_id: call.call_id, output: '{"sky":"sunny"}' },
      ],
    });
    expect(follow.output_text).toBe('Sunny in Tokyo.');
    expect(scripted.prompts[scripted.prompts.length - 1]).toContain('<|channel|>analysis<|message|>Need the weather tool.<|end|>');
  });

  it('enforces a named tool_choice', async () => {
    scripted.script = [FORCED, ...SCRIPT];
    try {
      const r = await client.responses.create({ model: 'tiny', input: 'forced call', tools: RESPONSE_TOOLS, tool_choice: { type: 'function', name: 'get_weather' } });
      expect(r.output.map((o) => o.type)).toEqual(['function_call']);
    } finally {
      scripted.script = SCRIPT;
    }
  });
});
