// Generated tokens to chat events and the final message. The harmony parser (behind harmony_adapter.ts) splits
// the token stream into messages; this file decides what each means to a chat client:
//   analysis channel                -> reasoning
//   final channel (or no channel)   -> content, cut at the first stop string
//   commentary without a recipient  -> content (a preamble the model addresses to the user)
//   a message to a recipient        -> its arguments as tool_arguments deltas, then a tool call once it is complete
//                                      (functions.NAME -> NAME; built-in tools such as browser.search keep their
//                                      full name); the deltas and the call share one id
import type { GenerationResult } from '../engine/engine.js';
import type { SampledToken } from '../sampling/sampler.js';
import { StopStrings } from '../sampling/stop.js';
import { StreamingDetokenizer, type HarmonyTokenizer } from '../tokenizer/tokenizer.js';
import { createHarmonyParser, type ParsedEvent, type TokenParser } from './harmony_adapter.js';
import type { ChatEvent, ChatResult, GeneratedToken, Timings } from './types.js';

type CompleteToolCall = ChatResult['tool_calls'][number];

let callCounter = 0;
function callId(): string {
  callCounter = (callCounter + 1) % 1e9;
  return `call_${Date.now().toString(36)}${callCounter.toString(36)}`;
}

export class ChatAssembler {
  private readonly parser: TokenParser;
  private readonly stops: StopStrings;
  private readonly detok: StreamingDetokenizer | undefined;
  private readonly logprobs: GeneratedToken[] | undefined;
  private content = '';
  private reasoning = '';
  private readonly toolCalls: CompleteToolCall[] = [];
  /** The id of the call whose arguments are streaming, given at its first delta. */
  private pendingCallId: string | undefined;
  private malformed = false;
  /** What the parser found wrong with the output, when it was malformed. */
  problems: string[] = [];

  constructor(tokenizer: HarmonyTokenizer, stop: string[], wantLogprobs: boolean, functionNames: string[] = []) {
    this.parser = createHarmonyParser(tokenizer, functionNames);
    this.stops = new StopStrings(stop);
    if (wantLogprobs) {
      this.detok = new StreamingDetokenizer(tokenizer);
      this.logprobs = [];
    }
  }

  /** True once a stop string matched: the engine ends the generation. */
  get stopped(): boolean {
    return this.stops.stopped;
  }

  /** Reads tokens the prompt already holds as the start of the output (an assistant prefix); they make no events. */
  prime(tokens: readonly number[]): void {
    for (const t of tokens) this.handle(this.parser.push(t));
  }

  push(t: SampledToken): ChatEvent[] {
    if (this.logprobs && this.detok) {
      const g: GeneratedToken = { token: t.token, text: this.detok.push(t.token) };
      if (t.logprob !== undefined) g.logprob = t.logprob;
      if (t.topLogprobs) g.top_logprobs = t.topLogprobs;
      this.logprobs.push(g);
    }
    return this.handle(this.parser.push(t.token));
  }

  /** Events for whatever the parser still held when generation ended ('length' / 'abort' when cut by the engine). */
  finish(reason?: string): ChatEvent[] {
    const events = this.handle(this.parser.finish(reason));
    const tail = this.stops.flush();
    if (tail) {
      this.content += tail;
      events.push({ type: 'content', delta: tail });
    }
    return events;
  }

  private handle(parsed: ParsedEvent[]): ChatEvent[] {
    const events: ChatEvent[] = [];
    for (const e of parsed) {
      if (e.type === 'malformed') {
        this.malformed = true;
        this.problems = e.problems;
      } else if (e.type === 'delta') {
        if (e.recipient && e.recipient !== 'user' && e.recipient !== 'all' && e.recipient !== 'assistant') {
          this.pendingCallId ??= callId();
          const name = e.recipient.startsWith('functions.') ? e.recipient.slice('functions.'.length) : e.recipient;
          events.push({ type: 'tool_arguments', index: this.toolCalls.length, id: this.pendingCallId, name, delta: e.delta });
        } else if (e.channel === 'analysis') {
          this.reasoning += e.delta;
          events.push({ type: 'reasoning', delta: e.delta });
        } else {
          const shown = this.stops.push(e.delta);
          if (shown) {
            this.content += shown;
            events.push({ type: 'content', delta: shown });
          }
        }
      } else if (e.type === 'tool_call') {
        const call: CompleteToolCall = { id: this.pendingCallId ?? callId(), type: 'function', function: { name: e.name, arguments: e.arguments } };
        this.pendingCallId = undefined;
        this.toolCalls.push(call);
        events.push({ type: 'tool_call', tool_call: call });
      }
    }
    return events;
  }

  result(gen: GenerationResult, timings: Timings): ChatResult {
    const finish = gen.finishReason === 'length' ? 'length' : this.toolCalls.length > 0 && !this.stops.stopped ? 'tool_calls' : 'stop';
    const r: ChatResult = {
      role: 'assistant',
      content: this.content,
      reasoning: this.reasoning,
      tool_calls: this.toolCalls,
      finish_reason: finish,
      usage: {
        prompt_tokens: gen.promptTokens,
        completion_tokens: gen.completionTokens,
        total_tokens: gen.promptTokens + gen.completionTokens,
        prompt_tokens_details: { cached_tokens: gen.cachedTokens },
      },
      timings,
      malformed: this.malformed,
    };
    if (this.logprobs) r.logprobs = this.logprobs;
    return r;
  }
}
