// Prefix caching: the block pool's sharing rules, and the engine on the fake model (test/helpers/fake_model.ts reads
// each position's token back through the block table, so any wrong sharing changes the output). Every test checks
// that no step writes a shared block and that the pool is whole again at the end (no leak, no double free: a
// double release throws). The same on the real CPU backend, with logits compared bit for bit, is in
// prefix_cache_cpu.test.ts.
import { describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { BlockKeys, BlockTable, KvBlockPool } from '../src/engine/kv_blocks.js';
import { resolveSampling, type SamplingParams } from '../src/sampling/params.js';
import { FakeModel } from './helpers/fake_model.js';

const VOCAB = 300;
const BS = 4;

function setup(numBlocks = 64, opts: { maxBatchTokens?: number; prefixCaching?: boolean; maxSeqs?: number; window?: number } = {}) {
  const model = new FakeModel(VOCAB, numBlocks, BS, opts.window ?? 0);
  const engine = new Engine(model, {
    vocabSize: VOCAB,
    numBlocks,
    blockSize: BS,
    maxSeqs: opts.maxSeqs ?? 8,
    maxBatchTokens: opts.maxBatchTokens ?? 64,
    contextLength: 400,
    prefixCaching: opts.prefixCaching,
    kvWindow: opts.window,
  });
  const badWrites: number[] = [];
  model.onWrite = (b) => {
    if (!engine.pool.writable(b)) badWrites.push(b);
  };
  return { model, engine, badWrites };
}

function request(engine: Engine, prompt: number[], maxTokens: number, p: SamplingParams = { temperature: 0 }, extra: { signal?: AbortSignal; cacheSalt?: string } = {}) {
  const tokens: number[] = [];
  let first!: () => void;
  const firstToken = new Promise<void>((r) => (first = r));
  const done = engine.generate({
    prompt,
    sampling: resolveSampling(p, VOCAB, () => 0),
    maxTokens,
    stopTokenIds: new Set(),
    ...extra,
    onToken: (t) => {
      tokens.push(t.token);
      first();
    },
  });
  return { tokens, done, firstToken };
}

const seq = (n: number, mul: number, add = 0) => Array.from({ length: n }, (_, i) => (i * mul + add) % 290);
/** What a request would generate alone on a fresh engine without caching. */
async function cold(prompt: number[], maxTokens: number, p: SamplingParams = { temperature: 0 }, window = 0): Promise<number[]> {
  const { engine } = setup(64, { prefixCaching: false, window });
  const r = request(engine, prompt, maxTokens, p);
  await r.done;
  return r.tokens;
}

describe('block pool with prefix caching', () => {
  const tokens = [1, 2, 3, 4, 5];
  const keysOf = (t: number[], salt?: string) => {
    const k = new BlockKeys(2, salt);
    k.extend(t, t.length);
    return k;
  };

  it('keeps a released full block by content, shares it by reference, and evicts the least recently used', () => {
    const pool = new KvBlockPool(4, 2);
    const keys = keysOf(tokens);
    expect(keys.keys).toHaveLength(2);
    const a = new BlockTable(pool);
    a.ensure(5);
    a.register(keys, tokens, 2);
    expect(pool.cachedBlocks).toBe(2);
    a.free();
    expect(pool.freeBlocks).toBe(4);
    const hit = pool.match(keys.keys, tokens, '', 2);
    expect(hit).toHaveLength(2);
    const b = new BlockTable(pool);
    const c = new BlockTable(pool);
    b.adopt(hit);
    c.adopt(hit);
    expect(pool.freeBlocks).toBe(2);
    expect(pool.writable(hit[0])).toBe(false);
    b.free();
    c.free();
    expect(() => pool.release([hit[0]])).toThrow(/released twice/);
    // Room for 3 blocks: the two empty ones, then the least recently used cached one (the prefix's second block).
    const d = new BlockTable(pool);
    d.ensure(6);
    expect(pool.match(keys.keys, tokens, '', 2)).toEqual([hit[0]]);
    d.free();
    expect(pool.freeBlocks).toBe(4);
  });

  it('a match compares tokens, parent and salt exactly, whatever the keys say', () => {
    const pool = new KvBlockPool(8, 2);
    const keys = keysOf(tokens);
    const a = new BlockTable(pool);
    a.ensure(4);
    a.register(keys, tokens, 2);
    expect(pool.match(keys.keys, [1, 2, 3, 9], '', 2)).toHaveLength(1);
    expect(pool.match(keys.keys, [7, 2, 3, 4], '', 2)).toHaveLength(0);
    expect(pool.match(keys.keys, tokens, 'other', 2)).toHaveLength(0);
    // Another sequence computing the same prefix at once keeps its blocks private, and its next block still caches.
    const twin = new BlockTable(pool);
    const longer = [1, 2, 3, 4, 5, 6];
    const lk = keysOf(longer);
    twin.ensure(6);
    twin.register(lk, longer, 3);
    expect(pool.cachedBlocks).toBe(3);
    expect(pool.writable(twin.blocks[0])).toBe(true);
    expect(pool.match(lk.keys, longer, '', 3)).toEqual([...a.blocks, twin.blocks[2]]);
    a.free();
    twin.free();
    expect(pool.freeBlocks).toBe(8);
  });

  it('a child whose parent was evicted never matches, and gives its key up once idle', () => {
    const pool = new KvBlockPool(6, 2);
    const longer = [1, 2, 3, 4, 5, 6];
    const lk = keysOf(longer);
    const a = new BlockTable(pool);
    a.ensure(4);
    a.register(lk, longer, 2);
    const [a0] = a.blocks;
    const twin = new BlockTable(pool);
    twin.ensure(6);
    twin.register(lk, longer, 3); // blocks 0-1 duplicate a's; block 2 caches after a's block 1
    a.free(); // a's blocks idle, its block 1 the least recent
    const other = new BlockTable(pool);
    other.ensure(4); // the empty block, then a's block 1 evicted: twin's block 2 names a parent that is gone
    expect(pool.match(lk.keys, longer, '', 3)).toEqual([a0]);
    other.free();
    twin.free();
    // A fresh computation of the same prefix caches all three blocks again (the stale child gave its key up).
    const again = new BlockTable(pool);
    again.ensure(6);
    again.register(lk, longer, 3);
    expect(pool.match(lk.keys, longer, '', 3)).toEqual([a0, again.blocks[1], again.blocks[2]]);
    again.free();
    expect(pool.freeBlocks).toBe(6);
  });

  it('keys name the whole prefix and the salt', () => {
    expect(keysOf([1, 2, 3, 4]).keys[1]).toBe(keysOf([1, 2, 3, 4, 9]).keys[1]);
    expect(keysOf([1, 2, 3, 4]).keys[1]).not.toBe(keysOf([7, 2, 3, 4]).keys[1]);
    expect(keysOf([1, 2, 3, 4], 'a').keys[0]).not.toBe(keysOf([1, 2, 3, 4], 'b').keys[0]);
    expect(Number.isSafeInteger(keysOf([1, 2]).keys[0])).toBe(true);
  });
});

// Window KV (6 positions, blocks of 4): the sliding layers' blocks come from the same pool, are given back as the
// window passes, and are cached as twins of the full blocks; the fake model reads the window through them.
for (const window of [0, 6])
describe(`engine with prefix caching (fake model${window ? `, window KV of ${window}` : ''})`, () => {
  const setupW = (numBlocks = 64, opts: Parameters<typeof setup>[1] = {}) => setup(numBlocks, { ...opts, window });
  const coldW = (prompt: number[], maxTokens: number, p?: SamplingParams) => cold(prompt, maxTokens, p, window);
  it('a second request with the same prefix reads the same blocks and prefills only the rest', async () => {
    const { engine, model, badWrites } = setupW();
    const shared = seq(4 * BS, 7);
    const pa = [...shared, 11, 12];
    const pb = [...shared, 21, 22, 23];
    const a = request(engine, pa, 30);
    await a.firstToken;
    const used = () => engine.pool.numBlocks - engine.pool.freeBlocks;
    const usedByA = used();
    model.steps = [];
    const b = request(engine, pb, 5);
    const [ra, rb] = await Promise.all([a.done, b.done]);
    // B's admission step: its first 4 table entries are A's, and it prefilled its 3-token tail only.
    const step = model.steps.find((s) => s.seqLens.length === 2)!;
    const row = (s: number) => Array.from(step.blockTables.subarray(s * step.maxBlocksPerSeq, s * step.maxBlocksPerSeq + 4));
    expect(row(1)).toEqual(row(0));
    expect(step.seqLens[1]).toBe(3);
    expect(rb.cachedTokens).toBe(4 * BS);
    expect(ra.cachedTokens).toBe(0);
    expect(engine.prefixCache).toEqual({ queries: pa.length + pb.length, hits: 4 * BS });
    // While both ran, B added one block of its own (its tail) and not a copy of the prefix. With window KV A also
    // holds the window blocks of positions 13..18 (entries 3 and 4).
    expect(usedByA).toBe(Math.ceil((pa.length + 1) / BS) + (window ? 2 : 0));
    expect(a.tokens).toEqual(await coldW(pa, 30));
    expect(b.tokens).toEqual(await coldW(pb, 5));
    expect(badWrites).toEqual([]);
    expect(engine.freeBlocks).toBe(64);
    expect(engine.inFlight).toBe(0);
  });

  it('a wholly cached prompt still computes its last token, in a block of its own', async () => {
    const { engine, model, badWrites } = setupW();
    const p = seq(3 * BS, 5);
    const first = request(engine, p, 4);
    await first.done;
    model.steps = [];
    const again = request(engine, p, 4);
    const r = await again.done;
    // Blocks 0 and 1 are shared; block 2 holds the last prompt token, so it is recomputed (4 tokens).
    expect(r.cachedTokens).toBe(2 * BS);
    expect(model.steps[0].seqLens[0]).toBe(BS);
    expect(again.tokens).toEqual(first.tokens);
    expect(badWrites).toEqual([]);
    expect(engine.freeBlocks).toBe(64);
  });

  it('a new turn reuses the previous turn, generated tokens included', async () => {
    const { engine, badWrites } = setupW();
    const turn1 = seq(10, 3);
    const r1 = request(engine, turn1, 9);
    await r1.done;
    const turn2 = [...turn1, ...r1.tokens, 5, 6, 7];
    const r2 = request(engine, turn2, 6);
    // turn1 + all but the last generated token have KV: 18 positions, 4 full blocks.
    expect((await r2.done).cachedTokens).toBe(4 * BS);
    expect(r2.tokens).toEqual(await coldW(turn2, 6));
    expect(badWrites).toEqual([]);
  });

  it('cache_salt keeps requests apart; turning caching off shares nothing', async () => {
    const { engine } = setupW();
    const p = seq(5 * BS, 9);
    await request(engine, p, 2, undefined, { cacheSalt: 'tenant-a' }).done;
    expect((await request(engine, p, 2, undefined, { cacheSalt: 'tenant-b' }).done).cachedTokens).toBe(0);
    expect((await request(engine, p, 2, undefined, { cacheSalt: 'tenant-a' }).done).cachedTokens).toBe(4 * BS);
    const off = setupW(64, { prefixCaching: false }).engine;
    await request(off, p, 2).done;
    expect((await request(off, p, 2).done).cachedTokens).toBe(0);
    expect(off.pool.cachedBlocks).toBe(0);
    expect(off.prefixCache).toEqual({ queries: 0, hits: 0 });
  });

  it('eviction under pressure keeps every live sequence right', async () => {
    // 40 blocks: the cache fills with the first wave's prefixes, the second wave evicts them while others read theirs.
    const { engine, badWrites } = setupW(40, { maxBatchTokens: 32 });
    const prefixes = [seq(6 * BS, 7), seq(6 * BS, 11), seq(6 * BS, 13)];
    const prompts = Array.from({ length: 12 }, (_, i) => [...prefixes[i % 3], ...seq(1 + (i % 5), 17, i)]);
    const expected = await Promise.all(prompts.map((p, i) => coldW(p, 10 + i, { seed: i, top_k: 20 })));
    for (let wave = 0; wave < 2; wave++) {
      const rs = prompts.map((p, i) => request(engine, p, 10 + i, { seed: i, top_k: 20 }));
      await Promise.all(rs.map((r) => r.done));
      rs.forEach((r, i) => expect(r.tokens).toEqual(expected[i]));
    }
    expect(engine.prefixCache.hits).toBeGreaterThan(0);
    expect(engine.preemptions).toBeGreaterThan(0);
    expect(badWrites).toEqual([]);
    expect(engine.freeBlocks).toBe(40);
  });

  it('abort and preemption with shared blocks leave no leak and no double free', async () => {
    const { engine, model, badWrites } = setupW(24, { maxBatchTokens: 16 });
    model.delayMs = 1;
    const shared = seq(4 * BS, 3);
    const prompts = Array.from({ length: 6 }, (_, i) => [...shared, ...seq(2 + i, 5, i)]);
    const expected = await Promise.all(prompts.map((p) => coldW(p, 20)));
    await request(engine, shared.concat([1]), 1).done;
    const acs = prompts.map(() => new AbortController());
    const rs = prompts.map((p, i) => request(engine, p, 20, undefined, { signal: acs[i].signal }));
    setTimeout(() => acs[1].abort(), 5);
    setTimeout(() => acs[4].abort(), 20);
    const settled = await Promise.allSettled(rs.map((r) => r.done));
    settled.forEach((s, i) => {
      if (s.status === 'fulfilled') expect(rs[i].tokens).toEqual(expected[i]);
      else expect(s.reason).toMatchObject({ name: 'AbortError' });
    });
    expect(settled.filter((s) => s.status === 'rejected').length).toBeGreaterThan(0);
    expect(engine.preemptions).toBeGreaterThan(0);
    expect(engine.prefixCache.hits).toBeGreaterThan(0);
    expect(badWrites).toEqual([]);
    expect(engine.freeBlocks).toBe(24);
    expect(engine.inFlight).toBe(0);
  });
});
