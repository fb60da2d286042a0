// Window KV on the real CPU backend (tiny model, window 128): the sliding layers keep only their window's blocks,
// given back and reused as sequences move on, and cached as twins of the full blocks. Requests longer than the
// window, several at once in a pool small enough to preempt, give bit for bit the tokens and logprobs of the
// one-table layout; a prefix-cache hit past the window gives the logits of a cold prefill. The fake-model tests
// (engine_fake, prefix_cache) cover the bookkeeping's corners; this is the real attention reading those blocks.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kvCapacity } from '../src/engine/kv_blocks.js';
import { GreedySequence, loadModel, type LoadedModel } from '../src/model/load.js';
import { ensureTinyModel } from '../src/model/tiny.js';
import { hitVsCold } from './helpers/prefix_logits.js';
import { expectLayoutsAgree } from './helpers/window_kv.js';

const BS = 16;
let shared: LoadedModel;
let windowed: LoadedModel;

beforeAll(async () => {
  const dir = await ensureTinyModel();
  shared = await loadModel({ model: dir, backend: 'cpu', maxSeqs: 4, blockSize: BS, numBlocks: 96, maxBatchTokens: 256 });
  windowed = await loadModel({ model: dir, backend: 'cpu', maxSeqs: 4, blockSize: BS, numBlocks: 96, maxBatchTokens: 256, windowKv: true });
}, 120_000);

afterAll(async () => {
  await shared?.close();
  await windowed?.close();
});

describe('window KV on the CPU backend (tiny model)', () => {
  it('loads with half-size blocks and publishes its window', () => {
    const a = shared.info();
    const b = windowed.info();
    expect(a.limits.kvWindow).toBe(0);
    expect(b.limits.kvWindow).toBe(128);
    // 2 sliding and 2 full layers: a block holds 2 layer slots instead of 4.
    expect(b.kvBytes * 2).toBe(a.kvBytes);
    // 96 blocks: 1,536 positions for one sequence in one table; with window KV, 96 half-size blocks hold
    // (96 - 15) * 16 positions at 96-token chunks (15 window blocks), in half the memory.
    expect(kvCapacity(96, BS, 128, 96)).toBe(81 * BS);
  });

  it('long requests, several at once and preempted, give the tokens and logprobs of one table, bit for bit', async () => {
    // 96 half-size blocks hold all three; 50 make the newest give way (each holds up to ~28 blocks).
    await expectLayoutsAgree(shared, windowed, 50);
  }, 300_000);

  it('a prefix-cache hit past the window (its twins cached) gives the logits of a cold prefill, bit for bit', async () => {
    // A shared prefix of 10 blocks + 2 tokens: the hit's window reads blocks 2..9 through their twins.
    const r = await hitVsCold(windowed, 96, 4, 10);
    expect(r.cachedWarm).toBe(10 * BS);
    expect(r.cachedAgain).toBe(Math.floor((r.promptLength - 1) / BS) * BS);
    expect(r.tokens.warm).toEqual(r.tokens.cold);
    expect(r.tokens.again).toEqual(r.tokens.cold);
    const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    for (const rows of [r.warm, r.again]) {
      expect(rows).toHaveLength(4);
      rows.forEach((row, i) => expect(same(row, r.cold[i])).toBe(true));
    }
    expect(r.engine.freeBlocks).toBe(96);
  }, 300_000);

  it('score() and GreedySequence run on a window-KV model (the sliding layers on the blocks after the full ones)', async () => {
    const tokens = Array.from({ length: 200 }, (_, i) => (i * 7919 + 13) % 201088);
    const a = await shared.score(tokens);
    const b = await windowed.score(tokens);
    expect(Buffer.from(b.logits.buffer).equals(Buffer.from(a.logits.buffer))).toBe(true);
    const decode = async (m: LoadedModel) => {
      const seq = new GreedySequence(m, 240);
      const out = [await seq.append(Int32Array.from(tokens.slice(0, 150)))];
      for await (const t of seq.decode(20)) out.push(t);
      return out;
    };
    expect(await decode(windowed)).toEqual(await decode(shared));
  }, 300_000);
});
