// The paged KV cache's bookkeeping on the host: the native backend owns numBlocks blocks of blockSize positions;
// this pool hands them out. A sequence's block table lists its blocks in order (position p lives in block
// table[p / blockSize], slot p % blockSize), which is what each native step receives.
//
// Prefix caching: a full block whose KV is written gets a key naming its tokens and every token before it (a hash
// chain, salted per tenant), and any number of sequences may then read it (reference counts). A block nobody reads
// keeps its content and its key until the pool needs room: then the least recently used one is evicted. A shared
// block is never written: sequences write only positions past their cached prefix, which lie in blocks of their own.
import { createHash } from 'node:crypto';

export class KvCacheFullError extends Error {
  constructor(wanted: number, free: number, total: number) {
    super(`KV cache full: ${wanted} block(s) wanted, ${free} of ${total} free`);
    this.name = 'KvCacheFullError';
  }
}

export class KvBlockPool {
  readonly numBlocks: number;
  readonly blockSize: number;
  /** Whether full blocks are kept and shared by key (prefix caching). */
  readonly caching: boolean;
  /** Free blocks without cached content; the most recently freed is reused first (its memory is warm). */
  private readonly freeList: number[];
  /** Free blocks that hold cached content, least recently used first (a Set keeps insertion order). */
  private readonly idle = new Set<number>();
  private readonly refs: Int32Array;
  private readonly keyOf: (string | undefined)[];
  private readonly byKey = new Map<string, number>();

  constructor(numBlocks: number, blockSize: number, opts: { caching?: boolean } = {}) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new Error(`KV cache: numBlocks must be >= 1, got ${numBlocks}`);
    if (!Number.isInteger(blockSize) || blockSize < 1) throw new Error(`KV cache: blockSize must be >= 1, got ${blockSize}`);
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.caching = opts.caching ?? true;
    this.freeList = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
    this.refs = new Int32Array(numBlocks);
    this.keyOf = new Array<string | undefined>(numBlocks);
  }

  /** Blocks a sequence can take now: the empty ones and the cached ones nobody reads. */
  get freeBlocks(): number {
    return this.freeList.length + this.idle.size;
  }

  /** Blocks holding cached content (read by sequences or idle). */
  get cachedBlocks(): number {
    return this.byKey.size;
  }

  /** Whether a step may write block b: one sequence holds it and it is not shared by key (an invariant tests check). */
  writable(b: number): boolean {
    return this.refs[b] === 1 && this.keyOf[b] === undefined;
  }

  /** Blocks needed to hold `tokens` positions. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /** Takes n blocks, all or none: empty ones first, then the least recently used cached ones (their content is dropped). */
  allocate(n: number): number[] {
    if (n > this.freeBlocks) throw new KvCacheFullError(n, this.freeBlocks, this.numBlocks);
    const out = this.freeList.splice(Math.max(0, this.freeList.length - n), n).reverse();
    for (const b of this.idle) {
      if (out.length === n) break;
      this.idle.delete(b);
      this.byKey.delete(this.keyOf[b]!);
      this.keyOf[b] = undefined;
      out.push(b);
    }
    for (const b of out) this.refs[b] = 1;
    return out;
  }

  /** Drops one reference to each block; a block nobody reads becomes free (keeping its cached content, if any). */
  release(blocks: readonly number[]): void {
    for (const b of blocks) {
      if (!(b >= 0 && b < this.numBlocks) || this.refs[b] === 0) throw new Error(`KV cache: block ${b} released twice or never allocated`);
      if (--this.refs[b] > 0) continue;
      if (this.keyOf[b] !== undefined) this.idle.add(b);
      else this.freeList.push(b);
    }
  }

  /** The cached blocks holding keys[0], keys[1], ... up to the first key not cached. Takes nothing. */
  match(keys: readonly string[]): number[] {
    const out: number[] = [];
    for (const k of keys) {
      const b = this.byKey.get(k);
      if (b === undefined) break;
      out.push(b);
    }
    return out;
  }

  /** How many of these cached blocks are free now (taking them uses up free blocks). */
  idleAmong(blocks: readonly number[]): number {
    let n = 0;
    for (const b of blocks) if (this.refs[b] === 0) n++;
    return n;
  }

  /** Takes a reference to each cached block (from match). */
  acquire(blocks: readonly number[]): void {
    for (const b of blocks) {
      if (this.keyOf[b] === undefined) throw new Error(`KV cache: block ${b} holds no cached content`);
      if (this.refs[b]++ === 0) this.idle.delete(b);
    }
  }

  /**
   * Records that block b (in use, its KV written) holds the content `key` names. When another block already holds
   * it (two sequences computed the same prefix at once), b stays private and is simply freed when its sequence ends.
   */
  register(b: number, key: string): void {
    if (!this.caching || this.keyOf[b] !== undefined || this.byKey.has(key)) return;
    if (this.refs[b] === 0) throw new Error(`KV cache: block ${b} registered while free`);
    this.keyOf[b] = key;
    this.byKey.set(key, b);
  }
}

/**
 * The chain keys of a sequence's full blocks: keys[i] is a SHA-256 of keys[i - 1] (the salt for block 0) and block
 * i's token ids, so it names every token up to the block's end. A cryptographic hash, so that no tenant can craft a
 * prompt whose blocks collide with another's.
 */
export class BlockKeys {
  readonly keys: string[] = [];
  private readonly blockSize: number;
  private readonly salt: string;

  constructor(blockSize: number, salt = '') {
    this.blockSize = blockSize;
    this.salt = salt;
  }

  /** Extends the keys to every full block of tokens[0 .. upTo). */
  extend(tokens: readonly number[], upTo: number): void {
    const bs = this.blockSize;
    const ids = new Int32Array(bs);
    for (let i = this.keys.length; (i + 1) * bs <= upTo; i++) {
      for (let j = 0; j < bs; j++) ids[j] = tokens[i * bs + j];
      const h = createHash('sha256');
      h.update(i === 0 ? `salt:${this.salt}` : this.keys[i - 1]);
      h.update(ids);
      this.keys.push(h.digest('base64'));
    }
  }
}

/** One sequence's blocks, grown as its positions fill. */
export class BlockTable {
  readonly blocks: number[] = [];
  private readonly pool: KvBlockPool;
  /** Leading blocks whose content is registered with the pool (or was found there). */
  private registered = 0;

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

  /** Starts an empty table with cached blocks (the prefix found in the pool), taking a reference to each. */
  adopt(cached: readonly number[]): void {
    if (this.blocks.length > 0) throw new Error('KV cache: adopt() on a table that holds blocks');
    this.pool.acquire(cached);
    this.blocks.push(...cached);
    this.registered = cached.length;
  }

  /** Registers blocks 0 .. full-1 (full, their KV written) with the pool under their keys. */
  register(keys: readonly string[], full: number): void {
    if (full > keys.length || full > this.blocks.length) throw new Error(`KV cache: ${full} full blocks, ${keys.length} keys, ${this.blocks.length} blocks`);
    for (; this.registered < full; this.registered++)
      this.pool.register(this.blocks[this.registered], keys[this.registered]);
  }

  /** Gives every block back, the last first: a prefix's later blocks are then evicted before its first ones. */
  free(): void {
    this.pool.release([...this.blocks].reverse());
    this.blocks.length = 0;
    this.registered = 0;
  }

  /** Writes this table into a step's [numSeqs * maxBlocksPerSeq] array at row `seq` (unused entries stay 0). */
  writeRow(out: Int32Array, seq: number, maxBlocksPerSeq: number): void {
    out.set(this.blocks, seq * maxBlocksPerSeq);
  }
}
