// The serving benchmark's prompts, as vLLM's `bench serve` builds them: `random` (random token ids of the
// regular vocabulary, decoded to text, lengths drawn from [len * (1 - range), len * (1 + range)]) and `sharegpt`
// (the first human turn of each conversation, the reply's token count as the output length, vLLM's filters).
import { readFileSync } from 'node:fs';
import { FIRST_SPECIAL_ID, HarmonyTokenizer } from '../tokenizer/tokenizer.js';

export interface BenchRequest {
  prompt: string;
  /** Prompt tokens by our tokenizer (the server's count is used when it reports usage). */
  promptLen: number;
  outputLen: number;
}

/** A seeded generator (mulberry32), so the same --seed gives the same prompts. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface RandomOptions {
  numPrompts: number;
  inputLen: number;
  outputLen: number;
  rangeRatio: number;
  seed: number;
}

export function randomDataset(o: RandomOptions, tokenizer = new HarmonyTokenizer()): BenchRequest[] {
  const rand = seededRandom(o.seed);
  const draw = (len: number) => {
    const lo = Math.max(1, Math.floor(len * (1 - o.rangeRatio)));
    const hi = Math.max(lo, Math.ceil(len * (1 + o.rangeRatio)));
    return lo + Math.floor(rand() * (hi - lo + 1));
  };
  return Array.from({ length: o.numPrompts }, () => {
    const inputLen = draw(o.inputLen);
    const ids = Array.from({ length: inputLen }, () => Math.floor(rand() * FIRST_SPECIAL_ID));
    // Decoded text re-tokenizes to a different count; trim (or top up) once so the prompt is about inputLen tokens.
    let again = tokenizer.encode(tokenizer.decode(ids));
    while (again.length < inputLen) again = again.concat(again.slice(0, inputLen - again.length));
    const prompt = tokenizer.decode(again.slice(0, inputLen));
    return { prompt, promptLen: inputLen, outputLen: draw(o.outputLen) };
  });
}

interface ShareGptEntry {
  conversations?: { from?: string; value?: string }[];
}

export function sharegptDataset(path: string, numPrompts: number, seed: number, outputLen?: number, tokenizer = new HarmonyTokenizer()): BenchRequest[] {
  const data = JSON.parse(readFileSync(path, 'utf8')) as ShareGptEntry[];
  if (!Array.isArray(data)) throw new Error(`${path}: expected a JSON array of ShareGPT conversations`);
  const pairs = data.filter((d) => (d.conversations?.length ?? 0) >= 2).map((d) => [d.conversations![0].value ?? '', d.conversations![1].value ?? '']);
  const rand = seededRandom(seed);
  for (let i = pairs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [pairs[i], pairs[j]] = [pairs[j], pairs[i]];
  }
  const out: BenchRequest[] = [];
  for (const [prompt, reply] of pairs) {
    if (out.length >= numPrompts) break;
    const promptLen = tokenizer.encode(prompt).length;
    const replyLen = outputLen ?? tokenizer.encode(reply).length;
    // vLLM's filters: too short to time, or too long for the common context.
    if (promptLen < 4 || replyLen < 4 || promptLen > 1024 || promptLen + replyLen > 2048) continue;
    out.push({ prompt, promptLen, outputLen: replyLen });
  }
  if (out.length < numPrompts) throw new Error(`${path}: only ${out.length} usable conversations for ${numPrompts} prompts`);
  return out;
}
