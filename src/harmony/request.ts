// A chat request (OpenAI Chat Completions shape) to harmony messages: validation with clear errors, the system
// message built from the harmony options, leading system/developer messages as the developer message's
// `# Instructions` (as the Hugging Face chat template does), assistant reasoning / preambles / tool calls / finals,
// tool results, and the chain-of-thought rule.
//
// Chain of thought, per turn (a turn is what follows a user message): an assistant's reasoning is kept while its
// turn has no final answer yet (the model is still calling tools and needs it), and dropped once the turn has a
// final answer. The exception is the last turn of a conversation rendered without a generation prompt (training
// and continuation), which keeps it. See docs/harmony.md for how this compares with the harmony library.

import { RequestError } from '../errors.js';
import { renderDeveloperContent, renderSystemContent } from './content.js';
import type { ToolDescription } from './builtin_tools.js';
import type { BuiltinTool, ChatMessage, ChatRequest, HarmonyMessage, JsonSchema, ReasoningEffort } from './types.js';

/** A request the renderer cannot render; the message says what and where (defined with the other errors). */
export { RequestError };

const CHAT_ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);
const EFFORTS = new Set(['low', 'medium', 'high']);
const BUILTINS = new Set(['browser', 'python']);
const SCHEMA_TYPES = new Set(['string', 'number', 'integer', 'boolean', 'object', 'array', 'null']);
const FUNCTION_NAME = /^[A-Za-z0-9_-]{1,64}$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The fields of a request the renderer reads (the library adds the sampling fields). */
export const REQUEST_KEYS = ['messages', 'tools', 'reasoning_effort', 'model_identity', 'knowledge_cutoff', 'current_date', 'builtin_tools'] as const;

const FIELD_PATH = /^[a-z_]+(?:\[\d+\]|\.[A-Za-z_]\w*)*/;

/** Throws RequestError; every message starts with the field's path when one field is at fault, which becomes `param`. */
function fail(message: string): never {
  const path = FIELD_PATH.exec(message)?.[0];
  const root = path?.split(/[[.]/)[0];
  throw new RequestError(message, root !== undefined && (REQUEST_KEYS as readonly string[]).includes(root) ? path : undefined);
}

/** Text of a message content: a string, null/absent (empty), or an array of text parts. */
function contentText(content: unknown, where: string): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((part, i) => {
        if (isObject(part) && part.type === 'text' && typeof part.text === 'string') return part.text;
        const kind = isObject(part) && typeof part.type === 'string' ? `a "${part.type}" part` : 'not a text part';
        return fail(`${where}.content[${i}] is ${kind}; only text content can be rendered`);
      })
      .join('');
  }
  return fail(`${where}.content must be a string, null or an array of text parts`);
}

/** Checks that a value is a JSON Schema the renderer can read, naming the first offending path. */
function validateSchema(schema: unknown, path: string): void {
  if (typeof schema === 'boolean') return;
  if (!isObject(schema)) fail(`${path} is not a JSON Schema object`);
  const type = schema.type;
  if (type !== undefined) {
    const types = Array.isArray(type) ? type : [type];
    if (Array.isArray(type) && type.length === 0) fail(`${path}.type is an empty array`);
    for (const t of types) {
      if (typeof t !== 'string' || !SCHEMA_TYPES.has(t)) fail(`${path}.type ${JSON.stringify(t)} is not a JSON Schema type`);
    }
  }
  if (schema.properties !== undefined) {
    if (!isObject(schema.properties)) fail(`${path}.properties must be an object`);
    for (const [k, v] of Object.entries(schema.properties)) validateSchema(v, `${path}.properties.${k}`);
  }
  if (schema.required !== undefined) {
    if (!Array.isArray(schema.required) || !schema.required.every((r) => typeof r === 'string')) {
      fail(`${path}.required must be an array of property names`);
    }
  }
  if (schema.items !== undefined) {
    if (Array.isArray(schema.items)) schema.items.forEach((s, i) => validateSchema(s, `${path}.items[${i}]`));
    else validateSchema(schema.items, `${path}.items`);
  }
  for (const key of ['oneOf', 'anyOf', 'allOf'] as const) {
    const v = schema[key];
    if (v === undefined) continue;
    if (!Array.isArray(v) || v.length === 0) fail(`${path}.${key} must be a non-empty array of schemas`);
    v.forEach((s, i) => validateSchema(s, `${path}.${key}[${i}]`));
  }
  if (schema.enum !== undefined && !Array.isArray(schema.enum)) fail(`${path}.enum must be an array`);
  if (schema.additionalProperties !== undefined) validateSchema(schema.additionalProperties, `${path}.additionalProperties`);
  for (const key of ['description', 'title'] as const) {
    if (schema[key] !== undefined && typeof schema[key] !== 'string') fail(`${path}.${key} must be a string`);
  }
}

function validateTools(tools: unknown): ToolDescription[] {
  if (tools === undefined || tools === null) return [];
  if (!Array.isArray(tools)) fail('tools must be an array');
  const seen = new Set<string>();
  return tools.map((t: unknown, i) => {
    const where = `tools[${i}]`;
    if (!isObject(t)) fail(`${where} must be an object`);
    if (t.type !== 'function') fail(`${where}.type must be "function" (got ${JSON.stringify(t.type)})`);
    const fn = t.function;
    if (!isObject(fn)) fail(`${where}.function must be an object`);
    if (typeof fn.name !== 'string' || !FUNCTION_NAME.test(fn.name)) {
      fail(`${where}.function.name must be 1-64 letters, digits, _ or - (got ${JSON.stringify(fn.name)})`);
    }
    if (seen.has(fn.name)) fail(`${where}: duplicate function name "${fn.name}"`);
    seen.add(fn.name);
    if (fn.description !== undefined && fn.description !== null && typeof fn.description !== 'string') {
      fail(`${where}.function.description must be a string`);
    }
    const desc: ToolDescription = { name: fn.name, description: (fn.description as string | undefined) ?? '' };
    if (fn.parameters !== undefined && fn.parameters !== null) {
      const p = fn.parameters;
      if (!isObject(p)) fail(`${where}.function.parameters is not a JSON Schema object`);
      if (p.type !== undefined && p.type !== 'object') {
        fail(`${where}.function.parameters must describe an object (type "object"), got type ${JSON.stringify(p.type)}`);
      }
      validateSchema(p, `${where}.function.parameters`);
      desc.parameters = p as JsonSchema;
    }
    return desc;
  });
}

function validateOptions(req: Record<string, unknown>): void {
  if (req.reasoning_effort !== undefined && req.reasoning_effort !== null && !EFFORTS.has(req.reasoning_effort as string)) {
    fail(`reasoning_effort must be low, medium or high (got ${JSON.stringify(req.reasoning_effort)})`);
  }
  for (const key of ['model_identity', 'knowledge_cutoff'] as const) {
    const v = req[key];
    if (v !== undefined && v !== null && typeof v !== 'string') fail(`${key} must be a string or null`);
  }
  if (req.current_date !== undefined && req.current_date !== null) {
    const d = req.current_date;
    const m = typeof d === 'string' ? /^(\d{4})-(\d{2})-(\d{2})$/.exec(d) : null;
    if (!m || +m[2] < 1 || +m[2] > 12 || +m[3] < 1 || +m[3] > 31) fail(`current_date must be YYYY-MM-DD (got ${JSON.stringify(d)})`);
  }
  if (req.builtin_tools !== undefined && req.builtin_tools !== null) {
    if (!Array.isArray(req.builtin_tools)) fail('builtin_tools must be an array of "browser" and/or "python"');
    for (const t of req.builtin_tools) if (!BUILTINS.has(t as string)) fail(`builtin_tools: unknown built-in tool ${JSON.stringify(t)} (browser, python)`);
  }
}

/** An assistant message's chain of thought, whichever of the three names carries it. */
function reasoningText(m: Record<string, unknown>, where: string): string {
  for (const key of ['reasoning', 'reasoning_content', 'thinking']) {
    const v = m[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') fail(`${where}.${key} must be a string`);
    if (v !== '') return v;
  }
  return '';
}

interface ParsedCall {
  id?: string;
  name: string;
  arguments: string;
}

function parseToolCalls(m: Record<string, unknown>, where: string): ParsedCall[] {
  const calls = m.tool_calls;
  if (calls === undefined || calls === null) return [];
  if (!Array.isArray(calls)) fail(`${where}.tool_calls must be an array`);
  return calls.map((c: unknown, j) => {
    const w = `${where}.tool_calls[${j}]`;
    if (!isObject(c)) fail(`${w} must be an object`);
    if (c.type !== undefined && c.type !== 'function') fail(`${w}.type must be "function" (got ${JSON.stringify(c.type)})`);
    const fn = c.function;
    if (!isObject(fn)) fail(`${w}.function must be an object with name and arguments`);
    if (typeof fn.name !== 'string' || fn.name === '') fail(`${w}.function.name must be a non-empty string`);
    let args: string;
    if (typeof fn.arguments === 'string') args = fn.arguments;
    else if (isObject(fn.arguments)) args = JSON.stringify(fn.arguments); // some clients send the object itself
    else fail(`${w}.function.arguments must be a JSON string`);
    if (c.id !== undefined && typeof c.id !== 'string') fail(`${w}.id must be a string`);
    return { id: c.id as string | undefined, name: fn.name, arguments: args };
  });
}

/** Built-in tools are addressed by their own names; function tools live in the `functions` namespace. */
function isBuiltinName(name: string): boolean {
  return name === 'python' || name.startsWith('browser.');
}

function recipientOf(name: string): string {
  return isBuiltinName(name) || name.startsWith('functions.') ? name : `functions.${name}`;
}

function toolCallMessage(call: ParsedCall): HarmonyMessage {
  const recipient = recipientOf(call.name);
  if (isBuiltinName(call.name)) return { author: 'assistant', recipient, channel: 'analysis', contentType: 'code', content: call.arguments };
  return { author: 'assistant', recipient, channel: 'commentary', contentType: '<|constrain|>json', content: call.arguments };
}

interface AssistantParts {
  reasoning: string;
  content: string;
  calls: ParsedCall[];
}

function isFinalAnswer(a: AssistantParts): boolean {
  return a.calls.length === 0 && (a.content !== '' || a.reasoning === '');
}

/**
 * Validates a request and converts it to harmony messages: system, developer (when there are instructions or
 * function tools), then the conversation. Throws RequestError.
 */
export function toHarmonyMessages(req: ChatRequest, opts: { addGenerationPrompt?: boolean } = {}): HarmonyMessage[] {
  const addGenerationPrompt = opts.addGenerationPrompt ?? true;
  if (!isObject(req)) fail('the request must be an object with a messages array');
  const r = req as unknown as Record<string, unknown>;
  if (!Array.isArray(r.messages)) fail('messages must be an array');
  validateOptions(r);
  const functionTools = validateTools(r.tools);
  const messages = r.messages as unknown[];

  messages.forEach((m, i) => {
    if (!isObject(m)) fail(`messages[${i}] must be an object`);
    if (typeof m.role !== 'string' || !CHAT_ROLES.has(m.role)) {
      fail(`messages[${i}].role: unknown role ${JSON.stringify(m.role)} (system, developer, user, assistant, tool)`);
    }
  });
  const msgs = messages as (ChatMessage & Record<string, unknown>)[];

  // Leading system/developer messages become the developer message's instructions.
  let lead = 0;
  const instructions: string[] = [];
  while (lead < msgs.length && (msgs[lead].role === 'system' || msgs[lead].role === 'developer')) {
    const text = contentText(msgs[lead].content, `messages[${lead}]`);
    if (text !== '') instructions.push(text);
    lead++;
  }

  // Turns, for the chain-of-thought rule: a turn starts at each user message.
  const assistantParts = new Map<number, AssistantParts>();
  const turnOf: number[] = [];
  const turnHasFinal: boolean[] = [false];
  let turn = 0;
  for (let i = lead; i < msgs.length; i++) {
    const m = msgs[i];
    if (m.role === 'user') {
      turn++;
      turnHasFinal[turn] = false;
    }
    turnOf[i] = turn;
    if (m.role === 'assistant') {
      const where = `messages[${i}]`;
      const parts = { reasoning: reasoningText(m, where), content: contentText(m.content, where), calls: parseToolCalls(m, where) };
      assistantParts.set(i, parts);
      if (isFinalAnswer(parts)) turnHasFinal[turn] = true;
    }
  }
  const lastTurn = turn;

  const out: HarmonyMessage[] = [
    {
      author: 'system',
      content: renderSystemContent({
        modelIdentity: r.model_identity as string | null | undefined,
        knowledgeCutoff: r.knowledge_cutoff as string | null | undefined,
        currentDate: (r.current_date as string | null | undefined) ?? undefined,
        reasoningEffort: ((r.reasoning_effort as ReasoningEffort | null | undefined) ?? undefined) as ReasoningEffort | undefined,
        builtinTools: (r.builtin_tools as BuiltinTool[] | undefined) ?? [],
        hasFunctionTools: functionTools.length > 0,
      }),
    },
  ];
  if (instructions.length || functionTools.length) {
    out.push({ author: 'developer', content: renderDeveloperContent(instructions.length ? instructions.join('\n\n') : undefined, functionTools) });
  }

  const callNames = new Map<string, string>();
  let lastCallName: string | undefined;
  for (let i = lead; i < msgs.length; i++) {
    const m = msgs[i];
    const where = `messages[${i}]`;
    switch (m.role) {
      case 'system':
      case 'developer': {
        // A system/developer message in mid-conversation: its own developer message at that point.
        const text = contentText(m.content, where);
        out.push({ author: 'developer', content: renderDeveloperContent(text) });
        break;
      }
      case 'user':
        out.push({ author: 'user', content: contentText(m.content, where) });
        break;
      case 'assistant': {
        const a = assistantParts.get(i)!;
        const t = turnOf[i];
        const keepReasoning = !turnHasFinal[t] || (t === lastTurn && !addGenerationPrompt);
        if (a.reasoning !== '' && keepReasoning) out.push({ author: 'assistant', channel: 'analysis', content: a.reasoning });
        if (a.calls.length) {
          // Text beside tool calls is a preamble: shown to the user, on the commentary channel.
          if (a.content !== '') out.push({ author: 'assistant', channel: 'commentary', content: a.content });
          for (const c of a.calls) {
            out.push(toolCallMessage(c));
            if (c.id !== undefined) callNames.set(c.id, c.name);
            lastCallName = c.name;
          }
        } else if (isFinalAnswer(a)) {
          out.push({ author: 'assistant', channel: 'final', content: a.content });
        }
        break;
      }
      case 'tool': {
        let name: string | undefined;
        if (typeof m.name === 'string' && m.name !== '') name = m.name;
        else if (typeof m.tool_call_id === 'string' && callNames.has(m.tool_call_id)) name = callNames.get(m.tool_call_id);
        // An unknown or missing id answers the latest call, as the Hugging Face template assumes.
        else name = lastCallName;
        if (name === undefined) fail(`${where}: tool message has no name and no earlier assistant tool call to answer`);
        out.push({ author: recipientOf(name), recipient: 'assistant', channel: 'commentary', content: contentText(m.content, where) });
        break;
      }
    }
  }
  return out;
}
