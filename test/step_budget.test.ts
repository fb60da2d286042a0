// The scheduler's step budget and prefill chunk (engine options stepTokens / prefillChunk): defaults, bounds, and
// the steps they give: decoding sequences first, each prompt at most prefillChunk tokens a step, the step at most
// stepTokens. And the native plan's graph buckets and padding (hm_plan_test, the CPU build's test program).
import { describe, expect, it } from 'vitest';
import { Harmonium } from '../src/api.js';
import { KvBlockPool } from '../src/engine/kv_blocks.js';
import { Scheduler, Sequence, stepBudget } from '../src/engine/scheduler.js';
import { expectHostProgramPasses } from './helpers/host_program.js';

const prompt = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (i * 31 + seed) % 1000);

describe('step budget', () => {
  it('defaults to maxBatchTokens and is bounded by it; the chunk by the budget', () => {
    expect(stepBudget({ maxSeqs: 8, maxBatchTokens: 2048 })).toEqual({ stepTokens: 2048, prefillChunk: 2048 });
    expect(stepBudget({ maxSeqs: 8, maxBatchTokens: 2048, stepTokens: 512 })).toEqual({ stepTokens: 512, prefillChunk: 512 });
    expect(stepBudget({ maxSeqs: 8, maxBatchTokens: 2048, stepTokens: 4096, prefillChunk: 256 })).toEqual({ stepTokens: 2048, prefillChunk: 256 });
    expect(stepBudget({ maxSeqs: 8, maxBatchTokens: 1024, prefillChunk: 4096 })).toEqual({ stepTokens: 1024, prefillChunk: 1024 });
  });

  it('load() refuses a step budget or chunk that is not a positive integer', async () => {
    await expect(Harmonium.load({ stepTokens: 0 })).rejects.toThrow(/stepTokens: must be an integer >= 1, got 0/);
    await expect(Harmonium.load({ prefillChunk: 1.5 })).rejects.toThrow(/prefillChunk: must be an integer >= 1/);
  });

  it('prefills each prompt in chunks of prefillChunk within stepTokens, decoders first', () => {
    const pool = new KvBlockPool(256, 16, { caching: false });
    const s = new Scheduler<number>(pool, { maxSeqs: 8, maxBatchTokens: 2048, stepTokens: 300, prefillChunk: 128 });
    const a = new Sequence(prompt(200, 1), pool, 0);
    const b = new Sequence(prompt(200, 2), pool, 1);
    s.add(a);
    s.add(b);
    const lens = (chunks: ReturnType<typeof s.schedule>) => chunks.map((c) => [c.seq.owner, c.start, c.length]);
    let chunks = s.schedule();
    expect(lens(chunks)).toEqual([[0, 0, 128], [1, 0, 128]]);
    for (const c of chunks) s.advance(c.seq, c.start + c.length);
    chunks = s.schedule();
    expect(lens(chunks)).toEqual([[0, 128, 72], [1, 128, 72]]);
    for (const c of chunks) {
      s.advance(c.seq, c.start + c.length);
      c.seq.tokens.push(7); // the sampled token: both decode next
    }
    const c3 = new Sequence(prompt(500, 3), pool, 2);
    s.add(c3);
    chunks = s.schedule();
    expect(lens(chunks)).toEqual([[0, 200, 1], [1, 200, 1], [2, 0, 128]]);
    expect(chunks.reduce((n, c) => n + c.length, 0)).toBeLessThanOrEqual(300);
  });
});

describe('the CUDA step plan on the host (hm_plan_test)', () => {
  it('buckets and pads decode-only steps; prints the plan cost per step', () => {
    expectHostProgramPasses('hm_plan_test', /step plan: \d+ checks, 0 failed/, 120_000);
  }, 130_000);
});
