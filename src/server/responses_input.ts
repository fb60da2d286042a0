// A Responses API request to a chat request: `instructions` and `input` (a string, or items: messages with text
// parts, reasoning items with reasoning_text parts, function_call and function_call_output items) to messages;
// flat function tools to chat tools; reasoning.effort, max_output_tokens, text.format checked.
import type { ChatMessage, Tool, ToolCall } from '../harmony/types.js';
import { badRequest } from './errors.js';
import { checkKeys, isObject, optArray, optObject, optString, type Body } from './validate.js';

const TEXT_PARTS = new Set(['input_text', 'output_text', 'text']);

function partsText(content: unknown, where: string): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) throw badRequest(`${where}.content`, 'must be a string or an array of text parts', 'invalid_type');
  return content
    .map((p, j) => {
      if (!isObject(p) || !TEXT_PARTS.has(p.type as string) || typeof p.text !== 'string')
        throw badRequest(`${where}.content[${j}]`, 'only text parts (input_text, output_text) are supported', 'unsupported_value');
      return p.text;
    })
    .join('');
}

function reasoningText(item: Body, where: string): string {
  const parts = optArray(item, 'content', `${where}.`) ?? [];
  return parts
    .map((p, j) => {
      if (!isObject(p) || p.type !== 'reasoning_text' || typeof p.text !== 'string')
        throw badRequest(`${where}.content[${j}]`, 'reasoning content must be reasoning_text parts', 'invalid_value');
      return p.text;
    })
    .join('');
}

export function inputMessages(instructions: string | undefined, input: unknown): ChatMessage[] {
  const messages: ChatMessage[] = [];
  if (instructions !== undefined) messages.push({ role: 'system', content: instructions });
  if (typeof input === 'string') {
    messages.push({ role: 'user', content: input });
    return messages;
  }
  if (!Array.isArray(input)) throw badRequest('input', 'must be a string or an array of items', 'invalid_type');
  let reasoning: string | undefined;
  // Reasoning belongs to the assistant output after it: the next message or function call carries it.
  const assistant = (m: ChatMessage) => {
    if (reasoning !== undefined) m.reasoning = reasoning;
    reasoning = undefined;
    messages.push(m);
  };
  input.forEach((item, i) => {
    const where = `input[${i}]`;
    if (!isObject(item)) throw badRequest(where, 'must be an object', 'invalid_type');
    const type = item.type ?? 'message';
    if (type === 'message') {
      const role = item.role;
      if (role !== 'user' && role !== 'system' && role !== 'developer' && role !== 'assistant')
        throw badRequest(`${where}.role`, `unknown role ${JSON.stringify(role)}`, 'invalid_value');
      const content = partsText(item.content, where);
      if (role === 'assistant') assistant({ role, content });
      else messages.push({ role, content });
    } else if (type === 'reasoning') {
      reasoning = (reasoning ?? '') + reasoningText(item, where);
    } else if (type === 'function_call') {
      const name = optString(item, 'name', `${where}.`);
      const args = optString(item, 'arguments', `${where}.`);
      const callId = optString(item, 'call_id', `${where}.`);
      if (!name || args === undefined || !callId) throw badRequest(where, 'a function_call needs call_id, name and arguments', 'invalid_value');
      const call: ToolCall = { id: callId, type: 'function', function: { name, arguments: args } };
      assistant({ role: 'assistant', content: null, tool_calls: [call] });
    } else if (type === 'function_call_output') {
      const callId = optString(item, 'call_id', `${where}.`);
      if (!callId) throw badRequest(`${where}.call_id`, 'is required', 'invalid_value');
      const output = typeof item.output === 'string' ? item.output : partsText(item.output, where);
      messages.push({ role: 'tool', tool_call_id: callId, content: output });
    } else throw badRequest(`${where}.type`, `item type ${JSON.stringify(type)} is not supported`, 'unsupported_value');
  });
  return messages;
}

const TOOL_KEYS = new Set(['type', 'name', 'description', 'parameters', 'strict']);

export function inputTools(tools: unknown[] | undefined): Tool[] | undefined {
  if (!tools) return undefined;
  return tools.map((t, i) => {
    const where = `tools[${i}]`;
    if (!isObject(t)) throw badRequest(where, 'must be an object', 'invalid_type');
    if (t.type !== 'function') throw badRequest(`${where}.type`, `only function tools are supported, got ${JSON.stringify(t.type)}`, 'unsupported_value');
    checkKeys(t, TOOL_KEYS, `${where}.`);
    const fn: Tool['function'] = { name: t.name as string };
    if (t.description !== undefined && t.description !== null) fn.description = t.description as string;
    if (t.parameters !== undefined && t.parameters !== null) fn.parameters = t.parameters as Body;
    return { type: 'function', function: fn };
  });
}

/** reasoning: {effort}; a summary cannot be produced (gpt-oss writes none). */
export function reasoningEffort(body: Body): string | undefined {
  const r = optObject(body, 'reasoning');
  if (!r) return undefined;
  checkKeys(r, new Set(['effort', 'summary']), 'reasoning.');
  if (r.summary !== undefined && r.summary !== null) throw badRequest('reasoning.summary', 'reasoning summaries are not supported', 'unsupported_value');
  return optString(r, 'effort', 'reasoning.');
}
