import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { HarmonyStreamParser, type HarmonyEvent, type HarmonyStreamParserOptions, type ParseResult } from '../src/harmony/index.js';
import { HarmonyTokenizer } from '../src/tokenizer/tokenizer.js';

const tok = new HarmonyTokenizer();
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dataDir = resolve(repoRoot, '..', 'shared', 'spec', 'harmony-test-data');
const haveSpec = existsSync(dataDir);
if (!haveSpec) console.warn(`harmony_parser: ${dataDir} is missing; the harmony-test-data parses are skipped`);

/** Harmony text to ids, special-token text as special ids. */
const ids = (text: string) => tok.encode(text, { allowSpecial: true });

/** The same text as one token per byte: every multi-byte character is split across tokens. */
function byteIds(text: string): number[] {
  const byteToken = new Map<number, number>();
  for (let id = 0; id < 199998 && byteToken.size < 256; id++) {
    const b = tok.tokenBytes(id);
    if (b.length === 1 && !byteToken.has(b[0])) byteToken.set(b[0], id);
  }
  const out: number[] = [];
  for (const id of ids(text)) {
    if (tok.isSpecial(id)) out.push(id);
    else for (const b of tok.tokenBytes(id)) out.push(byteToken.get(b)!);
  }
  return out;
}

interface Run {
  events: HarmonyEvent[];
  result: ParseResult;
}

function run(tokens: number[], opts: HarmonyStreamParserOptions = {}, finishReason?: string): Run {
  const p = new HarmonyStreamParser({ tokenizer: tok, ...opts });
  const events: HarmonyEvent[] = [];
  for (const t of tokens) events.push(...p.push(t));
  const result = p.finish(finishReason);
  events.push(...result.events);
  return { events, result };
}

/** Events with consecutive content deltas of one message merged: what a client sees, whatever the token split. */
function merged(events: HarmonyEvent[]): HarmonyEvent[] {
  const out: HarmonyEvent[] = [];
  for (const e of events) {
    const last = out[out.length - 1];
    if (e.type === 'content_delta' && last?.type === 'content_delta' && last.index === e.index) {
      out[out.length - 1] = { ...last, text: last.text + e.text };
    } else out.push(e);
  }
  return out;
}

/** Checks the invariants of a run: deltas add up to each message's content, and no delta splits a character. */
function checkInvariants({ events, result }: Run): void {
  const text = new Map<number, string>();
  for (const e of events) {
    if (e.type === 'content_delta') {
      text.set(e.index, (text.get(e.index) ?? '') + e.text);
      expect(/[\uD800-\uDBFF]$/.test(e.text)).toBe(false);
    }
  }
  result.messages.forEach((m, i) => expect(text.get(i) ?? '').toBe(m.content));
}

const ANSWER =
  '<|channel|>analysis<|message|>User asks: “What is 2 + 2?” Simple arithmetic — 日本語 💖 ok.<|end|>' +
  '<|start|>assistant<|channel|>final<|message|>2 + 2 = 4. 🎉<|return|>';
const TOOL_CALL =
  '<|channel|>analysis<|message|>Need the weather; use get_weather.<|end|>' +
  '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"Tokyo 東京"}<|call|>';

describe('HarmonyStreamParser on well-formed output', () => {
  it('streams an analysis message and a final answer', () => {
    const { events, result } = run(ids(ANSWER));
    expect(merged(events)).toEqual([
      { type: 'message_start', index: 0, role: 'assistant', author: 'assistant', channel: 'analysis' },
      { type: 'content_delta', index: 0, channel: 'analysis', text: 'User asks: “What is 2 + 2?” Simple arithmetic — 日本語 💖 ok.' },
      { type: 'message_end', index: 0, end: 'end', message: result.messages[0] },
      { type: 'message_start', index: 1, role: 'assistant', author: 'assistant', channel: 'final' },
      { type: 'content_delta', index: 1, channel: 'final', text: '2 + 2 = 4. 🎉' },
      { type: 'message_end', index: 1, end: 'return', message: result.messages[1] },
      { type: 'stop', reason: 'return' },
    ]);
    expect(result.malformed).toBe(false);
    expect(result.problems).toEqual([]);
    expect(result.stopReason).toBe('return');
    expect(result.messages.map((m) => [m.channel, m.content, m.end])).toEqual([
      ['analysis', 'User asks: “What is 2 + 2?” Simple arithmetic — 日本語 💖 ok.', 'end'],
      ['final', '2 + 2 = 4. 🎉', 'return'],
    ]);
  });

  it('turns a message to functions.* ending in <|call|> into a tool call and stops', () => {
    const { events, result } = run(ids(TOOL_CALL), { functionNames: ['get_weather'] });
    const call = events.find((e) => e.type === 'tool_call');
    expect(call).toEqual({
      type: 'tool_call',
      index: 1,
      recipient: 'functions.get_weather',
      name: 'get_weather',
      arguments: '{"location":"Tokyo 東京"}',
      parsed: { location: 'Tokyo 東京' },
    });
    expect(events.at(-1)).toEqual({ type: 'stop', reason: 'call' });
    expect(result.messages[1]).toMatchObject({ channel: 'commentary', recipient: 'functions.get_weather', contentType: '<|constrain|>json', end: 'call' });
    expect(result.malformed).toBe(false);
  });

  it('accepts to= after the role and after the channel alike', () => {
    const afterChannel = run(ids('<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a":1}<|call|>'));
    const afterRole = run(ids(' to=functions.f<|channel|>commentary <|constrain|>json<|message|>{"a":1}<|call|>'));
    const fromStart = run(ids('<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{"a":1}<|call|>'), { role: null });
    for (const r of [afterChannel, afterRole, fromStart]) {
      expect(r.result.messages).toEqual([afterChannel.result.messages[0]]);
      expect(r.result.malformed).toBe(false);
    }
    expect(afterChannel.result.messages[0].toolCall?.parsed).toEqual({ a: 1 });
  });

  it('reads <|constrain|>json, <|constrain|> right after the recipient, and a plain json content type', () => {
    const constrained = run(ids('<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>')).result.messages[0];
    const adjacent = run(ids('<|channel|>commentary to=functions.f<|constrain|>json<|message|>{}<|call|>')).result.messages[0];
    const plain = run(ids('<|channel|>commentary to=functions.f json<|message|>{}<|call|>')).result.messages[0];
    expect(constrained.contentType).toBe('<|constrain|>json');
    expect(adjacent.contentType).toBe('<|constrain|>json');
    expect(plain.contentType).toBe('json');
    for (const m of [constrained, adjacent, plain]) expect(m.toolCall).toMatchObject({ name: 'f', parsed: {} });
  });

  it('parses a tool result and a preamble', () => {
    const { result } = run(
      ids(
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp":20}<|end|>' +
          '<|start|>assistant<|channel|>commentary<|message|>Checking two cities.<|end|>',
      ),
      { role: null },
    );
    expect(result.messages).toEqual([
      { role: 'tool', author: 'functions.get_weather', recipient: 'assistant', channel: 'commentary', content: '{"temp":20}', end: 'end' },
      { role: 'assistant', author: 'assistant', channel: 'commentary', content: 'Checking two cities.', end: 'end' },
    ]);
    expect(result.malformed).toBe(false);
  });
});

describe('HarmonyStreamParser on malformed output', () => {
  it('keeps everything on a stray <|return|> after <|end|>', () => {
    const { events, result } = run(ids('<|channel|>final<|message|>Hello.<|end|><|return|>'));
    expect(result.messages).toEqual([{ role: 'assistant', author: 'assistant', channel: 'final', content: 'Hello.', end: 'end' }]);
    expect(events.at(-1)).toEqual({ type: 'stop', reason: 'return' });
    expect(result.malformed).toBe(true);
    expect(result.problems).toEqual(['stray <|return|> outside a message']);
  });

  it('assumes final for a message with no <|channel|>', () => {
    const direct = run(ids('<|message|>Hello there.<|return|>'));
    expect(direct.result.messages).toEqual([{ role: 'assistant', author: 'assistant', channel: 'final', content: 'Hello there.', end: 'return' }]);
    expect(direct.result.problems).toEqual(['message header has no <|channel|>; assumed final']);
    const later = run(ids('<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|message|>Answer.<|return|>'));
    expect(later.result.messages.map((m) => [m.channel, m.content])).toEqual([
      ['analysis', 'Think.'],
      ['final', 'Answer.'],
    ]);
    expect(later.result.malformed).toBe(true);
  });

  it('keeps the text of a header with no <|message|> as content', () => {
    const noMessage = run(ids('<|channel|>final Hello world, no message token.<|return|>'));
    expect(noMessage.result.messages).toEqual([
      { role: 'assistant', author: 'assistant', channel: 'final', content: 'Hello world, no message token.', end: 'return' },
    ]);
    expect(noMessage.result.problems).toContain('message header has no <|message|>; its text is kept as content');
    // The harmony library's own non-strict cases.
    const refuse = run(
      ids("I must refuse<|end|><|start|>assistant<|channel|>analysis<|message|>We must refuse<|end|><|start|>assistant<|channel|>final<|message|>I'm sorry, but I can't help with that.<|return|>"),
    );
    expect(refuse.result.messages.map((m) => [m.channel, m.content])).toEqual([
      ['final', 'I must refuse'],
      ['analysis', 'We must refuse'],
      ['final', "I'm sorry, but I can't help with that."],
    ]);
    const analysisNoMessage = run(ids('<|channel|>analysis I must refuse<|end|><|start|>assistant<|channel|>final<|message|>No.<|return|>'));
    expect(analysisNoMessage.result.messages.map((m) => [m.channel, m.content])).toEqual([
      ['analysis', 'I must refuse'],
      ['final', 'No.'],
    ]);
    const toolCall = run(ids('<|channel|>commentary to=functions.get_weather <|constrain|>json {"location": "Tokyo"}<|call|>'));
    expect(toolCall.result.messages[0].toolCall).toMatchObject({ name: 'get_weather', parsed: { location: 'Tokyo' } });
  });

  it('streams a long header-less answer instead of buffering it', () => {
    const p = new HarmonyStreamParser({ tokenizer: tok });
    const events: HarmonyEvent[] = [];
    for (const t of ids('The model forgot its header and wrote\na long answer directly.')) events.push(...p.push(t));
    expect(events.some((e) => e.type === 'content_delta')).toBe(true);
    const r = p.finish('length');
    expect(r.messages[0]).toMatchObject({ channel: 'final', content: 'The model forgot its header and wrote\na long answer directly.', end: null });
  });

  it('keeps an unknown channel or recipient, flagged', () => {
    const channel = run(ids('<|channel|>thoughts<|message|>hmm<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>'));
    expect(channel.result.messages.map((m) => m.channel)).toEqual(['thoughts', 'final']);
    expect(channel.result.problems).toEqual(['unknown channel "thoughts"']);
    const recipient = run(ids('<|channel|>commentary to=shell.exec <|constrain|>json<|message|>{"cmd":"ls"}<|call|>'));
    expect(recipient.result.messages[0].toolCall).toMatchObject({ recipient: 'shell.exec', name: 'shell.exec', parsed: { cmd: 'ls' } });
    expect(recipient.result.problems).toEqual(['unknown recipient "shell.exec"']);
    const unknownFn = run(ids('<|channel|>commentary to=functions.nope <|constrain|>json<|message|>{}<|call|>'), { functionNames: ['get_weather'] });
    expect(unknownFn.result.problems).toEqual(['call to unknown function "nope"']);
  });

  it('handles a duplicated to= in a header', () => {
    const same = run(ids(' to=functions.f<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a":1}<|call|>'));
    expect(same.result.messages).toHaveLength(1);
    expect(same.result.messages[0].toolCall).toMatchObject({ name: 'f', parsed: { a: 1 } });
    expect(same.result.problems).toEqual(['duplicated to=functions.f in a header']);
    const conflicting = run(ids(' to=functions.f<|channel|>commentary to=functions.g <|constrain|>json<|message|>{"a":1}<|call|>'));
    expect(conflicting.result.messages[0].recipient).toBe('functions.f');
    expect(conflicting.result.problems[0]).toMatch(/conflicting recipients/);
  });

  it('flags tool arguments that are not valid JSON, and unwraps an array-wrapped object', () => {
    const invalid = run(ids('<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"location": "Tokyo"<|call|>'));
    const call = invalid.events.find((e) => e.type === 'tool_call');
    expect(call).toMatchObject({ name: 'f', arguments: '{"location": "Tokyo"' });
    expect(call && 'parseError' in call && call.parseError).toMatch(/^not valid JSON/);
    expect(call && 'parsed' in call).toBe(false);
    expect(invalid.result.malformed).toBe(true);
    const wrapped = run(ids('<|channel|>commentary to=functions.f <|constrain|>json<|message|>[{"location": "Tokyo"}]<|call|>'));
    expect(wrapped.result.messages[0].toolCall).toEqual({ recipient: 'functions.f', name: 'f', arguments: '{"location":"Tokyo"}', parsed: { location: 'Tokyo' } });
    expect(wrapped.result.problems).toEqual(['tool call arguments in message 0 came wrapped in an array; unwrapped']);
    const notObject = run(ids('<|channel|>commentary to=functions.f <|constrain|>json<|message|>[1, 2]<|call|>'));
    expect(notObject.result.messages[0].toolCall?.parseError).toBe('JSON array, not an object');
  });

  it('ignores and reports tokens after <|call|>', () => {
    const { events, result } = run(ids(TOOL_CALL + '<|start|>assistant<|channel|>final<|message|>Made up answer.<|return|>'));
    expect(result.messages).toHaveLength(2);
    expect(events.filter((e) => e.type === 'tool_call')).toHaveLength(1);
    expect(events.filter((e) => e.type === 'stop')).toEqual([{ type: 'stop', reason: 'call' }]);
    expect(result.malformed).toBe(true);
    expect(result.problems).toEqual([`${ids('<|start|>assistant<|channel|>final<|message|>Made up answer.<|return|>').length} token(s) after <|call|> ignored`]);
  });

  it('keeps a message cut off by max_tokens', () => {
    const cut = ids(ANSWER).slice(0, -4);
    const length = run(cut, {}, 'length');
    expect(length.result.messages).toHaveLength(2);
    expect(length.result.messages[1]).toMatchObject({ channel: 'final', end: null });
    expect(length.result.malformed).toBe(false);
    expect(length.events.at(-1)).toMatchObject({ type: 'message_end', index: 1, end: null });
    const unexplained = run(cut);
    expect(unexplained.result.malformed).toBe(true);
    expect(unexplained.result.problems).toEqual(['stream ended inside a message (no <|end|>, <|return|> or <|call|>)']);
    // A tool call cut off is not a call.
    const cutCall = run(ids(TOOL_CALL).slice(0, -3), {}, 'length');
    expect(cutCall.events.some((e) => e.type === 'tool_call')).toBe(false);
  });

  it('recovers a message the model left open before <|channel|> or <|start|>', () => {
    const { result } = run(ids('<|channel|>analysis<|message|>Think.<|channel|>final<|message|>Answer.<|return|>'));
    expect(result.messages.map((m) => [m.channel, m.content, m.end])).toEqual([
      ['analysis', 'Think.', null],
      ['final', 'Answer.', 'return'],
    ]);
    expect(result.problems).toEqual(['message 0 not terminated before <|channel|>']);
    const start = run(ids('<|channel|>analysis<|message|>Think.<|start|>assistant<|channel|>final<|message|>Answer.<|return|>'));
    expect(start.result.messages.map((m) => m.content)).toEqual(['Think.', 'Answer.']);
  });

  it('never throws, on invalid ids or random special-token soup', () => {
    const invalid = run([...ids('<|channel|>final<|message|>ok'), 999_999, -1, 1.5, ...ids('<|return|>')]);
    expect(invalid.result.messages[0].content).toBe('ok\uFFFD\uFFFD\uFFFD');
    expect(invalid.result.malformed).toBe(true);
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const pool = [199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200020, ...ids(' to=functions.f final analysis json {"a": 1} 💖 assistant\n'), 9552];
    for (let trial = 0; trial < 300; trial++) {
      const tokens = Array.from({ length: 1 + rand(40) }, () => pool[rand(pool.length)]);
      for (const opts of [{}, { role: null }, { continueAfterStop: true }] as HarmonyStreamParserOptions[]) {
        let r: Run | undefined;
        expect(() => (r = run(tokens, opts))).not.toThrow();
        checkInvariants(r!);
      }
    }
  });
});

describe('HarmonyStreamParser token boundaries', () => {
  const STREAMS = {
    answer: ANSWER,
    toolCall: TOOL_CALL,
    noMessage: '<|channel|>final Hello world, no message token 😀.<|return|>',
    openBeforeChannel: '<|channel|>analysis<|message|>Думаю…<|channel|>final<|message|>Ответ: 42 ✅<|return|>',
    badJson: '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"q": "naïve<|call|>',
  };

  it.each(Object.entries(STREAMS))('%s: a stream cut at every token boundary agrees with the whole stream', (_name, text) => {
    const tokens = ids(text);
    const whole = run(tokens);
    const wholeMerged = merged(whole.events.filter((e) => e.type !== 'stop'));
    checkInvariants(whole);
    for (let k = 0; k <= tokens.length; k++) {
      // Fed in two pieces: identical events.
      const p = new HarmonyStreamParser({ tokenizer: tok });
      const events: HarmonyEvent[] = [];
      for (const t of tokens.slice(0, k)) events.push(...p.push(t));
      const atCut = [...events];
      for (const t of tokens.slice(k)) events.push(...p.push(t));
      const res = p.finish();
      events.push(...res.events);
      expect(events).toEqual(whole.events);
      // What had streamed by k is a prefix of the whole stream's events (the last delta possibly shorter).
      const sofar = merged(atCut.filter((e) => e.type !== 'stop'));
      expect(sofar.length).toBeLessThanOrEqual(wholeMerged.length);
      sofar.forEach((e, i) => {
        const w = wholeMerged[i];
        if (e.type === 'content_delta' && i === sofar.length - 1 && w.type === 'content_delta') {
          expect(w.text.startsWith(e.text)).toBe(true);
        } else expect(e).toEqual(w);
      });
      // Cut there by max_tokens: every message completed before k is the same, the open one a prefix (an
      // incomplete last character becomes one U+FFFD).
      const cut = run(tokens.slice(0, k), {}, 'length');
      checkInvariants(cut);
      cut.result.messages.forEach((m, i) => {
        const full = whole.result.messages[i];
        if (m.end !== null) expect(m).toEqual(full);
        else expect(full.content.startsWith(m.content.replace(/\uFFFD$/, ''))).toBe(true);
      });
    }
  });

  it.each(Object.entries(STREAMS))('%s: one token per byte (UTF-8 characters split across tokens) gives the same events', (_name, text) => {
    const normal = run(ids(text));
    const bytes = run(byteIds(text));
    checkInvariants(bytes);
    expect(merged(bytes.events)).toEqual(merged(normal.events));
    expect(bytes.result.messages).toEqual(normal.result.messages);
    expect(bytes.result.problems).toEqual(normal.result.problems);
  });

  it('holds back half an emoji until the token that completes it', () => {
    const p = new HarmonyStreamParser({ tokenizer: tok });
    for (const t of ids('<|channel|>final<|message|>')) p.push(t);
    const emoji = tok.encode('💖');
    expect(emoji.length).toBeGreaterThanOrEqual(2);
    expect(p.push(emoji[0])).toEqual([]);
    expect(emoji.slice(1).flatMap((t) => p.push(t))).toEqual([{ type: 'content_delta', index: 0, channel: 'final', text: '💖' }]);
  });

  it('does not leak an incomplete character into the next message', () => {
    const tokens = [...ids('<|channel|>analysis<|message|>'), 9552, 9552, ...ids('<|end|><|start|>assistant<|channel|>final<|message|>Hi<|return|>')];
    const { result } = run(tokens);
    expect(result.messages[1].content).toBe('Hi');
    expect(result.messages[0].content).toBe(' \uFFFD \uFFFD');
  });
});

describe.skipIf(!haveSpec)('the harmony library test-data model outputs', () => {
  const load = (f: string) => readFileSync(resolve(dataDir, f), 'utf8').replace(/\r\n/g, '\n').trimEnd();
  const numbers = (f: string) => load(f).split(/\s+/).map(Number);

  it('test_simple_reasoning_response.txt', () => {
    // The file has <|return|> (not <|end|>) after the analysis; the library's parser keeps going, as ours does
    // when asked to; by default generation would have stopped there.
    const offline = run(numbers('test_simple_reasoning_response.txt'), { continueAfterStop: true }, 'length');
    expect(offline.result.messages.map((m) => [m.role, m.channel, m.content])).toEqual([
      ['assistant', 'analysis', 'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'],
      ['assistant', 'final', '2 + 2 = 4.'],
    ]);
    const streaming = run(numbers('test_simple_reasoning_response.txt'));
    expect(streaming.result.messages).toHaveLength(1);
    expect(streaming.result.problems[0]).toMatch(/token\(s\) after <\|return\|> ignored/);
  });

  it('test_simple_tool_call.txt', () => {
    const { result } = run(numbers('test_simple_tool_call.txt'), { continueAfterStop: true }, 'length');
    expect(result.messages.map((m) => [m.channel, m.recipient, m.contentType, m.content])).toEqual([
      ['analysis', undefined, undefined, 'User asks: "What is the weather in Tokyo?" We need to use lookup_weather tool.'],
      ['analysis', 'lookup_weather', 'code', '{"location": "Tokyo"}'],
    ]);
    expect(result.problems).toEqual(['unknown recipient "lookup_weather"']);
  });

  it('test_streamable_parser.txt', () => {
    const tokens = ids(load('test_streamable_parser.txt'));
    const offline = run(tokens, { continueAfterStop: true });
    expect(offline.result.messages).toHaveLength(3);
    expect(offline.result.messages[1]).toMatchObject({ channel: 'commentary', recipient: 'browser.search', contentType: 'code', end: 'call' });
    expect(offline.result.messages[1].toolCall?.parsed).toEqual({ query: 'current US president July 2025', topn: 10, source: 'news' });
    expect(offline.result.messages[2]).toMatchObject({ role: 'tool', author: 'browser.search', recipient: 'assistant', content: '{"result": "https://openai.com/"}' });
    expect(offline.result.malformed).toBe(false);
    const streaming = run(tokens);
    expect(streaming.result.messages).toHaveLength(2);
    expect(streaming.result.stopReason).toBe('call');
  });

  it('test_tool_response_parsing.txt', () => {
    const { result } = run(ids(load('test_tool_response_parsing.txt')), { role: null }, 'length');
    expect(result.messages).toEqual([
      { role: 'tool', author: 'browser.search', recipient: 'assistant', channel: 'commentary', content: '{"result": "https://openai.com/"}', end: null },
    ]);
    expect(result.malformed).toBe(false);
  });
});
