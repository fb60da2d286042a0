// The renderer against OpenAI's harmony library: its expected outputs (../shared/spec/harmony-test-data, beside
// the checkout) rendered byte-exact from our own inputs, written from the conversations its tests describe.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  RequestError,
  renderConversation,
  renderConversationTokens,
  renderMessages,
  renderMessagesTokens,
  renderSystemContent,
  schemaToTypeScript,
  type ChatRequest,
  type HarmonyMessage,
  type Tool,
} from '../src/harmony/index.js';
import { HarmonyTokenizer } from '../src/tokenizer/tokenizer.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const specDir = resolve(repoRoot, '..', 'shared', 'spec');
const dataDir = resolve(specDir, 'harmony-test-data');
const casesDir = resolve(specDir, 'harmony-cases');
const haveSpec = existsSync(dataDir);
if (!haveSpec) console.warn(`harmony_render: ${dataDir} is missing; the byte-exact comparisons are skipped`);

const tok = new HarmonyTokenizer();

/** An expected file as the authority's tests load it (CRLF to LF, trailing whitespace trimmed). */
function expected(dir: string, name: string): string {
  return readFileSync(resolve(dir, name), 'utf8').replace(/\r\n/g, '\n').trimEnd();
}

const ROBOT = "Answer the user's questions like a robot.";
const CAPITAL = 'What is the capital of the largest country in the world?';

const WEATHER_TOOLS: Tool[] = [
  { type: 'function', function: { name: 'get_location', description: 'Gets the location of the user.' } },
  {
    type: 'function',
    function: {
      name: 'get_current_weather',
      description: 'Gets the current weather in the provided location.',
      parameters: {
        type: 'object',
        properties: {
          location: { type: 'string', description: 'The city and state, e.g. San Francisco, CA' },
          format: { type: 'string', enum: ['celsius', 'fahrenheit'], default: 'celsius' },
        },
        required: ['location'],
      },
    },
  },
  {
    type: 'function',
    function: {
      name: 'get_multiple_weathers',
      description: 'Gets the current weather in the provided list of locations.',
      parameters: {
        type: 'object',
        properties: {
          locations: {
            type: 'array',
            items: { type: 'string' },
            description: 'List of city and state, e.g. ["San Francisco, CA", "New York, NY"]',
          },
          format: { type: 'string', enum: ['celsius', 'fahrenheit'], default: 'celsius' },
        },
        required: ['locations'],
      },
    },
  },
  {
    type: 'function',
    function: {
      name: 'kitchensink',
      description: 'A function with various complex schemas.',
      parameters: {
        description: 'params object',
        type: 'object',
        properties: {
          string: { type: 'string', title: 'STRING', description: 'A string', examples: ['hello', 'world'] },
          string_nullable: { type: 'string', nullable: true, description: 'A nullable string', default: 'the default' },
          string_enum: { type: 'string', enum: ['a', 'b', 'c'] },
          oneof_string_or_number: {
            oneOf: [
              { type: 'string', default: 'default_string_in_oneof' },
              { type: 'number', description: 'numbers can happen too' },
            ],
            description: 'a oneof',
            default: 20,
          },
        },
      },
    },
  },
];

const LOOKUP_WEATHER: Tool = {
  type: 'function',
  function: {
    name: 'lookup_weather',
    description:
      "Use this tool to lookup the weather in a given location. Call it with the parameter 'location', can be any textual description of a location.",
    parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
  },
};

/** Expected files rendered from chat requests (the system message built from the request's harmony options). */
const REQUEST_CASES: { file: string; dir?: string; req: ChatRequest; tokensToo?: boolean }[] = [
  { file: 'test_simple_convo.txt', req: { messages: [{ role: 'user', content: 'What is 2 + 2?' }] }, tokensToo: true },
  ...(['low', 'medium', 'high'] as const).flatMap((effort) => [
    {
      file: `test_simple_convo_${effort}_effort.txt`,
      req: { reasoning_effort: effort, messages: [{ role: 'system' as const, content: ROBOT }, { role: 'user' as const, content: CAPITAL }] },
      tokensToo: true,
    },
    {
      file: `test_simple_convo_${effort}_effort_no_instruction.txt`,
      req: { reasoning_effort: effort, messages: [{ role: 'user' as const, content: CAPITAL }] },
      tokensToo: true,
    },
  ]),
  {
    file: 'test_render_functions_with_parameters.txt',
    req: {
      reasoning_effort: 'high',
      current_date: '2025-06-28',
      tools: WEATHER_TOOLS,
      messages: [
        { role: 'system', content: 'Always respond in riddles' },
        { role: 'user', content: 'What is the weather like in SF?' },
      ],
    },
    tokensToo: true,
  },
  { file: 'test_no_tools.txt', req: { current_date: '2025-06-28', messages: [] }, tokensToo: true },
  { file: 'test_browser_tool_only.txt', req: { current_date: '2025-06-28', builtin_tools: ['browser'], messages: [] }, tokensToo: true },
  { file: 'test_browser_and_python_tool.txt', req: { current_date: '2025-06-28', builtin_tools: ['python', 'browser'], messages: [] }, tokensToo: true },
  {
    file: 'test_browser_and_function_tool.txt',
    req: { current_date: '2025-06-28', builtin_tools: ['browser'], tools: [LOOKUP_WEATHER], messages: [] },
    tokensToo: true,
  },
  {
    file: 'H4.expected',
    dir: casesDir,
    req: {
      current_date: '2026-01-15',
      reasoning_effort: 'low',
      messages: [
        { role: 'user', content: 'What is 2 + 2?' },
        { role: 'assistant', reasoning: 'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.', content: '2 + 2 equals 4.' },
        { role: 'user', content: 'What about 9 / 2?' },
      ],
    },
    tokensToo: true,
  },
];

const system = (opts: Parameters<typeof renderSystemContent>[0]): HarmonyMessage => ({ author: 'system', content: renderSystemContent(opts) });
const user = (content: string): HarmonyMessage => ({ author: 'user', content });
const analysis = (content: string): HarmonyMessage => ({ author: 'assistant', channel: 'analysis', content });
const final = (content: string): HarmonyMessage => ({ author: 'assistant', channel: 'final', content });

/** Expected files rendered from harmony messages (the authority's own message model: no system message, custom channels...). */
const MESSAGE_CASES: { file: string; messages: HarmonyMessage[]; opts?: { addGenerationPrompt?: boolean; autoDropAnalysis?: boolean }; tokensToo?: boolean }[] = [
  {
    file: 'test_reasoning_system_message.txt',
    messages: [system({ reasoningEffort: 'medium', validChannels: ['analysis', 'final'] }), user('What is 2 + 2?')],
    tokensToo: true,
  },
  {
    file: 'test_reasoning_system_message_no_instruction.txt',
    messages: [system({ reasoningEffort: 'high', validChannels: ['analysis', 'final'] }), user('What is the best place to eat candy in the world?')],
    tokensToo: true,
  },
  {
    file: 'test_reasoning_system_message_with_dates.txt',
    messages: [
      system({ reasoningEffort: 'medium', currentDate: '2021-01-01', knowledgeCutoff: '2021-01', validChannels: ['analysis', 'final'] }),
      user('What is 42 * pi?'),
    ],
    tokensToo: true,
  },
  {
    file: 'test_dropping_cot_by_default.txt',
    messages: [user('What is 2 + 2?'), analysis('User asks: “What is 2 + 2?” Simple arithmetic. Provide answer.'), final('2 + 2 equals 4.'), user('What about 9 / 2?')],
    opts: { autoDropAnalysis: true },
  },
  {
    file: 'test_does_not_drop_if_ongoing_analysis.txt',
    messages: [
      user('What is the weather in SF?'),
      analysis('User asks: “What is the weather in SF?” We need to use lookup_weather tool.'),
      { author: 'assistant', channel: 'commentary', recipient: 'functions.lookup_weather', contentType: '<|constrain|>json', content: '{"location": "San Francisco"}' },
      { author: 'functions.lookup_weather', content: '{"temperature": 20, "description": "sunny"}' },
    ],
    opts: { autoDropAnalysis: true },
    tokensToo: true,
  },
  {
    file: 'test_preserve_cot.txt',
    messages: [user('What is 2 + 2?'), analysis('User asks a simple question: "What is 2 + 2?" The answer: 4.'), final('2 + 2 equals 4.'), user('What about 9 / 2?')],
    opts: { autoDropAnalysis: false },
  },
  {
    file: 'test_keep_analysis_between_finals.txt',
    messages: [user('What is 2 + 2?'), analysis('thinking 2+2'), final('4'), user('What is 3 + 5?'), analysis('thinking 3+5'), final('8')],
    opts: { addGenerationPrompt: false, autoDropAnalysis: true },
  },
];

describe.skipIf(!haveSpec)('byte-exact against the harmony library expected outputs', () => {
  const results: string[] = [];

  it.each(REQUEST_CASES)('$file from a chat request', ({ file, dir, req, tokensToo }) => {
    const want = expected(dir ?? dataDir, file);
    expect(renderConversation(req)).toBe(want);
    if (tokensToo) expect(renderConversationTokens(req, tok)).toEqual(tok.encode(want, { allowSpecial: true }));
    results.push(file);
  });

  it.each(MESSAGE_CASES)('$file from harmony messages', ({ file, messages, opts, tokensToo }) => {
    const want = expected(dataDir, file);
    expect(renderMessages(messages, opts)).toBe(want);
    if (tokensToo) expect(renderMessagesTokens(messages, tok, opts)).toEqual(tok.encode(want, { allowSpecial: true }));
    results.push(file);
  });

  it('test_tool_response_parsing.txt is one tool message, cut before its <|end|>', () => {
    const want = expected(dataDir, 'test_tool_response_parsing.txt');
    const msg: HarmonyMessage = { author: 'browser.search', recipient: 'assistant', channel: 'commentary', content: '{"result": "https://openai.com/"}' };
    expect(renderMessages([msg], { addGenerationPrompt: false })).toBe(`${want}<|end|>`);
    results.push('test_tool_response_parsing.txt');
  });

  it('covers every rendering in harmony-test-data', () => {
    // The other four files are model outputs (token ids or text) for the parser tests.
    const parseOnly = ['test_simple_reasoning_response.txt', 'test_simple_tool_call.txt', 'test_streamable_parser.txt'];
    const files = readdirTxt(dataDir).filter((f) => !parseOnly.includes(f));
    const missing = files.filter((f) => !results.includes(f));
    console.log(`harmony-test-data renderings reproduced byte-exact: ${files.length - missing.length}/${files.length}`);
    expect(missing).toEqual([]);
  });

  it('the chat-request path gives the system message plus the authority text for the CoT-dropping case', () => {
    const req: ChatRequest = {
      messages: [
        { role: 'user', content: 'What is 2 + 2?' },
        { role: 'assistant', reasoning_content: 'User asks: “What is 2 + 2?” Simple arithmetic. Provide answer.', content: '2 + 2 equals 4.' },
        { role: 'user', content: 'What about 9 / 2?' },
      ],
    };
    const sys = renderMessages([system({})], { addGenerationPrompt: false });
    expect(renderConversation(req)).toBe(sys + expected(dataDir, 'test_dropping_cot_by_default.txt'));
  });

  it('the per-turn CoT rule agrees with the authority on keep_analysis_between_finals', () => {
    const req: ChatRequest = {
      messages: [
        { role: 'user', content: 'What is 2 + 2?' },
        { role: 'assistant', reasoning: 'thinking 2+2', content: '4' },
        { role: 'user', content: 'What is 3 + 5?' },
        { role: 'assistant', reasoning: 'thinking 3+5', content: '8' },
      ],
    };
    const sys = renderMessages([system({})], { addGenerationPrompt: false });
    expect(renderConversation(req, { addGenerationPrompt: false })).toBe(sys + expected(dataDir, 'test_keep_analysis_between_finals.txt'));
  });
});

function readdirTxt(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.txt'));
}

const SYS = '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>';
const SYS_FN = SYS.replace('<|end|>', "\nCalls to these tools must go to the commentary channel: 'functions'.<|end|>");
const GET_WEATHER: Tool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Gets the weather.',
    parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
  },
};
const DEV_FN =
  '<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n// Gets the weather.\ntype get_weather = (_: {\nlocation: string,\n}) => any;\n\n} // namespace functions<|end|>';
const CALL = '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"location":"San Francisco"}<|call|>';
const RESULT = '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sunny": true, "temperature": 20}<|end|>';

describe('chat requests: chain of thought, tool calls, tool results', () => {
  const toolTurn = (reasoningKey: 'reasoning' | 'reasoning_content' | 'thinking'): ChatRequest['messages'] => [
    { role: 'user', content: 'What is the weather like in SF?' },
    {
      role: 'assistant',
      [reasoningKey]: 'Need to use function get_weather.',
      content: null,
      tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"location":"San Francisco"}' } }],
    },
    { role: 'tool', tool_call_id: 'call_1', content: '{"sunny": true, "temperature": 20}' },
  ];

  it.each(['reasoning', 'reasoning_content', 'thinking'] as const)('keeps the reasoning (%s) while the turn is still calling tools', (key) => {
    const text = renderConversation({ tools: [GET_WEATHER], messages: toolTurn(key) });
    expect(text).toBe(
      SYS_FN +
        DEV_FN +
        '<|start|>user<|message|>What is the weather like in SF?<|end|>' +
        '<|start|>assistant<|channel|>analysis<|message|>Need to use function get_weather.<|end|>' +
        CALL +
        RESULT +
        '<|start|>assistant',
    );
  });

  it('drops it once the turn has a final answer, and drops every earlier turn', () => {
    const messages: ChatRequest['messages'] = [
      ...toolTurn('reasoning'),
      { role: 'assistant', reasoning: 'It is sunny.', content: 'Sunny, 20 degrees.' },
      { role: 'user', content: 'And tomorrow?' },
      { role: 'assistant', reasoning: 'Unknown.', content: 'I cannot tell.' },
      { role: 'user', content: 'OK' },
    ];
    const text = renderConversation({ tools: [GET_WEATHER], messages });
    expect(text).not.toContain('<|channel|>analysis');
    expect(text).toBe(
      SYS_FN +
        DEV_FN +
        '<|start|>user<|message|>What is the weather like in SF?<|end|>' +
        CALL +
        RESULT +
        '<|start|>assistant<|channel|>final<|message|>Sunny, 20 degrees.<|end|>' +
        '<|start|>user<|message|>And tomorrow?<|end|>' +
        '<|start|>assistant<|channel|>final<|message|>I cannot tell.<|end|>' +
        '<|start|>user<|message|>OK<|end|><|start|>assistant',
    );
  });

  it('keeps the last turn reasoning when rendered without a generation prompt', () => {
    const messages: ChatRequest['messages'] = [
      { role: 'user', content: 'hi' },
      { role: 'assistant', thinking: 'Greet back.', content: 'Hello!' },
    ];
    expect(renderConversation({ messages }, { addGenerationPrompt: false })).toBe(
      SYS + '<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>analysis<|message|>Greet back.<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|end|>',
    );
  });

  it('renders text beside tool calls as a commentary preamble, several calls, and answers found by id', () => {
    const text = renderConversation({
      tools: [GET_WEATHER],
      messages: [
        { role: 'user', content: 'SF and NYC?' },
        {
          role: 'assistant',
          content: 'Checking both.',
          tool_calls: [
            { id: 'a', type: 'function', function: { name: 'get_weather', arguments: '{"location":"SF"}' } },
            { id: 'b', type: 'function', function: { name: 'get_weather', arguments: '{"location":"NYC"}' } },
          ],
        },
        { role: 'tool', tool_call_id: 'b', content: 'cold' },
        { role: 'tool', tool_call_id: 'a', content: [{ type: 'text', text: 'warm' }] },
      ],
    });
    expect(text).toContain(
      '<|start|>assistant<|channel|>commentary<|message|>Checking both.<|end|>' +
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"location":"SF"}<|call|>' +
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"location":"NYC"}<|call|>' +
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>cold<|end|>' +
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>warm<|end|><|start|>assistant',
    );
  });

  it('puts leading system and developer messages into # Instructions, later ones in their own developer message', () => {
    const text = renderConversation({
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'developer', content: 'Use French.' },
        { role: 'user', content: 'hi' },
        { role: 'system', content: 'Now use German.' },
      ],
    });
    expect(text).toBe(
      SYS +
        '<|start|>developer<|message|># Instructions\n\nBe brief.\n\nUse French.<|end|>' +
        '<|start|>user<|message|>hi<|end|>' +
        '<|start|>developer<|message|># Instructions\n\nNow use German.<|end|><|start|>assistant',
    );
  });

  it('builds the system message from the harmony options', () => {
    const text = renderConversation({ model_identity: 'You are a test model.', knowledge_cutoff: null, current_date: '2026-11-25', reasoning_effort: 'low', messages: [] });
    expect(text).toBe(
      '<|start|>system<|message|>You are a test model.\nCurrent date: 2026-11-25\n\nReasoning: low\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|><|start|>assistant',
    );
  });

  it('tokenizes pieces the way the authority does', () => {
    const req: ChatRequest = { tools: [GET_WEATHER], messages: toolTurn('reasoning') };
    const ids = renderConversationTokens(req, tok);
    expect(tok.decode(ids)).toBe(renderConversation(req));
    expect(ids.slice(-2)).toEqual([200006, tok.encode('assistant')[0]]);
  });
});

describe('JSON Schema to TypeScript', () => {
  it('writes nested objects, arrays of objects, type unions, nullable and defaults', () => {
    const ts = schemaToTypeScript({
      type: 'object',
      properties: {
        user: {
          type: 'object',
          description: 'Who asks',
          properties: { name: { type: 'string', description: 'Full name' }, age: { type: 'integer', default: 30 } },
          required: ['name'],
        },
        tags: { type: 'array', items: { type: 'object', properties: { k: { type: 'string' } } } },
        id: { type: ['string', 'integer'] },
        any_list: { type: 'array' },
        maybe: { type: 'number', nullable: true },
        mode: { type: 'string', enum: ['a', 'b'], default: 'a' },
        opts: { type: 'object', default: { x: 1 } },
      },
      required: ['user'],
    });
    expect(ts).toBe(
      [
        '{',
        '// Who asks',
        'user:     // Who asks',
        '{',
        '    // Full name',
        '    name: string,',
        '    age?: number, // default: 30',
        '    },',
        'tags?: {',
        '    k?: string,',
        '    }[],',
        'id?: string | number,',
        'any_list?: Array<any>,',
        'maybe?: number | null,',
        'mode?: "a" | "b", // default: a',
        'opts?: {',
        '    }, // default: {"x":1}',
        '}',
      ].join('\n'),
    );
  });

  it('writes anyOf, $ref and untyped schemas as any, and an empty object as braces', () => {
    expect(schemaToTypeScript({ anyOf: [{ type: 'string' }, { type: 'null' }] })).toBe('any');
    expect(schemaToTypeScript({ $ref: '#/defs/x' })).toBe('any');
    expect(schemaToTypeScript({ type: 'object', properties: {} })).toBe('{\n}');
  });

  it('renders a tool with empty parameters as the authority does', () => {
    const text = renderConversation({
      tools: [{ type: 'function', function: { name: 'now', description: 'Current time.', parameters: { type: 'object', properties: {} } } }],
      messages: [],
    });
    expect(text).toContain('// Current time.\ntype now = (_: {\n}) => any;');
  });
});

describe('bad requests', () => {
  const bad = (req: unknown, message: RegExp) => {
    expect(() => renderConversation(req as ChatRequest)).toThrow(RequestError);
    expect(() => renderConversation(req as ChatRequest)).toThrow(message);
  };
  const fnTool = (parameters: unknown): Tool => ({ type: 'function', function: { name: 'f', description: 'd', parameters } as Tool['function'] });

  it('rejects unknown roles', () => bad({ messages: [{ role: 'robot', content: 'x' }] }, /messages\[0\]\.role: unknown role "robot"/));
  it('rejects a missing messages array', () => bad({}, /messages must be an array/));
  it('rejects tool schemas that are not JSON-Schema objects', () => {
    bad({ messages: [], tools: [fnTool([1, 2])] }, /tools\[0\]\.function\.parameters is not a JSON Schema object/);
    bad({ messages: [], tools: [fnTool({ type: 'array', items: {} })] }, /must describe an object/);
    bad({ messages: [], tools: [fnTool({ type: 'object', properties: { a: { type: 'strng' } } })] }, /properties\.a\.type "strng" is not a JSON Schema type/);
    bad({ messages: [], tools: [fnTool({ type: 'object', properties: [] })] }, /properties must be an object/);
    bad({ messages: [], tools: [fnTool({ type: 'object', properties: { a: 5 } })] }, /properties\.a is not a JSON Schema object/);
    bad({ messages: [], tools: [fnTool({ type: 'object', required: 'a' })] }, /required must be an array/);
    bad({ messages: [], tools: [{ type: 'function', function: { name: 'bad name' } }] }, /function\.name must be/);
    bad({ messages: [], tools: [{ type: 'retrieval' }] }, /tools\[0\]\.type must be "function"/);
  });
  it('rejects malformed tool_calls', () => {
    const asst = (tool_calls: unknown) => ({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', tool_calls }] });
    bad(asst({}), /messages\[1\]\.tool_calls must be an array/);
    bad(asst([{ type: 'function' }]), /tool_calls\[0\]\.function must be an object/);
    bad(asst([{ type: 'function', function: { arguments: '{}' } }]), /function\.name must be a non-empty string/);
    bad(asst([{ type: 'function', function: { name: 'f', arguments: 5 } }]), /function\.arguments must be a JSON string/);
    bad(asst([{ type: 'code', function: { name: 'f', arguments: '{}' } }]), /tool_calls\[0\]\.type must be "function"/);
  });
  it('rejects a tool result with nothing to answer', () => bad({ messages: [{ role: 'tool', tool_call_id: 'x', content: '1' }] }, /no earlier assistant tool call/));
  it('rejects bad harmony options and content', () => {
    bad({ messages: [], reasoning_effort: 'max' }, /reasoning_effort must be low, medium or high/);
    bad({ messages: [], current_date: '25/11/2026' }, /current_date must be YYYY-MM-DD/);
    bad({ messages: [], builtin_tools: ['shell'] }, /unknown built-in tool "shell"/);
    bad({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }, /only text content can be rendered/);
  });
});
