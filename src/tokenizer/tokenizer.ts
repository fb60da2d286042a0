// The o200k_harmony tokenizer gpt-oss uses: o200k_base BPE for text (ids 0..199997, done by the gpt-tokenizer
// package) plus the harmony special tokens (199998..201087; most of that range is reserved). Also: a check that a
// model directory's tokenizer.json agrees with it, and a streaming detokenizer that works on bytes so a UTF-8
// character split across tokens is never split across output chunks.

import { readFileSync } from 'node:fs';
import { CheckpointError, EngineRequestError } from '../errors.js';
import harmonyEncoding from 'gpt-tokenizer/encoding/o200k_harmony';
import bpeRanks from 'gpt-tokenizer/bpeRanks/o200k_base';

/** The named harmony special tokens and their fixed ids. */
export const SPECIAL_TOKENS = {
  '<|startoftext|>': 199998,
  '<|endoftext|>': 199999,
  '<|return|>': 200002,
  '<|constrain|>': 200003,
  '<|channel|>': 200005,
  '<|start|>': 200006,
  '<|end|>': 200007,
  '<|message|>': 200008,
  '<|call|>': 200012,
  '<|endofprompt|>': 200018,
} as const;

export type SpecialTokenName = keyof typeof SPECIAL_TOKENS;

/** Ids by role, for code that reads better with names (the same ids as SPECIAL_TOKENS, one table to trust). */
export const TOKEN = {
  startOfText: SPECIAL_TOKENS['<|startoftext|>'],
  endOfText: SPECIAL_TOKENS['<|endoftext|>'],
  return: SPECIAL_TOKENS['<|return|>'],
  constrain: SPECIAL_TOKENS['<|constrain|>'],
  channel: SPECIAL_TOKENS['<|channel|>'],
  start: SPECIAL_TOKENS['<|start|>'],
  end: SPECIAL_TOKENS['<|end|>'],
  message: SPECIAL_TOKENS['<|message|>'],
  call: SPECIAL_TOKENS['<|call|>'],
} as const;

/** Rows of the model's embedding / unembedding (o200k_harmony has 201,088 token ids). */
export const VOCAB_SIZE = 201088;
/** Ids below this are o200k_base BPE tokens. */
export const FIRST_SPECIAL_ID = 199998;
/** The ids generation stops at: <|return|>, <|call|>, and <|endoftext|> should it ever appear. */
export const STOP_TOKEN_IDS: readonly number[] = [TOKEN.return, TOKEN.call, TOKEN.endOfText];

const specialNameById = new Map<number, string>(Object.entries(SPECIAL_TOKENS).map(([k, v]) => [v, k]));

/** The text of a special id: its name, or `<|reserved_N|>` for the reserved ones. */
export function specialTokenText(id: number): string {
  return specialNameById.get(id) ?? `<|reserved_${id}|>`;
}

const SPECIAL_TEXT = /<\|[a-z_0-9]+\|>/g;
function specialIdOfText(text: string): number | undefined {
  const named = (SPECIAL_TOKENS as Record<string, number>)[text];
  if (named !== undefined) return named;
  const m = /^<\|reserved_(\d+)\|>$/.exec(text);
  if (!m) return undefined;
  const id = Number(m[1]);
  return id >= FIRST_SPECIAL_ID && id < VOCAB_SIZE && !specialNameById.has(id) ? id : undefined;
}

/** BPE of text with no special tokens: special-token text is encoded as the ordinary characters it is. */
function encodeOrdinary(text: string): number[] {
  return text.length ? harmonyEncoding.encode(text, { disallowedSpecial: new Set() }) : [];
}

const utf8 = new TextEncoder();

/** Bytes of every BPE token, built lazily (the package keeps valid-UTF-8 tokens as strings, others as bytes). */
let bpeBytes: Uint8Array[] | undefined;
function bytesOfBpe(id: number): Uint8Array {
  if (!bpeBytes) bpeBytes = new Array<Uint8Array>(FIRST_SPECIAL_ID);
  let b = bpeBytes[id];
  if (!b) {
    const r = (bpeRanks as readonly (string | readonly number[])[])[id];
    b = typeof r === 'string' ? utf8.encode(r) : Uint8Array.from(r);
    bpeBytes[id] = b;
  }
  return b;
}

export function isValidTokenId(id: number): boolean {
  return Number.isInteger(id) && id >= 0 && id < VOCAB_SIZE;
}

export class HarmonyTokenizer {
  readonly vocabSize = VOCAB_SIZE;
  readonly specialTokens = SPECIAL_TOKENS;
  readonly stopTokenIds = STOP_TOKEN_IDS;

  /**
   * Text to ids. With allowSpecial, special-token text such as `<|start|>` becomes its id; without it (the
   * default, and what the renderer uses for message text) it is encoded as ordinary text.
   */
  encode(text: string, opts: { allowSpecial?: boolean } = {}): number[] {
    if (!opts.allowSpecial) return encodeOrdinary(text);
    // Split on special-token text ourselves: gpt-tokenizer 3.4's allowedSpecial only finds a special token that
    // starts exactly where the previous one ended (its search regex is sticky).
    // Appended one by one: spreading a long text's ids into push() overflows the call stack.
    const ids: number[] = [];
    const append = (part: number[]) => {
      for (const id of part) ids.push(id);
    };
    let last = 0;
    for (const m of text.matchAll(SPECIAL_TEXT)) {
      const id = specialIdOfText(m[0]);
      if (id === undefined) continue;
      if (m.index > last) append(encodeOrdinary(text.slice(last, m.index)));
      ids.push(id);
      last = m.index + m[0].length;
    }
    if (last < text.length) append(encodeOrdinary(text.slice(last)));
    return ids;
  }

  /** Id of a named special token. */
  specialId(name: SpecialTokenName): number {
    return SPECIAL_TOKENS[name];
  }

  isSpecial(id: number): boolean {
    return Number.isInteger(id) && id >= FIRST_SPECIAL_ID && id < VOCAB_SIZE;
  }

  /** The bytes a token stands for (special tokens: the bytes of their text). Throws on an id outside the vocab. */
  tokenBytes(id: number): Uint8Array {
    if (!isValidTokenId(id)) throw new EngineRequestError('invalid_token', `token id ${id} is outside the vocabulary (0..${VOCAB_SIZE - 1})`);
    return id < FIRST_SPECIAL_ID ? bytesOfBpe(id) : utf8.encode(specialTokenText(id));
  }

  /** Ids to text, special tokens written out; bytes that are not valid UTF-8 become U+FFFD. */
  decode(ids: Iterable<number>): string {
    const parts: Uint8Array[] = [];
    let n = 0;
    for (const id of ids) {
      const b = this.tokenBytes(id);
      parts.push(b);
      n += b.length;
    }
    const all = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
      all.set(p, o);
      o += p.length;
    }
    return new TextDecoder().decode(all);
  }
}

/** Length of the UTF-8 sequence a lead byte starts (0 for a continuation or invalid byte). */
function utf8SequenceLength(b: number): number {
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) return 2;
  if (b >= 0xe0 && b <= 0xef) return 3;
  if (b >= 0xf0 && b <= 0xf4) return 4;
  return 0;
}

/**
 * How many bytes at the end of `buf` are the start of a UTF-8 character that more bytes could still complete.
 * Those are held back; anything else (complete, or invalid whatever follows) can be decoded now.
 */
export function incompleteUtf8Tail(buf: Uint8Array): number {
  const n = buf.length;
  for (let k = 1; k <= Math.min(3, n); k++) {
    const b = buf[n - k];
    if ((b & 0xc0) === 0x80) continue; // continuation byte: keep looking for the lead
    const len = utf8SequenceLength(b);
    return len > k ? k : 0;
  }
  return 0;
}

/** Decodes bytes that arrive in pieces, holding back a trailing incomplete UTF-8 character. */
export class Utf8Accumulator {
  private pending = new Uint8Array(0);
  private readonly decoder = new TextDecoder();

  /** Adds bytes, returns the text that is complete now. */
  push(bytes: Uint8Array): string {
    let buf = bytes;
    if (this.pending.length) {
      buf = new Uint8Array(this.pending.length + bytes.length);
      buf.set(this.pending);
      buf.set(bytes, this.pending.length);
    }
    const hold = incompleteUtf8Tail(buf);
    this.pending = buf.slice(buf.length - hold);
    return this.decoder.decode(buf.subarray(0, buf.length - hold));
  }

  /** Bytes still held back. */
  get pendingBytes(): number {
    return this.pending.length;
  }

  /** Emits whatever is held back (an incomplete character becomes U+FFFD) and resets. */
  flush(): string {
    const text = this.pending.length ? this.decoder.decode(this.pending) : '';
    this.pending = new Uint8Array(0);
    return text;
  }
}

/**
 * Token ids to text chunks for streaming output. Never splits a UTF-8 character across chunks: bytes of an
 * incomplete character are held until the token that completes it arrives. Special tokens are written out
 * (`<|end|>`) unless constructed with `{ skipSpecial: true }`.
 */
export class StreamingDetokenizer {
  private readonly acc = new Utf8Accumulator();
  private readonly skipSpecial: boolean;

  constructor(
    private readonly tokenizer: HarmonyTokenizer = new HarmonyTokenizer(),
    opts: { skipSpecial?: boolean } = {},
  ) {
    this.skipSpecial = opts.skipSpecial ?? false;
  }

  push(id: number): string {
    if (this.tokenizer.isSpecial(id)) {
      // A special token cannot complete a character: what is held back is invalid.
      const held = this.acc.flush();
      return this.skipSpecial ? held : held + specialTokenText(id);
    }
    return this.acc.push(this.tokenizer.tokenBytes(id));
  }

  flush(): string {
    return this.acc.flush();
  }
}

/** GPT-2's byte-to-character table, which Hugging Face tokenizer.json files use to spell byte-level BPE tokens. */
function byteLevelAlphabet(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return table;
}

interface TokenizerJson {
  added_tokens?: { id: number; content: string; special?: boolean }[];
  model?: { type?: string; vocab?: Record<string, number> };
}

/**
 * Checks that a model directory's tokenizer.json agrees with o200k_harmony: every named special token at its
 * id, the vocabulary size, and every BPE token's bytes. Throws an Error naming the first disagreements.
 */
export function checkTokenizerJson(path: string, tokenizer: HarmonyTokenizer = new HarmonyTokenizer()): void {
  let json: TokenizerJson;
  try {
    json = JSON.parse(readFileSync(path, 'utf8')) as TokenizerJson;
  } catch (e) {
    throw new CheckpointError(path, 'file', `cannot read tokenizer.json: ${(e as Error).message}`);
  }
  const problems: string[] = [];
  const added = new Map<number, string>();
  for (const t of json.added_tokens ?? []) added.set(t.id, t.content);
  for (const [name, id] of Object.entries(SPECIAL_TOKENS)) {
    if (name === '<|endofprompt|>') continue; // not used by harmony; some exports leave it reserved
    const got = added.get(id);
    if (got !== name) problems.push(`special token id ${id} is ${got === undefined ? 'missing' : JSON.stringify(got)}, expected ${name}`);
  }
  const vocab = json.model?.vocab ?? {};
  let maxId = -1;
  for (const id of Object.values(vocab)) maxId = Math.max(maxId, id);
  for (const id of added.keys()) maxId = Math.max(maxId, id);
  const size = maxId + 1;
  if (size !== tokenizer.vocabSize) problems.push(`vocabulary size is ${size}, expected ${tokenizer.vocabSize}`);
  const alphabet = byteLevelAlphabet();
  let bpeMismatches = 0;
  let bpeCount = 0;
  for (const [spelled, id] of Object.entries(vocab)) {
    if (id >= FIRST_SPECIAL_ID) continue;
    bpeCount++;
    const ours = Array.from(tokenizer.tokenBytes(id), (b) => alphabet[b]).join('');
    if (ours !== spelled && ++bpeMismatches <= 3) problems.push(`BPE token ${id} is ${JSON.stringify(spelled)}, expected ${JSON.stringify(ours)}`);
  }
  if (bpeMismatches > 3) problems.push(`${bpeMismatches} BPE tokens differ in all`);
  if (bpeCount !== FIRST_SPECIAL_ID) problems.push(`${bpeCount} BPE tokens, expected ${FIRST_SPECIAL_ID}`);
  if (problems.length) throw new CheckpointError(path, 'vocabulary', `disagrees with o200k_harmony: ${problems.join('; ')}`);
}
