import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  HarmonyTokenizer,
  SPECIAL_TOKENS,
  StreamingDetokenizer,
  checkTokenizerJson,
  incompleteUtf8Tail,
  specialTokenText,
} from '../src/tokenizer/tokenizer.js';

const tok = new HarmonyTokenizer();

const MULTILINGUAL = [
  'hello world',
  'Ünïcödé façade naïve — “quotes” and ‘single’ …',
  '日本語のテキストと中文文本，还有한국어 문장。',
  'Emoji: 💖🧑‍🚀👩🏽‍💻🏳️‍🌈 and flags 🇯🇵🇫🇷',
  'العربية: مرحبا بالعالم، كيف حالك؟',
  'עברית ו-Ελληνικά и русский текст',
  'Combining marks: e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353 and हिन्दी देवनागरी',
  'Math ∀x∈ℝ: x² ≥ 0; 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚',
  '   leading and trailing whitespace\n\n\ttabs\r\n',
  'code: `const x = {"a": [1, 2.5e-3, null]};` <div class="x">&amp;</div>',
];

describe('HarmonyTokenizer', () => {
  it('has the o200k_harmony vocabulary size and known ids', () => {
    expect(tok.vocabSize).toBe(201088);
    expect(tok.encode('hello world')).toEqual([24912, 2375]);
  });

  it.each(MULTILINGUAL)('round-trips %j', (text) => {
    const ids = tok.encode(text);
    expect(ids.every((id) => id >= 0 && id < 199998)).toBe(true);
    expect(tok.decode(ids)).toBe(text);
  });

  it('encodes and decodes every named special token', () => {
    for (const [name, id] of Object.entries(SPECIAL_TOKENS)) {
      expect(tok.encode(name, { allowSpecial: true })).toEqual([id]);
      expect(tok.decode([id])).toBe(name);
      expect(tok.isSpecial(id)).toBe(true);
      // Without allowSpecial the same text is ordinary text, never the special id.
      const plain = tok.encode(name);
      expect(plain).not.toContain(id);
      expect(plain.every((t) => !tok.isSpecial(t))).toBe(true);
      expect(tok.decode(plain)).toBe(name);
    }
  });

  it('round-trips every special id, reserved ones included', () => {
    for (let id = 199998; id < 201088; id++) {
      const text = tok.decode([id]);
      expect(text).toBe(specialTokenText(id));
      expect(tok.encode(text, { allowSpecial: true })).toEqual([id]);
    }
    expect(tok.decode([200014])).toBe('<|reserved_200014|>');
    expect(tok.isSpecial(199997)).toBe(false);
    expect(tok.isSpecial(201088)).toBe(false);
  });

  it('round-trips harmony text with special tokens mixed in', () => {
    const text =
      '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"東京 🗼"}<|call|>';
    const ids = tok.encode(text, { allowSpecial: true });
    expect(ids[0]).toBe(200006);
    expect(ids.at(-1)).toBe(200012);
    expect(tok.decode(ids)).toBe(text);
  });

  it('rejects ids outside the vocabulary', () => {
    expect(() => tok.decode([201088])).toThrow(/outside the vocabulary/);
    expect(() => tok.decode([-1])).toThrow(/outside the vocabulary/);
  });
});

describe('StreamingDetokenizer', () => {
  it('never splits a UTF-8 character across chunks', () => {
    for (const text of MULTILINGUAL) {
      const ids = tok.encode(text);
      const det = new StreamingDetokenizer(tok);
      const chunks = ids.map((id) => det.push(id));
      chunks.push(det.flush());
      expect(chunks.join('')).toBe(text);
      for (const c of chunks) expect(c).not.toContain('\uFFFD');
    }
  });

  it('holds back the first byte-token of a multi-token emoji', () => {
    const ids = tok.encode('💖');
    expect(ids.length).toBeGreaterThanOrEqual(2);
    const det = new StreamingDetokenizer(tok);
    expect(det.push(ids[0])).toBe('');
    expect(ids.slice(1).map((id) => det.push(id)).join('')).toBe('💖');
  });

  it('holds back when single-byte tokens spell a character one byte at a time', () => {
    // Each byte of "€" (E2 82 AC) and "😀" (F0 9F 98 80) as its own byte token.
    const byteToken = (b: number) => {
      for (let id = 0; id < 1000; id++) {
        const bytes = tok.tokenBytes(id);
        if (bytes.length === 1 && bytes[0] === b) return id;
      }
      throw new Error(`no single-byte token for ${b}`);
    };
    const det = new StreamingDetokenizer(tok);
    const out = [0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80].map((b) => det.push(byteToken(b)));
    expect(out).toEqual(['', '', '€', '', '', '', '😀']);
  });

  it('writes special tokens out, or skips them', () => {
    const ids = tok.encode('<|channel|>final<|message|>Hi 💖<|return|>', { allowSpecial: true });
    const keep = new StreamingDetokenizer(tok);
    expect(ids.map((id) => keep.push(id)).join('') + keep.flush()).toBe('<|channel|>final<|message|>Hi 💖<|return|>');
    const skip = new StreamingDetokenizer(tok, { skipSpecial: true });
    expect(ids.map((id) => skip.push(id)).join('') + skip.flush()).toBe('finalHi 💖');
  });

  it('turns an incomplete character into U+FFFD at flush or at a special token', () => {
    const det = new StreamingDetokenizer(tok);
    expect(det.push(9552)).toBe(' '); // 9552 is " \xF0\x9F": a space and half an emoji
    expect(det.flush()).toBe('\uFFFD');
    expect(det.push(9552)).toBe(' ');
    expect(det.push(200007)).toBe('\uFFFD<|end|>');
  });

  it('finds incomplete UTF-8 tails', () => {
    expect(incompleteUtf8Tail(new Uint8Array([0x41]))).toBe(0);
    expect(incompleteUtf8Tail(new Uint8Array([0x41, 0xe2]))).toBe(1);
    expect(incompleteUtf8Tail(new Uint8Array([0x41, 0xe2, 0x82]))).toBe(2);
    expect(incompleteUtf8Tail(new Uint8Array([0xe2, 0x82, 0xac]))).toBe(0);
    expect(incompleteUtf8Tail(new Uint8Array([0xf0, 0x9f, 0x98]))).toBe(3);
    expect(incompleteUtf8Tail(new Uint8Array([0x80]))).toBe(0); // stray continuation: invalid, not held
  });
});

describe('checkTokenizerJson', () => {
  // A tokenizer.json written from our own tables, spelled the Hugging Face byte-level way.
  function writeTokenizerJson(mutate?: (j: { added_tokens: { id: number; content: string; special: boolean }[]; model: { type: string; vocab: Record<string, number> } }) => void): string {
    const alphabet: string[] = [];
    let extra = 0;
    for (let b = 0; b < 256; b++) {
      const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      alphabet.push(String.fromCodePoint(printable ? b : 256 + extra++));
    }
    const vocab: Record<string, number> = {};
    for (let id = 0; id < 199998; id++) vocab[Array.from(tok.tokenBytes(id), (b) => alphabet[b]).join('')] = id;
    const added_tokens = [];
    for (let id = 199998; id < 201088; id++) added_tokens.push({ id, content: specialTokenText(id), special: true });
    const j = { added_tokens, model: { type: 'BPE', vocab } };
    mutate?.(j);
    const dir = mkdtempSync(join(tmpdir(), 'hm-tok-'));
    const path = join(dir, 'tokenizer.json');
    writeFileSync(path, JSON.stringify(j));
    return path;
  }

  it('accepts a tokenizer.json that agrees', () => {
    expect(() => checkTokenizerJson(writeTokenizerJson())).not.toThrow();
  });

  it('names a special token that disagrees', () => {
    const path = writeTokenizerJson((j) => {
      j.added_tokens.find((t) => t.id === 200007)!.content = '<|stop|>';
    });
    expect(() => checkTokenizerJson(path)).toThrow(/special token id 200007 is "<\|stop\|>", expected <\|end\|>/);
  });

  it('names a vocabulary size that disagrees', () => {
    const path = writeTokenizerJson((j) => {
      j.added_tokens.push({ id: 201100, content: '<|extra|>', special: true });
    });
    expect(() => checkTokenizerJson(path)).toThrow(/vocabulary size is 201101, expected 201088/);
  });

  it('names a BPE token that disagrees', () => {
    const path = writeTokenizerJson((j) => {
      delete j.model.vocab['hello'];
      j.model.vocab['hellx'] = 24912;
    });
    expect(() => checkTokenizerJson(path)).toThrow(/BPE token 24912 is "hellx", expected "hello"/);
  });
});
