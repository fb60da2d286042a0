// Our renderer against the model's own chat_template.jinja, rendered by @huggingface/jinja. Runs only when a model
// directory with chat_template.jinja is given (HARMONIUM_MODEL_DIR) and the Jinja package can be imported
// (it is not a dependency: HARMONIUM_JINJA may name its entry file). Where the two differ, we follow the harmony
// library; each known difference is asserted exactly, so a new one shows up as a failure (see docs/harmony.md).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { renderConversation, type ChatMessage, type ChatRequest, type Tool } from '../src/harmony/index.js';

const modelDir = process.env.HARMONIUM_MODEL_DIR;
const templatePath = modelDir ? join(modelDir, 'chat_template.jinja') : undefined;
const haveTemplate = templatePath !== undefined && existsSync(templatePath);

type TemplateClass = new (source: string) => { render(context: Record<string, unknown>): string };
let Template: TemplateClass | undefined;
if (haveTemplate) {
  try {
    ({ Template } = (await import(process.env.HARMONIUM_JINJA ?? '@huggingface/jinja')) as { Template: TemplateClass });
  } catch {
    Template = undefined;
  }
}
if (!haveTemplate) console.warn('harmony_jinja: no HARMONIUM_MODEL_DIR with chat_template.jinja; skipped');
else if (!Template) console.warn('harmony_jinja: @huggingface/jinja is not installed (or HARMONIUM_JINJA is wrong); skipped');

/** The template writes today's date (strftime_now); our renderer writes current_date when given. */
function today(): string {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

const WEATHER: Tool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Gets the weather.',
    parameters: {
      type: 'object',
      properties: { location: { type: 'string', description: 'City and country' }, days: { type: 'integer' }, unit: { type: 'string', enum: ['c', 'f'] } },
      required: ['location'],
    },
  },
};

const CASES: { name: string; req: Omit<ChatRequest, 'current_date'>; addGenerationPrompt?: boolean }[] = [
  { name: 'one user message', req: { messages: [{ role: 'user', content: 'What is 2 + 2?' }] } },
  {
    name: 'system instructions and high effort',
    req: { reasoning_effort: 'high', messages: [{ role: 'system', content: 'Answer like a robot.' }, { role: 'user', content: 'Hi' }] },
  },
  { name: 'developer instructions, low effort', req: { reasoning_effort: 'low', messages: [{ role: 'developer', content: 'Be brief.' }, { role: 'user', content: 'Hi' }] } },
  {
    name: 'multi-turn, earlier reasoning dropped',
    req: {
      messages: [
        { role: 'user', content: 'What is 2 + 2?' },
        { role: 'assistant', thinking: 'Simple.', content: '4' },
        { role: 'user', content: 'And 3 + 5?' },
      ],
    },
  },
  {
    name: 'last assistant turn kept without a generation prompt, apart from its end token',
    req: { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', thinking: 'Greet.', content: 'Hello!' }] },
    addGenerationPrompt: false,
  },
  { name: 'built-in browser and python', req: { builtin_tools: ['browser', 'python'], messages: [{ role: 'user', content: 'Search.' }] } },
  { name: 'a function tool', req: { tools: [WEATHER], messages: [{ role: 'system', content: 'Use tools.' }, { role: 'user', content: 'Weather in Paris?' }] } },
  { name: 'a tool without parameters', req: { tools: [{ type: 'function', function: { name: 'now', description: 'Current time.' } }], messages: [{ role: 'user', content: 'Time?' }] } },
  {
    name: 'a tool call in progress',
    req: {
      tools: [WEATHER],
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', thinking: 'Call get_weather.', tool_calls: [{ id: 'c1', type: 'function', function: { name: 'get_weather', arguments: '{"location":"Paris"}' } }] },
        { role: 'tool', tool_call_id: 'c1', content: '{"temp":21}' },
      ],
    },
  },
  {
    name: 'a finished tool-calling turn',
    req: {
      tools: [WEATHER],
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', thinking: 'Call get_weather.', tool_calls: [{ id: 'c1', type: 'function', function: { name: 'get_weather', arguments: '{"location":"Paris"}' } }] },
        { role: 'tool', tool_call_id: 'c1', content: '{"temp":21}' },
        { role: 'assistant', thinking: 'Answer.', content: '21 degrees.' },
        { role: 'user', content: 'Thanks' },
      ],
    },
  },
];

/** The template's rendering turned into ours by undoing each documented difference. */
function undoKnownDifferences(jinja: string, req: ChatRequest, addGenerationPrompt: boolean): string {
  let out = jinja;
  // Instructions without tools: the template leaves a blank line before <|end|>, the library does not.
  const first = req.messages[0];
  if (!req.tools?.length && (first?.role === 'system' || first?.role === 'developer') && typeof first.content === 'string') {
    out = out.replace(`# Instructions\n\n${first.content}\n\n<|end|>`, `# Instructions\n\n${first.content}<|end|>`);
  }
  for (const m of req.messages as ChatMessage[]) {
    for (const c of m.tool_calls ?? []) {
      // Content type ` json` vs ` <|constrain|>json`, and arguments passed through tojson (a quoted string).
      out = out.replace(
        `to=functions.${c.function.name}<|channel|>commentary json<|message|>${JSON.stringify(c.function.arguments)}<|call|>`,
        `to=functions.${c.function.name}<|channel|>commentary <|constrain|>json<|message|>${c.function.arguments}<|call|>`,
      );
    }
    // Tool results passed through tojson.
    if (m.role === 'tool' && typeof m.content === 'string') out = out.replace(`<|message|>${JSON.stringify(m.content)}<|end|>`, `<|message|>${m.content}<|end|>`);
  }
  // A tool without properties: `() => any` vs the library's `(_: {\n}) => any` only when parameters exist; none here.
  // The last assistant message without a generation prompt ends in <|return|> there, <|end|> in the library.
  if (!addGenerationPrompt && out.endsWith('<|return|>')) out = `${out.slice(0, -'<|return|>'.length)}<|end|>`;
  return out;
}

describe.skipIf(!haveTemplate || !Template)('renderer vs the model chat_template.jinja', () => {
  const template = haveTemplate && Template ? new Template(readFileSync(templatePath!, 'utf8')) : undefined;

  it.each(CASES)('$name', ({ req, addGenerationPrompt = true }) => {
    const full: ChatRequest = { ...req, current_date: today() };
    const ours = renderConversation(full, { addGenerationPrompt });
    const jinja = template!.render({ ...req, add_generation_prompt: addGenerationPrompt });
    expect(undoKnownDifferences(jinja, full, addGenerationPrompt)).toBe(ours);
  });

  it('writes a trailing comma after a default comment, where the library does not', () => {
    const tool: Tool = {
      type: 'function',
      function: { name: 'f', description: 'd', parameters: { type: 'object', properties: { unit: { type: 'string', enum: ['c', 'f'], default: 'c' } } } },
    };
    const req: ChatRequest = { tools: [tool], messages: [{ role: 'user', content: 'x' }] };
    const jinja = template!.render({ ...req, add_generation_prompt: true });
    const ours = renderConversation({ ...req, current_date: today() });
    expect(jinja).toContain('unit?: "c" | "f", // default: c,\n');
    expect(ours).toContain('unit?: "c" | "f", // default: c\n');
    expect(jinja.replace('// default: c,\n', '// default: c\n')).toBe(ours);
  });
});
