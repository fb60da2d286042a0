import { describe, expect, it } from 'vitest';
import { BlockTable, KvBlockPool, KvCacheFullError } from '../src/engine/kv_blocks.js';

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
