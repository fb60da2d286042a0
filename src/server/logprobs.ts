// Logprobs in the shapes the APIs use: chat's {content: [{token, logprob, bytes, top_logprobs}]}, Responses'
// output_text logprobs (the same entries), and the legacy completions form (tokens, token_logprobs, top_logprobs
// as token -> logprob maps, text_offset).
import type { GeneratedToken } from '../api/types.js';
import type { HarmonyTokenizer } from '../tokenizer/tokenizer.js';

export interface ChatLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export function chatLogprobs(tokens: readonly GeneratedToken[], tokenizer: HarmonyTokenizer): ChatLogprob[] {
  const entry = (id: number, logprob: number) => ({ token: tokenizer.decode([id]), logprob, bytes: Array.from(tokenizer.tokenBytes(id)) });
  return tokens.map((t) => ({
    ...entry(t.token, t.logprob ?? 0),
    top_logprobs: (t.top_logprobs ?? []).map((a) => entry(a.token, a.logprob)),
  }));
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[] | null;
  text_offset: number[];
}

export function completionLogprobs(tokens: readonly GeneratedToken[], tokenizer: HarmonyTokenizer, offset: number, withTop: boolean): CompletionLogprobs {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: withTop ? [] : null, text_offset: [] };
  for (const t of tokens) {
    out.tokens.push(tokenizer.decode([t.token]));
    out.token_logprobs.push(t.logprob ?? 0);
    out.text_offset.push(offset);
    offset += t.text.length;
    if (out.top_logprobs) out.top_logprobs.push(Object.fromEntries((t.top_logprobs ?? []).map((a) => [tokenizer.decode([a.token]), a.logprob])));
  }
  return out;
}
