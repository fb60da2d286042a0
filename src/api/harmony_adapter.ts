// The seam between the chat layer and the harmony stream parser (src/harmony/parser.ts): the chat layer needs,
// per generated token, content deltas tagged with their message's channel and recipient, complete tool calls, and
// a flag when the output broke the format. The parser's events carry the recipient only on message_start, so this
// adapter remembers it per message.
import { HarmonyStreamParser, type HarmonyEvent } from '../harmony/parser.js';
import type { HarmonyTokenizer } from '../tokenizer/tokenizer.js';

export type ParsedEvent =
  | { type: 'delta'; channel?: string; recipient?: string; delta: string }
  | { type: 'tool_call'; name: string; arguments: string }
  | { type: 'malformed'; problems: string[] };

export interface TokenParser {
  push(token: number): ParsedEvent[];
  /** reason: 'length' or 'abort' when the engine cut the output (an open message is then expected). */
  finish(reason?: string): ParsedEvent[];
}

class ParserAdapter implements TokenParser {
  private readonly parser: HarmonyStreamParser;
  private readonly open = new Map<number, { channel?: string; recipient?: string }>();

  constructor(tokenizer: HarmonyTokenizer, functionNames: string[]) {
    this.parser = new HarmonyStreamParser({ tokenizer, functionNames, role: 'assistant' });
  }

  private map(events: HarmonyEvent[]): ParsedEvent[] {
    const out: ParsedEvent[] = [];
    for (const e of events) {
      if (e.type === 'message_start') this.open.set(e.index, { channel: e.channel, recipient: e.recipient });
      else if (e.type === 'content_delta') {
        const m = this.open.get(e.index);
        out.push({ type: 'delta', channel: e.channel ?? m?.channel, recipient: m?.recipient, delta: e.text });
      } else if (e.type === 'tool_call') out.push({ type: 'tool_call', name: e.name, arguments: e.arguments });
      else if (e.type === 'message_end') this.open.delete(e.index);
    }
    return out;
  }

  push(token: number): ParsedEvent[] {
    return this.map(this.parser.push(token));
  }

  finish(reason?: string): ParsedEvent[] {
    const r = this.parser.finish(reason);
    const out = this.map(r.events);
    if (r.malformed) out.push({ type: 'malformed', problems: r.problems });
    return out;
  }
}

export function createHarmonyParser(tokenizer: HarmonyTokenizer, functionNames: string[] = []): TokenParser {
  return new ParserAdapter(tokenizer, functionNames);
}
