// Harmony rendering: messages to the exact text and token ids gpt-oss was trained on. The layout follows
// OpenAI's harmony library (the authority), and is tested byte-exact against its expected outputs.
//
// Rendering produces segments (text, or one special token) rather than one string, because the authority
// tokenizes each piece on its own (the role, ` to=...`, the channel name, the content...): BPE over the joined
// text could merge across piece boundaries and give different ids.

import { toHarmonyMessages } from './request.js';
import type { ChatRequest, HarmonyMessage } from './types.js';
import { SPECIAL_TOKENS, type HarmonyTokenizer, type SpecialTokenName } from '../tokenizer/tokenizer.js';

export type Segment = { text: string } | { special: SpecialTokenName };

/** One message: `<|start|>{header}<|message|>{content}` then `<|call|>` (assistant to a recipient) or `<|end|>`. */
export function renderMessageSegments(m: HarmonyMessage): Segment[] {
  const out: Segment[] = [{ special: '<|start|>' }, { text: m.author }];
  if (m.recipient !== undefined && m.recipient !== 'all') out.push({ text: ` to=${m.recipient}` });
  if (m.channel !== undefined) out.push({ special: '<|channel|>' }, { text: m.channel });
  if (m.contentType !== undefined) {
    if (m.contentType.startsWith('<|constrain|>')) {
      const rest = m.contentType.slice('<|constrain|>'.length);
      out.push({ text: ' ' }, { special: '<|constrain|>' });
      if (rest) out.push({ text: rest });
    } else {
      out.push({ text: ` ${m.contentType}` });
    }
  }
  out.push({ special: '<|message|>' }, { text: m.content });
  const isAssistant = m.author === 'assistant';
  out.push({ special: isAssistant && m.recipient !== undefined ? '<|call|>' : '<|end|>' });
  return out;
}

export interface RenderMessagesOptions {
  /** Append `<|start|>assistant` for the model to continue. Default true. */
  addGenerationPrompt?: boolean;
  /**
   * The harmony library's own CoT rule (its auto_drop_analysis): when the last assistant message is on the
   * final channel, drop analysis messages that come before the first final message. Default false: requests
   * are converted with the per-turn rule in request.ts instead (see docs/harmony.md).
   */
  autoDropAnalysis?: boolean;
}

/** Harmony messages to segments. */
export function renderMessagesSegments(messages: HarmonyMessage[], opts: RenderMessagesOptions = {}): Segment[] {
  let kept = messages;
  if (opts.autoDropAnalysis) {
    const lastAssistant = [...messages].reverse().find((m) => m.author === 'assistant');
    const firstFinal = messages.findIndex((m) => m.channel === 'final');
    if (lastAssistant?.channel === 'final' && firstFinal >= 0) {
      kept = messages.filter((m, i) => !(i < firstFinal && m.channel === 'analysis'));
    }
  }
  const out: Segment[] = [];
  for (const m of kept) for (const s of renderMessageSegments(m)) out.push(s);
  if (opts.addGenerationPrompt ?? true) out.push({ special: '<|start|>' }, { text: 'assistant' });
  return out;
}

export function segmentsToText(segments: Segment[]): string {
  return segments.map((s) => ('text' in s ? s.text : s.special)).join('');
}

export function segmentsToTokens(segments: Segment[], tokenizer: HarmonyTokenizer): number[] {
  const ids: number[] = [];
  for (const s of segments) {
    if ('special' in s) ids.push(SPECIAL_TOKENS[s.special]);
    // One push per id: spreading a long text's ids into push() overflows the call stack.
    else if (s.text) for (const id of tokenizer.encode(s.text)) ids.push(id);
  }
  return ids;
}

/** Harmony messages to text. */
export function renderMessages(messages: HarmonyMessage[], opts: RenderMessagesOptions = {}): string {
  return segmentsToText(renderMessagesSegments(messages, opts));
}

/** Harmony messages to token ids, each piece tokenized on its own as the authority does. */
export function renderMessagesTokens(messages: HarmonyMessage[], tokenizer: HarmonyTokenizer, opts: RenderMessagesOptions = {}): number[] {
  return segmentsToTokens(renderMessagesSegments(messages, opts), tokenizer);
}

export interface RenderConversationOptions {
  /** Append `<|start|>assistant` for the model to continue. Default true. */
  addGenerationPrompt?: boolean;
}

/**
 * A chat request to the exact harmony text the model is given. Throws RequestError on a bad request.
 */
export function renderConversation(req: ChatRequest, opts: RenderConversationOptions = {}): string {
  const addGenerationPrompt = opts.addGenerationPrompt ?? true;
  return renderMessages(toHarmonyMessages(req, { addGenerationPrompt }), { addGenerationPrompt });
}

/** A chat request to the token ids the model is given. Throws RequestError on a bad request. */
export function renderConversationTokens(req: ChatRequest, tokenizer: HarmonyTokenizer, opts: RenderConversationOptions = {}): number[] {
  const addGenerationPrompt = opts.addGenerationPrompt ?? true;
  return renderMessagesTokens(toHarmonyMessages(req, { addGenerationPrompt }), tokenizer, { addGenerationPrompt });
}
