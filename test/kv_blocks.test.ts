import { describe, expect, it } from 'vitest';
import { BlockKeys, BlockTable, KvBlockPool, KvCacheFullError, WindowTable, kvCapacity } from '../src/engine/kv_blocks.js';

describe('KV block pool', () => {
  it('allocates distinct blocks, frees them, and reuses them', () => {
    const pool = new KvBlockPool(8, 16);
    const a = pool.allocate(3);
    const b = pool.allocate(5);
    expect(new Set([...a, ...b]).size).toBe(8);
    expect(pool.freeBlocks).toBe(0);
    pool.release(a);
    expect(pool.freeBlocks).toBe(3);
    expect(pool.allocate(3).sort()).toEqual([...a].sort());
  });

  it('refuses when full, taking nothing', () => {
    const pool = new KvBlockPool(4, 16);
    pool.allocate(3);
    expect(() => pool.allocate(2)).toThrow(KvCacheFullError);
    expect(() => pool.allocate(2)).toThrow(/2 block\(s\) wanted, 1 of 4 free/);
    expect(pool.freeBlocks).toBe(1);
  });

  it('catches a double release', () => {
    const pool = new KvBlockPool(4, 16);
    const a = pool.allocate(1);
    pool.release(a);
    expect(() => pool.release(a)).toThrow(/released twice/);
    expect(() => pool.release([9])).toThrow(/never allocated/);
  });

  it('rejects bad sizes', () => {
    expect(() => new KvBlockPool(0, 16)).toThrow(/numBlocks/);
    expect(() => new KvBlockPool(4, 0)).toThrow(/blockSize/);
  });
});

describe('block table', () => {
  it('grows by whole blocks as positions fill and writes its row', () => {
    const pool = new KvBlockPool(10, 4);
    const t = new BlockTable(pool);
    t.ensure(1);
    expect(t.blocks.length).toBe(1);
    t.ensure(4);
    expect(t.blocks.length).toBe(1);
    t.ensure(5);
    expect(t.blocks.length).toBe(2);
    expect(t.missingFor(13)).toBe(2);
    const row = new Int32Array(2 * 4);
    t.writeRow(row, 1, 4);
    expect(Array.from(row.slice(4, 6))).toEqual(t.blocks);
    t.free();
    expect(pool.freeBlocks).toBe(10);
    expect(t.blocks.length).toBe(0);
  });

  it('a failed growth leaves the table and the pool as they were', () => {
    const pool = new KvBlockPool(3, 4);
    const t = new BlockTable(pool);
    t.ensure(8);
    expect(() => t.ensure(20)).toThrow(KvCacheFullError);
    expect(t.blocks.length).toBe(2);
    expect(pool.freeBlocks).toBe(1);
  });
});

describe('window tables (window KV)', () => {
  it('hold only the entries a step can still read, and give the rest back', () => {
    const pool = new KvBlockPool(16, 4);
    const full = new BlockTable(pool);
    const w = new WindowTable(pool, 6);
    full.ensure(10);
    w.ensure(10);
    expect(w.blocks).toHaveLength(3);
    // The next step (position 10) reads positions 5..10: entries 1 and 2; entry 0 goes back.
    w.advance(full, 2, 10);
    expect(w.blocks[0]).toBe(-1);
    expect(w.held).toBe(2);
    expect(pool.freeBlocks).toBe(16 - 3 - 2);
    expect(w.firstEntry(10)).toBe(1);
    const row = new Int32Array(4).fill(7);
    w.writeRow(row, 0, 4);
    expect(Array.from(row)).toEqual([7, w.blocks[1], w.blocks[2], 7]);
    full.free();
    w.free();
    expect(pool.freeBlocks).toBe(16);
  });

  it('cache a window block as the twin of the full content it sits beside; evicting either ends the match', () => {
    const pool = new KvBlockPool(8, 2);
    const tokens = [1, 2, 3, 4, 5, 6];
    const keys = new BlockKeys(2);
    keys.extend(tokens, 6);
    const full = new BlockTable(pool);
    const w = new WindowTable(pool, 3);
    full.ensure(6);
    w.ensure(6);
    full.register(keys, tokens, 3);
    // Position 6 reads 4..6: entry 2 (and entry 3, not allocated yet); entries 0 and 1 are twins given back, idle
    // in the cache.
    w.advance(full, 3, 6);
    expect(pool.cachedBlocks).toBe(6);
    const twin2 = pool.twin(full.contentOf(2))!;
    expect(twin2).toBe(w.blocks[2]);
    expect(pool.twin(full.contentOf(0))).toBeDefined();
    expect(pool.writable(twin2)).toBe(false);
    const serials = [0, 1, 2].map((i) => full.contentOf(i));
    full.free();
    w.free();
    expect(pool.freeBlocks).toBe(8);
    // Free now: 2 empty blocks, then the idle ones least recent first: the twins of entries 1 and 0 (given back
    // first), the full blocks, the twin of entry 2.
    const taken = pool.allocate(3);
    expect(pool.twin(serials[1])).toBeUndefined();
    expect(pool.twin(serials[0])).toBeDefined();
    expect(pool.match(keys.keys, tokens, '', 3)).toHaveLength(3);
    taken.push(...pool.allocate(1));
    expect(pool.twin(serials[0])).toBeUndefined();
    expect(pool.twin(serials[2])).toBe(twin2);
    pool.release(taken);
    expect(() => pool.registerTwin(taken[0], 99)).toThrow(/while free/);
    expect(pool.freeBlocks).toBe(8);
  });

  it('capacity: one sequence holds its full blocks and a chunk of window blocks from the same pool', () => {
    expect(kvCapacity(64, 16)).toBe(1024);
    // Window 128, chunks of 512: 41 window blocks.
    expect(kvCapacity(128, 16, 128, 512)).toBe((128 - 41) * 16);
    // Short of two windows of blocks, both tables hold every block: half the pool.
    expect(kvCapacity(64, 16, 128, 512)).toBe(32 * 16);
    // gpt-oss at decode-sized chunks: 9 blocks of window, so twice the positions of the same bytes less 9 blocks.
    expect(kvCapacity(2 * 1000, 16, 128, 1)).toBe((2000 - 9) * 16);
  });
});
