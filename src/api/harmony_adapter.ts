// The seam between the chat layer and the harmony stream parser: the chat layer needs, per generated token,
// content deltas tagged with their message's channel and recipient, each completed message, and a flag when the
// output breaks the format. This file adapts the parser to that shape.
import { TOKEN, type HarmonyTokenizer, StreamingDetokenizer } from '../tokenizer/tokenizer.js';

export type ParsedEvent =
  | { type: 'delta'; channel?: string; recipient?: string; delta: string }
  | { type: 'message'; channel?: string; recipient?: string; content: string }
  | { type: 'malformed'; reason: string };

export interface TokenParser {
  push(token: number): ParsedEvent[];
  finish(): ParsedEvent[];
}

/**
 * A parser of the assistant's output, which starts right after the prompt's `<|start|>assistant`: header (channel,
 * recipient, content type) until `<|message|>`, content until `<|end|>`, `<|call|>` or `<|return|>`, then
 * optionally `<|start|>` and the next message.
 */
class AssistantOutputParser implements TokenParser {
  private state: 'header' | 'content' | 'between' = 'header';
  private header = '';
  private channel: string | undefined;
  private recipient: string | undefined;
  private content = '';
  private detok: StreamingDetokenizer;

  constructor(private readonly tokenizer: HarmonyTokenizer) {
    this.detok = new StreamingDetokenizer(tokenizer, { skipSpecial: true });
  }

  private parseHeader(): void {
    // Header text after the role, e.g. "<|channel|>commentary to=functions.f <|constrain|>json".
    const to = /(?:^|\s)to=(\S+)/.exec(this.header.replace(/<\|channel\|>/g, ' <|channel|>'));
    this.recipient = to ? to[1].replace(/<\|.*$/, '') : undefined;
    const ch = /<\|channel\|>([^\s<]+)/.exec(this.header);
    this.channel = ch ? ch[1] : undefined;
  }

  push(token: number): ParsedEvent[] {
    const out: ParsedEvent[] = [];
    if (this.state === 'between') {
      if (token === TOKEN.start) {
        this.state = 'header';
        this.header = '';
        return out;
      }
      return [{ type: 'malformed', reason: 'text between messages' }];
    }
    if (this.state === 'header') {
      if (token === TOKEN.message) {
        this.parseHeader();
        this.state = 'content';
        this.content = '';
        this.detok = new StreamingDetokenizer(this.tokenizer, { skipSpecial: true });
      } else if (token === TOKEN.end || token === TOKEN.return || token === TOKEN.call) {
        out.push({ type: 'malformed', reason: 'message without content' });
        this.state = 'between';
      } else {
        this.header += this.tokenizer.decode([token]);
      }
      return out;
    }
    if (token === TOKEN.end || token === TOKEN.return || token === TOKEN.call) {
      const tail = this.detok.flush();
      if (tail) out.push(this.delta(tail));
      out.push({ type: 'message', channel: this.channel, recipient: this.recipient, content: this.content });
      this.state = 'between';
      return out;
    }
    if (this.tokenizer.isSpecial(token)) return [{ type: 'malformed', reason: `special token ${token} inside content` }];
    const text = this.detok.push(token);
    if (text) out.push(this.delta(text));
    return out;
  }

  private delta(text: string): ParsedEvent {
    this.content += text;
    return { type: 'delta', channel: this.channel, recipient: this.recipient, delta: text };
  }

  finish(): ParsedEvent[] {
    if (this.state === 'content') {
      const out: ParsedEvent[] = [];
      const tail = this.detok.flush();
      if (tail) out.push(this.delta(tail));
      // A message cut off (max_tokens): keep what came; a tool call cut off is not a call.
      if (!this.recipient) out.push({ type: 'message', channel: this.channel, content: this.content });
      return out;
    }
    if (this.state === 'header' && this.header !== '') {
      // Cut off before <|message|>: the header text is all there is; report it as content, flagged.
      return [
        { type: 'malformed', reason: 'message cut off in its header' },
        { type: 'delta', delta: this.header },
        { type: 'message', content: this.header },
      ];
    }
    return [];
  }
}

export function createHarmonyParser(tokenizer: HarmonyTokenizer): TokenParser {
  return new AssistantOutputParser(tokenizer);
}
