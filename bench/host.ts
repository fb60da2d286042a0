// Host-side cost per token of a step, beside the GPU step it must stay well under: tokenizer encode, streaming
// detokenize, the harmony parser per token, the sampler's TypeScript work for a step of 256 sequences (plan, the
// step's sampling arrays, accepting the device's tokens), and request rendering. benchmark.js (`benchmark`)
// times each function with its own statistics (mean, relative margin of error, samples). Then the host gap
// between model steps, which batch-1 decode pays on top of the device's step: one greedy sequence of the tiny model
// on the CPU backend, one step per token awaited in turn (append) and pipelined (decode: one step queued ahead),
// as the addon's HARMONIUM_PROFILE=2 line reports it (the backend's idle time between steps and where it goes).
//
//   node node_modules/vite-node/vite-node.mjs bench/host.ts [--combos] [gap]     (no GPU needed; --combos: also
//   the sampler's step per issue-9 combination at 1 and 256 sequences; gap: the host gap only; HOST_GAP_STEPS=32;
//   the CPU backend runs on one thread, so the host's own thread is not starved of a core)
import Benchmark from 'benchmark';
import { GreedySequence, loadModel } from '../src/model/load.js';
import { ensureTinyModel } from '../src/model/tiny.js';
import { SamplingBatch } from '../src/sampling/device.js';
import { renderConversationTokens } from '../src/harmony/render.js';
import { HarmonyStreamParser } from '../src/harmony/parser.js';
import { resolveSampling, type SamplingParams } from '../src/sampling/params.js';
import { SequenceSampler, type LogitsRow } from '../src/sampling/sampler.js';
import { HarmonyTokenizer, StreamingDetokenizer, VOCAB_SIZE } from '../src/tokenizer/tokenizer.js';

const tokenizer = new HarmonyTokenizer();
const paragraph =
  'The quick brown fox jumps over the lazy dog. Harmonium streams tokens from a native step; the host turns them ' +
  'into text, parses the harmony channels and decides what the next step must sample. 1234567890 ÄÖÜ こんにちは 🎉\n';
const text = paragraph.repeat(8);
const ids = tokenizer.encode(text);
const reply = tokenizer.encode('<|channel|>analysis<|message|>' + text + '<|end|><|start|>assistant<|channel|>final<|message|>' + text + '<|return|>', {
  allowSpecial: true,
});

const request = {
  messages: [
    { role: 'system' as const, content: 'You are a helpful assistant.' },
    { role: 'user' as const, content: text },
    { role: 'assistant' as const, content: paragraph, reasoning: paragraph },
    { role: 'user' as const, content: 'And now in one sentence?' },
  ],
  reasoning_effort: 'low' as const,
};

// The sampler's part of a 256-sequence decode step: every sequence with penalties (the costliest plan).
const SEQS = 256;
const prompt = Array.from({ length: 128 }, (_, i) => (i * 7919) % VOCAB_SIZE);
const samplers = Array.from(
  { length: SEQS },
  (_, s) => new SequenceSampler(resolveSampling({ temperature: 1, top_p: 0.9, presence_penalty: 0.5, frequency_penalty: 0.5, repetition_penalty: 1.1, logprobs: true, top_logprobs: 5, seed: s }, VOCAB_SIZE, () => 0), prompt),
);
const row: LogitsRow = { argmax: 0, maxLogit: 0, logsumexp: 1, topIds: Int32Array.from({ length: 5 }, (_, i) => i), topLogits: new Float32Array(5), sampled: 0, sampledLogit: 0 };
let tokenCounter = 0;
function samplerStep(): void {
  const plans = samplers.map((s) => s.plan());
  let entries = 0;
  for (const s of samplers) entries += s.entries().length;
  const batch = new SamplingBatch(SEQS, entries);
  for (const s of samplers) batch.push(s);
  batch.finish();
  samplers.forEach((s, i) => {
    row.sampled = (tokenCounter++ * 104729) % VOCAB_SIZE; // a new token now and then, as a real output has
    s.sample(row, plans[i]);
  });
}

// The sampler's TypeScript part of a decode step per issue-9 combination at 1 and 256 sequences (plan, the step's
// sampling arrays, accepting the device's token and building the logprobs objects), per sequence.
const COMBOS: [string, SamplingParams][] = [
  ['greedy', { temperature: 0 }],
  ['t=1', { temperature: 1 }],
  ['t=1 top_p=0.9', { temperature: 1, top_p: 0.9 }],
  ['t=0.7 top_k=50 min_p=0.05', { temperature: 0.7, top_k: 50, min_p: 0.05 }],
  ['t=1 pres freq rep', { temperature: 1, presence_penalty: 0.5, frequency_penalty: 0.5, repetition_penalty: 1.1 }],
  ['t=1 logprobs top 5', { temperature: 1, logprobs: true, top_logprobs: 5 }],
];
// Fresh sequences every DECODE steps, so penalty entries stay what a 128-token prompt and reply give.
const DECODE = 128;
function comboStep(n: number, p: SamplingParams): () => void {
  const fresh = () => Array.from({ length: n }, (_, s) => new SequenceSampler(resolveSampling({ ...p, seed: s }, VOCAB_SIZE, () => 0), prompt));
  let seqs = fresh();
  let t = 0;
  return () => {
    if (t % (n * DECODE) === 0) seqs = fresh();
    const plans = seqs.map((s) => s.plan());
    let entries = 0;
    for (const s of seqs) entries += s.entries().length;
    const batch = new SamplingBatch(n, entries);
    for (const s of seqs) batch.push(s);
    batch.finish();
    seqs.forEach((s, i) => {
      row.sampled = (t++ * 104729) % VOCAB_SIZE;
      s.sample(row, plans[i]);
    });
  };
}
function addComboSteps(suite: Benchmark.Suite, perToken: Record<string, number>): void {
  for (const n of [1, 256])
    for (const [name, p] of COMBOS) {
      const label = `sampler TS step ${name}, ${n} seq${n > 1 ? 's' : ''} (per seq)`;
      perToken[label] = n;
      suite.add(label, comboStep(n, p));
    }
}

const perToken: Record<string, number> = {
  'tokenizer encode (per token)': ids.length,
  'detokenize (per token)': reply.length,
  'harmony parser (per token)': reply.length,
  'sampler TS step, 256 seqs (per seq)': SEQS,
  'render request (per prompt token)': renderConversationTokens(request, tokenizer).length,
};

const gapOnly = process.argv.includes('gap');
const suite = new Benchmark.Suite('host');
if (process.argv.includes('--combos')) addComboSteps(suite, perToken);
if (!gapOnly) suite
  .add('tokenizer encode (per token)', () => tokenizer.encode(text))
  .add('detokenize (per token)', () => {
    const d = new StreamingDetokenizer(tokenizer);
    for (const id of reply) d.push(id);
    d.flush();
  })
  .add('harmony parser (per token)', () => {
    const p = new HarmonyStreamParser({ tokenizer });
    for (const id of reply) p.push(id);
  })
  .add('sampler TS step, 256 seqs (per seq)', samplerStep)
  .add('render request (per prompt token)', () => renderConversationTokens(request, tokenizer))
  .on('cycle', (e: Benchmark.Event) => {
    const b = e.target as unknown as Benchmark;
    const n = perToken[b.name!];
    const us = (b.stats.mean * 1e6) / n;
    console.log(`${b.name!.padEnd(38)} ${us.toFixed(3).padStart(9)} us  (${(b.stats.mean * 1e3).toFixed(3)} ms per call of ${n}; ±${b.stats.rme.toFixed(1)}%, ${b.stats.sample.length} samples)`);
  })
  .run();

// The host gap: the addon reads HARMONIUM_PROFILE at load and prints its line when the model is closed.
process.env.HARMONIUM_PROFILE = '2';
const GAP_STEPS = Number(process.env.HOST_GAP_STEPS ?? 32);
for (const mode of ['append (awaited in turn)', 'decode (pipelined)']) {
  const model = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', blockSize: 16, numBlocks: 8, maxSeqs: 1, threads: 1 });
  const seq = new GreedySequence(model, 128);
  let tok = await seq.append(Int32Array.from(ids.slice(0, 16)));
  const t0 = performance.now();
  if (mode.startsWith('append')) for (let i = 0; i < GAP_STEPS; i++) tok = await seq.append(Int32Array.of(tok));
  else for await (tok of seq.decode(GAP_STEPS));
  console.log(`host gap, ${mode}: ${GAP_STEPS} decode steps, ${((performance.now() - t0) / GAP_STEPS).toFixed(3)} ms per step (tiny model, CPU backend)`);
  await model.close();
}
