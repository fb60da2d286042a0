// The step contract of src/native.ts on the CPU backend (tiny model; two cases on CUDA too, with a GPU): a step
// submitted before the one before it resolved, its tokens named as "the previous step's row r" (and counted in
// its penalties with countPrevious), gives exactly what the unpipelined run gives; bad references are clear
// errors at the call; close() lets the steps already accepted run.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GreedySequence, loadModel, type LoadedModel } from '../src/model/load.js';
import { ensureTinyModel } from '../src/model/tiny.js';
import { loadAddon, type NativeStepInput } from '../src/native.js';
import { StepNoise } from '../src/sampling/rng.js';
import { resolveSampling } from '../src/sampling/params.js';
import { SequenceSampler } from '../src/sampling/sampler.js';
import { gpuCount } from './helpers/gpu.js';
import { samplingOf } from './helpers/sampling.js';

const V = 201088;
const PROMPT = [200006, 1428, 200008, 3086, 17, 999, 4242];

let model: LoadedModel;
let cpuModel: LoadedModel;
beforeAll(async () => {
  model = cpuModel = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', maxSeqs: 8, blockSize: 16, numBlocks: 64 });
}, 120_000);
afterAll(async () => {
  await model?.close();
});

/** Two sequences (blocks 0 and 1 / 2 and 3): the prompt's prefill, or one decode token each at `pos`. */
function twoSeqs(tokens: number[], pos: number, samplers: SequenceSampler[]): NativeStepInput {
  const n = tokens.length / 2;
  return {
    tokens: Int32Array.from(tokens),
    positions: Int32Array.from(tokens, (_, i) => pos + (i % n)),
    seqLens: Int32Array.of(n, n),
    blockTables: Int32Array.of(0, 1, 2, 3),
    maxBlocksPerSeq: 2,
    topK: 5,
    sampling: samplingOf(samplers),
  };
}

const BACKENDS: ('cpu' | 'cuda')[] = gpuCount() > 0 ? ['cpu', 'cuda'] : ['cpu'];

/** The shared CPU model, or a CUDA one of the same shape (freed by `release`). */
async function modelOn(backend: 'cpu' | 'cuda'): Promise<LoadedModel> {
  return backend === 'cpu' ? cpuModel : loadModel({ model: await ensureTinyModel(), backend: 'cuda', maxSeqs: 8, blockSize: 16, numBlocks: 64 });
}
async function release(m: LoadedModel): Promise<void> {
  if (m !== cpuModel) await m.close();
}

/** The unpipelined run of two sequences: the prefill, then `steps` steps whose tokens are the draws read back. */
async function plainRun(m: LoadedModel, samplers: SequenceSampler[], steps: number) {
  let out = await m.step(twoSeqs([...PROMPT, ...PROMPT], 0, samplers));
  const outs = [out];
  for (let i = 0; i < steps; i++) {
    const toks = [out.sampled![0], out.sampled![1]];
    samplers.forEach((s, j) => s.accept(toks[j]));
    out = await m.step(twoSeqs(toks, PROMPT.length + i, samplers));
    outs.push(out);
  }
  return outs;
}

describe('pipelined steps (previous-step tokens)', () => {
  it.each(BACKENDS)('GreedySequence.decode gives the tokens of append() one step at a time (%s)', async (backend) => {
    const model = await modelOn(backend);
    const steps = 12;
    const plain = new GreedySequence(model, 64);
    let tok = await plain.append(Int32Array.from(PROMPT));
    const expected: number[] = [];
    for (let i = 0; i < steps; i++) expected.push((tok = await plain.append(Int32Array.of(tok))));
    const piped = new GreedySequence(model, 64);
    await piped.append(Int32Array.from(PROMPT));
    const got: number[] = [];
    for await (const t of piped.decode(steps)) got.push(t);
    expect(got).toEqual(expected);
    await release(model);
  });

  it('seeded draws and logprobs are bit-identical, pipelined or not', async () => {
    const mk = () => [0, 1].map((s) => new SequenceSampler(resolveSampling({ temperature: 0.8, top_p: 0.9, seed: 11 + s, logprobs: true, top_logprobs: 5 }, V, () => 0), PROMPT));
    const steps = 6;
    const plain = await plainRun(model, mk(), steps);
    // pipelined: every step submitted before the one before it resolved, its tokens named as rows 0 and 1
    const b = mk();
    const pending = [model.step(twoSeqs([...PROMPT, ...PROMPT], 0, b))];
    for (let i = 0; i < steps; i++) {
      b.forEach((s, j) => s.accept(plain[i].sampled![j])); // the noise keys of the next step (no penalties)
      pending.push(model.step(twoSeqs([-1, -2], PROMPT.length + i, b)));
    }
    const piped = await Promise.all(pending);
    for (let i = 0; i <= steps; i++) {
      expect(Array.from(piped[i].sampled!)).toEqual(Array.from(plain[i].sampled!));
      expect(Array.from(piped[i].sampledLogit!)).toEqual(Array.from(plain[i].sampledLogit!));
      expect(Array.from(piped[i].logsumexp)).toEqual(Array.from(plain[i].logsumexp));
      expect(Array.from(piped[i].topIds)).toEqual(Array.from(plain[i].topIds));
      expect(Array.from(piped[i].topLogits)).toEqual(Array.from(plain[i].topLogits));
    }
  });

  it.each(BACKENDS)('penalized draws count the token in flight (countPrevious): bit-identical to the host knowing it (%s)', async (backend) => {
    const model = await modelOn(backend);
    // logit_bias makes token 99 likely every step, the penalties take it back: the counts change the draws
    const params = { temperature: 0.8, seed: 21, logit_bias: { 99: 20 }, frequency_penalty: 2, presence_penalty: 1, repetition_penalty: 1.3, logprobs: true, top_logprobs: 3 };
    const mk = () => [0, 1].map((s) => new SequenceSampler(resolveSampling({ ...params, seed: 21 + s }, V, () => 0), PROMPT));
    const steps = 8;
    const plain = await plainRun(model, mk(), steps);
    expect(plain.flatMap((o) => Array.from(o.sampled!)).filter((t) => t === 99).length).toBeGreaterThan(2);
    // pipelined: step i + 1's entries hold the tokens up to step i - 1; step i's is counted by the addon
    const b = mk();
    const pending = [model.step(twoSeqs([...PROMPT, ...PROMPT], 0, b))];
    for (let i = 0; i < steps; i++) {
      if (i > 0) b.forEach((s, j) => s.accept(plain[i - 1].sampled![j]));
      const input = twoSeqs([-1, -2], PROMPT.length + i, b);
      input.sampling!.countPrevious = Uint8Array.of(1, 1);
      // the noise of the step after step i's token (not accepted here)
      b.forEach((s, j) => {
        const noise = new StepNoise(s.params.seed, i + 1);
        input.sampling!.noiseKeys[2 * j] = noise.k1;
        input.sampling!.noiseKeys[2 * j + 1] = noise.k2;
      });
      pending.push(model.step(input));
    }
    const piped = await Promise.all(pending);
    for (let i = 0; i <= steps; i++) {
      expect(Array.from(piped[i].sampled!)).toEqual(Array.from(plain[i].sampled!));
      expect(Array.from(piped[i].sampledLogit!)).toEqual(Array.from(plain[i].sampledLogit!));
    }
    await release(model);
  });

  it('countPrevious on a row without a previous-step token, or not sampled, is a clear error', async () => {
    const s = new SequenceSampler(resolveSampling({ temperature: 1, seed: 1, presence_penalty: 1 }, V, () => 0), PROMPT);
    await model.step(twoSeqs([...PROMPT, ...PROMPT], 0, [s, s]));
    const known = twoSeqs([5, -2], PROMPT.length, [s, s]);
    known.sampling!.countPrevious = Uint8Array.of(1, 0);
    await expect(model.step(known)).rejects.toThrow(/countPrevious: sequence 0 is flagged, but its token is not one previous-step token/);
    await model.step(twoSeqs([...PROMPT, ...PROMPT], 0, [s, s]));
    const unsampled = twoSeqs([-1, -2], PROMPT.length, [s, s]);
    unsampled.sampling!.countPrevious = Uint8Array.of(0, 1);
    unsampled.sampling!.mode[1] = 0;
    await expect(model.step(unsampled)).rejects.toThrow(/countPrevious: sequence 1 is flagged, but it is not sampled in the step/);
    const sampling = { ...samplingOf([s]), countPrevious: Uint8Array.of(1) };
    expect(() => loadAddon().sampleLogits(new Float32Array(V), V, sampling)).toThrow(/names a previous step, and there is none/);
  });

  it('bad references and arrays are clear errors at the call, and leave nothing to name', async () => {
    const fresh = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', maxSeqs: 2, blockSize: 16, numBlocks: 4 });
    try {
      const decode = (token: number): NativeStepInput => ({ tokens: Int32Array.of(token), positions: Int32Array.of(7), seqLens: Int32Array.of(1), blockTables: Int32Array.of(0), maxBlocksPerSeq: 1 });
      await expect(fresh.step(decode(-1))).rejects.toThrow(/previous step's row 0, but no step was accepted just before it/);
      await fresh.step({ ...decode(5), positions: Int32Array.of(0) });
      await expect(fresh.step(decode(-2))).rejects.toThrow(/token 0 is -2, the previous step's row 1, but that step has 1 rows/);
      // the rejected step left no previous step
      await expect(fresh.step(decode(-1))).rejects.toThrow(/no step was accepted just before it/);
      await expect(fresh.step({ ...decode(5), tokens: Float32Array.of(5) as never })).rejects.toThrow(/tokens must be an Int32Array/);
      await expect(fresh.step({ ...decode(V), positions: Int32Array.of(0) })).rejects.toThrow(/outside the vocabulary/);
    } finally {
      fresh.close();
    }
  });

  it('close() lets the accepted steps run, then refuses more', async () => {
    const m = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', maxSeqs: 2, blockSize: 16, numBlocks: 4 });
    const seq = new GreedySequence(m, 32);
    const first = seq.append(Int32Array.from(PROMPT));
    const rest = seq.decode(3)[Symbol.asyncIterator]();
    const next = rest.next(); // queues two decode steps behind the prefill
    await new Promise((r) => setTimeout(r, 0));
    m.close();
    await expect(first).resolves.toBeTypeOf('number');
    await expect(next).resolves.toEqual({ done: false, value: expect.any(Number) });
    await expect(rest.next()).resolves.toEqual({ done: false, value: expect.any(Number) });
    await expect(rest.next()).rejects.toThrow(/model is closed/); // the third decode step came after close()
    await expect(m.step({ tokens: Int32Array.of(1), positions: Int32Array.of(0), seqLens: Int32Array.of(1), blockTables: Int32Array.of(0), maxBlocksPerSeq: 1 })).rejects.toThrow(/closed/);
  });

  // A pipelined caller can leave a step queued ahead when it closes: the memory comes back only after that step,
  // so close() resolves then (and a second load waits for it: on the GPU, two full models do not fit at once).
  it('close() resolves once the steps queued ahead have run and the backend is freed', async () => {
    const m = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', maxSeqs: 2, blockSize: 16, numBlocks: 4 });
    const seq = new GreedySequence(m, 32);
    const settled: string[] = [];
    const first = seq.append(Int32Array.from(PROMPT)).then(() => settled.push('prefill'));
    const ahead = seq.decode(2)[Symbol.asyncIterator]().next().then(() => settled.push('decode'));
    await new Promise((r) => setTimeout(r, 0));
    const closing = m.close();
    expect(m.close()).toBe(closing); // the same promise
    await closing;
    expect(settled).toEqual(['prefill', 'decode']); // both delivered before the backend was freed
    await Promise.all([first, ahead]);
    const again = await loadModel({ model: await ensureTinyModel(), backend: 'cpu', maxSeqs: 2, blockSize: 16, numBlocks: 4 });
    await again.close();
  });
});
