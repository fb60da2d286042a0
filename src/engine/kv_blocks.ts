// The paged KV cache's bookkeeping on the host: the native backend owns numBlocks blocks of blockSize positions;
// this pool hands them out. A sequence's block table lists its blocks in order (position p lives in block
// table[p / blockSize], slot p % blockSize), which is what each native step receives.

export class KvCacheFullError extends Error {
  constructor(wanted: number, free: number, total: number) {
    super(`KV cache full: ${wanted} block(s) wanted, ${free} of ${total} free`);
    this.name = 'KvCacheFullError';
  }
}

export class KvBlockPool {
  readonly numBlocks: number;
  readonly blockSize: number;
  /** Free block ids; the most recently freed is reused first (its memory is warm). */
  private readonly freeList: number[];
  private readonly inUse: Uint8Array;

  constructor(numBlocks: number, blockSize: number) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new Error(`KV cache: numBlocks must be >= 1, got ${numBlocks}`);
    if (!Number.isInteger(blockSize) || blockSize < 1) throw new Error(`KV cache: blockSize must be >= 1, got ${blockSize}`);
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.freeList = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
    this.inUse = new Uint8Array(numBlocks);
  }

  get freeBlocks(): number {
    return this.freeList.length;
  }

  /** Blocks needed to hold `tokens` positions. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /** Takes n blocks, all or none. */
  allocate(n: number): number[] {
    if (n > this.freeList.length) throw new KvCacheFullError(n, this.freeList.length, this.numBlocks);
    const out = this.freeList.splice(this.freeList.length - n, n).reverse();
    for (const b of out) this.inUse[b] = 1;
    return out;
  }

  release(blocks: readonly number[]): void {
    for (const b of blocks) {
      if (!(b >= 0 && b < this.numBlocks) || !this.inUse[b]) throw new Error(`KV cache: block ${b} released twice or never allocated`);
      this.inUse[b] = 0;
      this.freeList.push(b);
    }
  }
}

/** One sequence's blocks, grown as its positions fill. */
export class BlockTable {
  readonly blocks: number[] = [];
  private readonly pool: KvBlockPool;

  constructor(pool: KvBlockPool) {
    this.pool = pool;
  }

  /** Blocks still to allocate so that positions 0 .. tokens-1 have a home. */
  missingFor(tokens: number): number {
    return Math.max(0, this.pool.blocksFor(tokens) - this.blocks.length);
  }

  /** Makes room for `tokens` positions; throws KvCacheFullError (taking nothing) when the pool cannot. */
  ensure(tokens: number): void {
    const n = this.missingFor(tokens);
    if (n > 0) this.blocks.push(...this.pool.allocate(n));
  }

  /** Gives every block back. */
  free(): void {
    this.pool.release(this.blocks);
    this.blocks.length = 0;
  }

  /** Writes this table into a step's [numSeqs * maxBlocksPerSeq] array at row `seq` (unused entries stay 0). */
  writeRow(out: Int32Array, seq: number, maxBlocksPerSeq: number): void {
    out.set(this.blocks, seq * maxBlocksPerSeq);
  }
}
