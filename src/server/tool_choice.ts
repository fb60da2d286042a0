// tool_choice, enforced by what the harmony header of the answer may say. gpt-oss addresses a function in the
// assistant header (`<|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>`), so:
//   auto       tools rendered; the model chooses.
//   none       tools not rendered (the model is told of no function); a call it still writes is not returned
//              as a tool call (dropped, and the output flagged malformed).
//   required   the header is prefilled up to `<|channel|>commentary to=functions.`: the next tokens can only
//              name a function (one declared tool: the named case).
//   {name}     the header is prefilled whole, through `<|message|>`: the model writes only the arguments.
// A prefilled header costs the answer its chain of thought (the header comes first), as with any forced call.
import type { Tool } from '../harmony/types.js';
import { badRequest } from './errors.js';
import { isObject } from './validate.js';

export interface ToolPlan {
  /** The tools to render (undefined: none). */
  tools: Tool[] | undefined;
  /** Harmony text the answer starts with (CallOptions.assistantPrefix). */
  assistantPrefix?: string;
  /** tool_choice none: tool calls are not answers. */
  forbidCalls: boolean;
}

export const forcedCallPrefix = (name: string) => `<|channel|>commentary to=functions.${name} <|constrain|>json<|message|>`;
const REQUIRED_PREFIX = '<|channel|>commentary to=functions.';

/** `choice` as the API sends it; `namedFunction` reads a named choice's function name (chat and Responses differ). */
export function planToolChoice(choice: unknown, tools: Tool[] | undefined, namedFunction: (c: Record<string, unknown>) => unknown): ToolPlan {
  const declared = tools ?? [];
  const names = declared.map((t) => t?.function?.name);
  if (choice === undefined || choice === null || choice === 'auto') return { tools, forbidCalls: false };
  if (choice === 'none') return { tools: undefined, forbidCalls: true };
  if (choice === 'required') {
    if (declared.length === 0) throw badRequest('tool_choice', '"required" needs at least one tool in tools', 'invalid_value');
    const prefix = declared.length === 1 ? forcedCallPrefix(String(names[0])) : REQUIRED_PREFIX;
    return { tools, assistantPrefix: prefix, forbidCalls: false };
  }
  if (isObject(choice) && choice.type === 'function') {
    const name = namedFunction(choice);
    if (typeof name !== 'string') throw badRequest('tool_choice', 'a named choice needs the function name', 'invalid_value');
    if (!names.includes(name)) throw badRequest('tool_choice', `function ${JSON.stringify(name)} is not in tools`, 'invalid_value');
    return { tools, assistantPrefix: forcedCallPrefix(name), forbidCalls: false };
  }
  throw badRequest('tool_choice', 'must be "auto", "none", "required" or a named function', 'invalid_value');
}
