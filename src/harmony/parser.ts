// Streaming parser of generated harmony tokens: one token in, events out (message start, content deltas, message
// end, tool calls, stop). A small state machine over tokens: expect `<|start|>`, read the header up to
// `<|message|>`, stream content up to `<|end|>` (ends a message only), `<|call|>` or `<|return|>` (end the message
// and generation).
//
// Model output can be malformed. The parser never throws on it: it keeps every message completed before the
// fault, recovers the best it can (a header with no `<|message|>` keeps its text as content, a missing channel is
// assumed, an unterminated message is closed when the next one starts), and reports each fault in `problems`.
// Content is decoded byte-wise, so a UTF-8 character split across tokens is never split across deltas, and bytes
// never leak from one message into the next.

import { HarmonyTokenizer, TOKEN, Utf8Accumulator, incompleteUtf8Tail, isValidTokenId } from '../tokenizer/tokenizer.js';

export type EndToken = 'end' | 'call' | 'return';
export type StopReason = 'return' | 'call' | 'endoftext';
export type ParsedRole = 'system' | 'developer' | 'user' | 'assistant' | 'tool';

export interface ParsedMessage {
  role: ParsedRole;
  /** The role, or a tool's name for a tool's message (`functions.get_weather`). */
  author: string;
  channel?: string;
  recipient?: string;
  contentType?: string;
  content: string;
  /** The token that ended it; null when it was cut off or never terminated. */
  end: EndToken | null;
  /** Set on an assistant message addressed to a tool. */
  toolCall?: ParsedToolCall;
}

export interface ParsedToolCall {
  /** The full recipient, e.g. `functions.get_weather`, `browser.search`, `python`. */
  recipient: string;
  /** The function name without its namespace (`get_weather`); the recipient itself for built-ins. */
  name: string;
  /** The arguments' JSON text (for python: the code). */
  arguments: string;
  /** The parsed arguments when they are a JSON object. */
  parsed?: unknown;
  /** Why the arguments could not be used as a JSON object, when they could not. */
  parseError?: string;
}

export type HarmonyEvent =
  | { type: 'message_start'; index: number; role: ParsedRole; author: string; channel?: string; recipient?: string; contentType?: string }
  | { type: 'content_delta'; index: number; channel?: string; text: string }
  | { type: 'message_end'; index: number; end: EndToken | null; message: ParsedMessage }
  | ({ type: 'tool_call'; index: number } & ParsedToolCall)
  | { type: 'stop'; reason: StopReason };

export interface ParseResult {
  messages: ParsedMessage[];
  malformed: boolean;
  problems: string[];
  /** Events produced by finishing (the end of a cut-off message). */
  events: HarmonyEvent[];
  stopReason: StopReason | null;
}

export interface HarmonyStreamParserOptions {
  /**
   * The role whose header the prompt already opened (`<|start|>assistant` ends every generation prompt), so the
   * first token is the rest of that header. null: the stream starts with `<|start|>`. Default 'assistant'.
   */
  role?: ParsedRole | null;
  /** Function names the request declared; a call to another `functions.*` name is reported as a problem. */
  functionNames?: Iterable<string>;
  /**
   * Keep parsing after a stop token, for parsing a whole completion offline (as the harmony library's parser
   * does). Default false: tokens after `<|return|>`/`<|call|>` are ignored and reported, never turned into
   * messages or tool calls.
   */
  continueAfterStop?: boolean;
  tokenizer?: HarmonyTokenizer;
}

const KNOWN_CHANNELS = new Set(['analysis', 'commentary', 'final']);
const ROLE_WORDS = new Set(['system', 'developer', 'user', 'assistant', 'tool']);
const PLAIN_RECIPIENTS = new Set(['assistant', 'user', 'all']);
const CHANNEL = '<|channel|>';
const CONSTRAIN = '<|constrain|>';
/** A header longer than this, or with a newline, is content the model wrote without `<|message|>`. */
const MAX_HEADER_BYTES = 256;

type HeaderPart = Uint8Array | typeof CHANNEL | typeof CONSTRAIN;

interface Header {
  role: ParsedRole;
  author: string;
  channel?: string;
  recipient?: string;
  contentType?: string;
}

interface OpenMessage extends Header {
  index: number;
  content: string;
  acc: Utf8Accumulator;
}

/** A header string cut into words, `<|channel|>x` and `<|constrain|>x` items, with each word's offset. */
type HeaderItem = { kind: 'word' | 'channel' | 'constrain'; value: string; start: number };

function splitHeader(s: string): HeaderItem[] {
  const items: HeaderItem[] = [];
  let i = 0;
  while (i < s.length) {
    if (/\s/.test(s[i])) {
      i++;
      continue;
    }
    for (const [marker, kind] of [[CHANNEL, 'channel'], [CONSTRAIN, 'constrain']] as const) {
      if (s.startsWith(marker, i)) {
        const start = i;
        i += marker.length;
        let j = i;
        while (j < s.length && !/\s/.test(s[j]) && s[j] !== '<') j++;
        items.push({ kind, value: s.slice(i, j), start });
        i = j;
        break;
      }
    }
    if (i < s.length && !/\s/.test(s[i]) && !s.startsWith(CHANNEL, i) && !s.startsWith(CONSTRAIN, i)) {
      const start = i;
      let j = i;
      while (j < s.length && !/\s/.test(s[j]) && !s.startsWith('<|', j)) j++;
      if (j === i) j = i + 2; // a stray "<|" that starts no marker: one word
      items.push({ kind: 'word', value: s.slice(i, j), start });
      i = j;
    }
  }
  return items;
}

function isToolRecipient(recipient: string | undefined): recipient is string {
  return recipient !== undefined && !PLAIN_RECIPIENTS.has(recipient);
}

export class HarmonyStreamParser {
  private readonly tokenizer: HarmonyTokenizer;
  private readonly functionNames?: Set<string>;
  private readonly continueAfterStop: boolean;
  private state: 'start' | 'header' | 'content' | 'stopped' = 'start';
  private headerRole: ParsedRole | undefined;
  private headerParts: HeaderPart[] = [];
  private headerBytes = 0;
  private headerHasNewline = false;
  private current: OpenMessage | undefined;
  private readonly messages: ParsedMessage[] = [];
  private readonly problems: string[] = [];
  private stopReason: StopReason | null = null;
  private ignoredAfterStop = 0;
  private finished: ParseResult | undefined;

  constructor(opts: HarmonyStreamParserOptions = {}) {
    this.tokenizer = opts.tokenizer ?? new HarmonyTokenizer();
    if (opts.functionNames) this.functionNames = new Set(opts.functionNames);
    this.continueAfterStop = opts.continueAfterStop ?? false;
    const role = opts.role === undefined ? 'assistant' : opts.role;
    if (role !== null) this.openHeader(role);
  }

  /** Messages completed so far. */
  get completed(): readonly ParsedMessage[] {
    return this.messages;
  }

  /** Feeds one generated token; returns the events it caused. Never throws on model output. */
  push(tokenId: number): HarmonyEvent[] {
    const events: HarmonyEvent[] = [];
    if (this.finished) return events;
    if (this.state === 'stopped') {
      if (!this.continueAfterStop) {
        this.ignoredAfterStop++;
        return events;
      }
      this.state = 'start';
    }
    if (!isValidTokenId(tokenId)) {
      this.problem(`invalid token id ${tokenId}`);
      if (this.state === 'content') this.appendText(this.current!.acc.flush() + '\uFFFD', events);
      return events;
    }
    if (!this.tokenizer.isSpecial(tokenId)) {
      this.onText(this.tokenizer.tokenBytes(tokenId), events);
      return events;
    }
    switch (this.state) {
      case 'start':
        this.onSpecialAtStart(tokenId, events);
        break;
      case 'header':
        this.onSpecialInHeader(tokenId, events);
        break;
      case 'content':
        this.onSpecialInContent(tokenId, events);
        break;
    }
    return events;
  }

  /**
   * Ends the stream (the engine stopped: a stop token, max_tokens, a stop string, cancellation). A message still
   * open is kept, with `end: null`; reason 'length' or 'abort' marks that cut as expected rather than malformed.
   * Returns the parse so far; calling it again returns the same.
   */
  finish(reason?: string): ParseResult {
    if (this.finished) return this.finished;
    const events: HarmonyEvent[] = [];
    const expectedCut = reason === 'length' || reason === 'abort';
    if (this.state === 'header') {
      // Cut by max_tokens mid-header: whatever follows the header words may be half a word of the header
      // (`to`, `js`), so nothing is kept. Otherwise text after the header words is content the model wrote.
      const before = this.problems.length;
      const recovered = this.recoverHeader();
      if (recovered.content === '' || expectedCut) this.problems.length = before;
      if (!expectedCut) this.problem('stream ended inside a message header');
      if (recovered.content !== '' && !expectedCut) {
        this.startMessage(recovered.header, events);
        this.appendText(recovered.content, events);
        this.endMessage(null, events);
      }
    } else if (this.state === 'content') {
      if (!expectedCut) this.problem('stream ended inside a message (no <|end|>, <|return|> or <|call|>)');
      this.endMessage(null, events);
    }
    if (this.ignoredAfterStop > 0) this.problem(`${this.ignoredAfterStop} token(s) after <|${this.stopReason}|> ignored`);
    this.finished = {
      messages: this.messages,
      malformed: this.problems.length > 0,
      problems: this.problems,
      events,
      stopReason: this.stopReason,
    };
    this.state = 'stopped';
    return this.finished;
  }

  // ---- states -------------------------------------------------------------------------------------------------

  private onText(bytes: Uint8Array, events: HarmonyEvent[]): void {
    if (this.state === 'start') {
      this.problem('text outside a message (missing <|start|>)');
      this.openHeader(undefined);
    }
    if (this.state === 'header') {
      this.headerParts.push(bytes);
      this.headerBytes += bytes.length;
      if (bytes.includes(0x0a)) this.headerHasNewline = true;
      if (this.headerBytes > MAX_HEADER_BYTES || this.headerHasNewline) {
        // No real header is this long or spans lines: the model wrote content without <|message|>.
        this.problem('message header has no <|message|>; its text is kept as content');
        const recovered = this.recoverHeader(true);
        this.startMessage(recovered.header, events);
        this.appendText(recovered.content, events);
        if (recovered.heldBytes.length) this.appendText(this.current!.acc.push(recovered.heldBytes), events);
      }
      return;
    }
    this.appendText(this.current!.acc.push(bytes), events);
  }

  private onSpecialAtStart(id: number, events: HarmonyEvent[]): void {
    switch (id) {
      case TOKEN.start:
        this.openHeader(undefined);
        return;
      case TOKEN.return:
      case TOKEN.call:
        this.problem(`stray <|${id === TOKEN.return ? 'return' : 'call'}|> outside a message`);
        this.stop(id === TOKEN.return ? 'return' : 'call', events);
        return;
      case TOKEN.endOfText:
        this.stop('endoftext', events);
        return;
      case TOKEN.channel:
        this.problem('<|channel|> without <|start|>assistant before it');
        this.openHeader('assistant');
        this.headerParts.push(CHANNEL);
        return;
      case TOKEN.message:
        this.problem('<|message|> without <|start|> and a header before it');
        this.openHeader('assistant');
        this.closeHeader(events);
        return;
      default:
        this.problem(`stray ${this.tokenizer.decode([id])} between messages ignored`);
    }
  }

  private onSpecialInHeader(id: number, events: HarmonyEvent[]): void {
    switch (id) {
      case TOKEN.message:
        this.closeHeader(events);
        return;
      case TOKEN.channel:
        this.headerParts.push(CHANNEL);
        return;
      case TOKEN.constrain:
        this.headerParts.push(CONSTRAIN);
        return;
      case TOKEN.end:
      case TOKEN.return:
      case TOKEN.call:
      case TOKEN.endOfText:
      case TOKEN.start: {
        if (this.headerParts.length === 0) {
          // Nothing since <|start|> (or since the prompt's <|start|>assistant): as if between messages.
          this.problem('empty message header');
          this.state = 'start';
          this.onSpecialAtStart(id, events);
          return;
        }
        const before = this.problems.length;
        const recovered = this.recoverHeader();
        if (id === TOKEN.start && recovered.content === '') {
          this.problems.length = before;
          this.problem('message header interrupted by <|start|>; dropped');
          this.openHeader(undefined);
          return;
        }
        // The header never reached <|message|>: keep what it has; any text after the header words is content.
        this.problems.splice(before, 0, 'message header has no <|message|>; its text is kept as content');
        this.startMessage(recovered.header, events);
        this.appendText(recovered.content, events);
        this.onSpecialInContent(id, events, true);
        return;
      }
      default:
        this.problem(`unexpected ${this.tokenizer.decode([id])} in a message header ignored`);
    }
  }

  private onSpecialInContent(id: number, events: HarmonyEvent[], afterRecovery = false): void {
    const m = this.current!;
    switch (id) {
      case TOKEN.end:
        this.endMessage('end', events);
        return;
      case TOKEN.return:
        this.endMessage('return', events);
        this.stop('return', events);
        return;
      case TOKEN.call:
        if (!isToolRecipient(m.recipient)) this.problem(`<|call|> ends message ${m.index}, which has no tool recipient`);
        this.endMessage('call', events);
        this.stop('call', events);
        return;
      case TOKEN.endOfText:
        if (!afterRecovery) this.problem(`message ${m.index} not terminated before <|endoftext|>`);
        this.endMessage(null, events);
        this.stop('endoftext', events);
        return;
      case TOKEN.start:
        if (!afterRecovery) this.problem(`message ${m.index} not terminated before <|start|>`);
        this.endMessage(null, events);
        this.openHeader(undefined);
        return;
      case TOKEN.channel:
        // Typically `...analysis text<|channel|>final<|message|>...`: the model skipped `<|end|><|start|>assistant`.
        this.problem(`message ${m.index} not terminated before <|channel|>`);
        this.endMessage(null, events);
        this.openHeader(m.role);
        this.headerParts.push(CHANNEL);
        return;
      default:
        this.problem(`unexpected ${this.tokenizer.decode([id])} in message ${m.index} content ignored`);
    }
  }

  // ---- headers ------------------------------------------------------------------------------------------------

  private openHeader(role: ParsedRole | undefined): void {
    this.state = 'header';
    this.headerRole = role;
    this.headerParts = [];
    this.headerBytes = 0;
    this.headerHasNewline = false;
  }

  /** The header as text, `<|channel|>`/`<|constrain|>` written out; optionally holding back an incomplete tail. */
  private headerString(holdTail: boolean): { text: string; held: Uint8Array } {
    let text = '';
    let held: Uint8Array = new Uint8Array(0);
    const decoder = new TextDecoder();
    let run: Uint8Array[] = [];
    const flushRun = (isLast: boolean) => {
      if (!run.length) return;
      const n = run.reduce((a, b) => a + b.length, 0);
      let bytes = new Uint8Array(n);
      let o = 0;
      for (const b of run) {
        bytes.set(b, o);
        o += b.length;
      }
      if (isLast && holdTail) {
        const k = incompleteUtf8Tail(bytes);
        held = bytes.slice(n - k);
        bytes = bytes.subarray(0, n - k);
      }
      text += decoder.decode(bytes);
      run = [];
    };
    for (const p of this.headerParts) {
      if (typeof p === 'string') {
        flushRun(false);
        text += p;
      } else run.push(p);
    }
    flushRun(true);
    return { text, held };
  }

  /** The header's role or author from its first word; returns the items left after it. */
  private readRole(items: HeaderItem[]): { role: ParsedRole; author: string; rest: HeaderItem[] } {
    if (this.headerRole !== undefined) {
      const rest = items[0]?.kind === 'word' && items[0].value === this.headerRole ? items.slice(1) : items;
      return { role: this.headerRole, author: this.headerRole, rest };
    }
    const first = items[0];
    if (!first || first.kind !== 'word' || first.value.startsWith('to=')) {
      this.problem('message header has no role; assumed assistant');
      return { role: 'assistant', author: 'assistant', rest: items };
    }
    if (ROLE_WORDS.has(first.value)) return { role: first.value as ParsedRole, author: first.value, rest: items.slice(1) };
    // Any other author is a tool answering (`functions.get_weather`, `browser.search`).
    return { role: 'tool', author: first.value, rest: items.slice(1) };
  }

  /** Parses a complete header (it ended with <|message|>) and opens its message. */
  private closeHeader(events: HarmonyEvent[]): void {
    const { text } = this.headerString(false);
    const { role, author, rest } = this.readRole(splitHeader(text));
    const header: Header = { role, author };
    for (const item of rest) {
      if (item.kind === 'channel') {
        if (header.channel === undefined) header.channel = item.value;
        else this.problem(`several <|channel|> in one header (${header.channel}, ${item.value}); kept ${header.channel}`);
      } else if (item.kind === 'constrain') {
        if (header.contentType === undefined) header.contentType = CONSTRAIN + item.value;
        else this.problem(`several content types in one header; kept ${header.contentType}`);
      } else if (item.value.startsWith('to=')) {
        const r = item.value.slice(3);
        if (header.recipient === undefined) header.recipient = r;
        else if (r === header.recipient) this.problem(`duplicated to=${r} in a header`);
        else this.problem(`conflicting recipients in one header (to=${header.recipient}, to=${r}); kept ${header.recipient}`);
      } else if (header.contentType === undefined && (header.channel !== undefined || header.recipient !== undefined)) {
        header.contentType = item.value; // ` json`, ` code`
      } else {
        this.problem(`unexpected ${JSON.stringify(item.value)} in a message header ignored`);
      }
    }
    this.checkHeader(header);
    this.startMessage(header, events);
  }

  /** Best-effort header for text that never reached <|message|>: header words first, the rest is content. */
  private recoverHeader(holdTail = false): { header: Header; content: string; heldBytes: Uint8Array } {
    const { text, held } = this.headerString(holdTail);
    const { role, author, rest } = this.readRole(splitHeader(text));
    const header: Header = { role, author };
    let contentStart = text.length;
    for (const item of rest) {
      if (item.kind === 'channel' && header.channel === undefined) header.channel = item.value;
      else if (item.kind === 'constrain' && header.contentType === undefined) header.contentType = CONSTRAIN + item.value;
      else if (item.kind === 'word' && item.value.startsWith('to=') && header.recipient === undefined) header.recipient = item.value.slice(3);
      else {
        contentStart = item.start;
        break;
      }
    }
    this.checkHeader(header);
    return { header, content: text.slice(contentStart), heldBytes: held };
  }

  /** Fills in a missing channel and reports unknown channels and recipients. */
  private checkHeader(h: Header): void {
    if (h.channel === undefined && h.role === 'assistant') {
      h.channel = isToolRecipient(h.recipient) ? 'commentary' : 'final';
      this.problem(`message header has no <|channel|>; assumed ${h.channel}`);
    } else if (h.channel !== undefined && !KNOWN_CHANNELS.has(h.channel)) {
      this.problem(`unknown channel ${JSON.stringify(h.channel)}`);
    }
    const r = h.recipient;
    if (r === undefined) return;
    if (r === '') {
      this.problem('empty to= in a message header');
      h.recipient = undefined;
    } else if (r.startsWith('functions.')) {
      const name = r.slice('functions.'.length);
      if (name === '') this.problem('to=functions. names no function');
      else if (this.functionNames && !this.functionNames.has(name)) this.problem(`call to unknown function ${JSON.stringify(name)}`);
    } else if (!(PLAIN_RECIPIENTS.has(r) || r === 'python' || r.startsWith('browser.') || r.startsWith('container.'))) {
      this.problem(`unknown recipient ${JSON.stringify(r)}`);
    }
  }

  // ---- messages -----------------------------------------------------------------------------------------------

  private startMessage(h: Header, events: HarmonyEvent[]): void {
    const index = this.messages.length;
    this.current = { ...h, index, content: '', acc: new Utf8Accumulator() };
    this.state = 'content';
    const ev: HarmonyEvent = { type: 'message_start', index, role: h.role, author: h.author };
    if (h.channel !== undefined) ev.channel = h.channel;
    if (h.recipient !== undefined) ev.recipient = h.recipient;
    if (h.contentType !== undefined) ev.contentType = h.contentType;
    events.push(ev);
  }

  private appendText(text: string, events: HarmonyEvent[]): void {
    if (!text) return;
    const m = this.current!;
    m.content += text;
    const ev: HarmonyEvent = { type: 'content_delta', index: m.index, text };
    if (m.channel !== undefined) ev.channel = m.channel;
    events.push(ev);
  }

  private endMessage(end: EndToken | null, events: HarmonyEvent[]): void {
    const m = this.current!;
    const tail = m.acc.flush();
    if (tail) {
      this.problem(`message ${m.index} ends inside a UTF-8 character`);
      this.appendText(tail, events);
    }
    const message: ParsedMessage = { role: m.role, author: m.author, content: m.content, end };
    if (m.channel !== undefined) message.channel = m.channel;
    if (m.recipient !== undefined) message.recipient = m.recipient;
    if (m.contentType !== undefined) message.contentType = m.contentType;
    const isCall = m.role === 'assistant' && isToolRecipient(m.recipient) && end !== null;
    if (isCall) {
      if (end !== 'call') this.problem(`tool call in message ${m.index} ended with <|${end}|> instead of <|call|>`);
      message.toolCall = this.toolCall(m.recipient!, m.content, m.contentType, m.index);
    }
    this.messages.push(message);
    this.current = undefined;
    this.state = 'start';
    events.push({ type: 'message_end', index: m.index, end, message });
    if (message.toolCall) events.push({ type: 'tool_call', index: m.index, ...message.toolCall });
  }

  private toolCall(recipient: string, content: string, contentType: string | undefined, index: number): ParsedToolCall {
    const name = recipient.startsWith('functions.') ? recipient.slice('functions.'.length) : recipient;
    const call: ParsedToolCall = { recipient, name, arguments: content };
    if (recipient === 'python') return call; // its "arguments" are code
    const trimmed = content.trim();
    if (trimmed === '') {
      call.arguments = '{}';
      call.parsed = {};
      return call;
    }
    let value: unknown;
    try {
      value = JSON.parse(trimmed);
    } catch (e) {
      call.parseError = `not valid JSON: ${(e as Error).message}`;
      this.problem(`tool call arguments in message ${index} are ${call.parseError}`);
      return call;
    }
    if (Array.isArray(value) && value.length === 1 && typeof value[0] === 'object' && value[0] !== null && !Array.isArray(value[0])) {
      this.problem(`tool call arguments in message ${index} came wrapped in an array; unwrapped`);
      call.parsed = value[0];
      call.arguments = JSON.stringify(value[0]);
    } else if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
      call.parsed = value;
    } else {
      call.parseError = `JSON ${Array.isArray(value) ? 'array' : typeof value}, not an object`;
      this.problem(`tool call arguments in message ${index} are a ${call.parseError}`);
    }
    return call;
  }

  private stop(reason: StopReason, events: HarmonyEvent[]): void {
    this.stopReason = reason;
    this.state = 'stopped';
    events.push({ type: 'stop', reason });
  }

  private problem(p: string): void {
    this.problems.push(p);
  }
}
