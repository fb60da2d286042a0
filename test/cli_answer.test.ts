// How `run` and `chat` print one answer: reasoning hidden or dimmed, content streamed, tool calls and the summary
// line on stderr.
import { describe, expect, it } from 'vitest';
import type { ChatEvent, ChatResult, Stream } from '../src/api/types.js';
import { streamAnswer } from '../src/cli/answer.js';

const RESULT: ChatResult = {
  role: 'assistant',
  content: 'Hello there.',
  reasoning: 'Greet back.',
  tool_calls: [],
  finish_reason: 'stop',
  usage: { prompt_tokens: 10, completion_tokens: 7, total_tokens: 17 },
  timings: { time_to_first_token_ms: 12.4, total_ms: 100, tokens_per_second: 55.55 },
  malformed: false,
};

function fakeStream(events: ChatEvent[]): Stream<ChatEvent, ChatResult> {
  return Object.assign(
    (async function* () {
      yield* events;
    })(),
    { result: Promise.resolve(RESULT) },
  );
}

function sink(tty: boolean) {
  const chunks: string[] = [];
  return { chunks, stream: { isTTY: tty, write: (s: string) => (chunks.push(s), true) } as unknown as NodeJS.WriteStream };
}

const EVENTS: ChatEvent[] = [
  { type: 'reasoning', delta: 'Greet ' },
  { type: 'reasoning', delta: 'back.' },
  { type: 'content', delta: 'Hello ' },
  { type: 'content', delta: 'there.' },
  { type: 'tool_call', tool_call: { id: 'c1', type: 'function', function: { name: 'f', arguments: '{"a":1}' } } },
  { type: 'done', message: RESULT },
];

describe('streamAnswer', () => {
  it('hides reasoning by default and ends with the summary line', async () => {
    const out = sink(false);
    const err = sink(false);
    await streamAnswer(fakeStream(EVENTS), { showReasoning: false, out: out.stream, err: err.stream });
    expect(out.chunks.join('')).toBe('Hello there.\n');
    expect(err.chunks.join('')).toBe(
      '[tool call] f({"a":1})\nprompt 10 tokens, generated 7 tokens, time to first token 12 ms, 55.5 tokens/s, finish stop\n',
    );
  });

  it('shows reasoning dimmed on a terminal, plain otherwise', async () => {
    const tty = sink(true);
    await streamAnswer(fakeStream(EVENTS), { showReasoning: true, out: tty.stream, err: sink(false).stream });
    expect(tty.chunks.join('')).toBe('\x1b[2mGreet back.\x1b[22m\nHello there.\n');
    const plain = sink(false);
    await streamAnswer(fakeStream(EVENTS), { showReasoning: true, out: plain.stream, err: sink(false).stream });
    expect(plain.chunks.join('')).toBe('Greet back.\nHello there.\n');
  });
});
