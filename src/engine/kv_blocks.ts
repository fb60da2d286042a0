// The paged KV cache's bookkeeping on the host: the native backend owns numBlocks blocks of blockSize positions;
// this pool hands them out. A sequence's block table lists its blocks in order (position p lives in block
// table[p / blockSize], slot p % blockSize), which is what each native step receives.
//
// Prefix caching: a full block whose KV is written is kept, by content, for any number of sequences to read
// (reference counts); a block nobody reads keeps its content until the pool needs room, and then the least
// recently used one is evicted. A cached block's content is its tokens and its parent (the cached block before it,
// or the cache salt for a first block): a match compares both, exactly, so sharing never depends on a hash being
// free of collisions. The hash chain (BlockKeys) only finds the candidate. A shared block is never written:
// sequences write only positions past their cached prefix, which lie in blocks of their own.
//
// Window KV (a windowKv load, native/kv_layout.h): the sliding-window layers keep their KV in blocks of the same
// pool, through a second table per sequence (WindowTable) that gives back every block its window has left. Such a
// block is cached as the "twin" of the full block with the same positions: its content is named by that block's
// content serial (the same prefix of tokens), so a prefix is found in the cache when its full blocks and the twins
// of the blocks its window still reads are.

export class KvCacheFullError extends Error {
  constructor(wanted: number, free: number, total: number) {
    super(`KV cache full: ${wanted} block(s) wanted, ${free} of ${total} free`);
    this.name = 'KvCacheFullError';
  }
}

/** A cached content's parent when it is a sequence's first block (the salt then stands for the parent). */
export const ROOT = 0;
/** A parent whose content is not cached: such a block cannot be cached either. */
export const UNKNOWN = -1;

export class KvBlockPool {
  readonly numBlocks: number;
  readonly blockSize: number;
  /** Whether full blocks are kept and shared by content (prefix caching). */
  readonly caching: boolean;
  /** Free blocks without cached content; the most recently freed is reused first (its memory is warm). */
  private readonly freeList: number[];
  /** Free blocks that hold cached content, least recently used first (a Set keeps insertion order). */
  private readonly idle = new Set<number>();
  private readonly refs: Int32Array;
  /**
   * Per cached block: a serial naming its content (0: none; never reused, so a child that names an evicted
   * parent's serial simply never matches again), its parent's serial, its salt (first blocks), its tokens, its key.
   */
  private readonly serial: Float64Array;
  private readonly parent: Float64Array;
  private readonly saltOf: (string | undefined)[];
  private readonly tokensOf: Int32Array;
  private readonly keyOf: Float64Array;
  private readonly byKey = new Map<number, number>();
  /** Per block: the content serial of the full block it is the window twin of (0: none), and the reverse map. */
  private readonly twinOf: Float64Array;
  private readonly twins = new Map<number, number>();
  private serials = 0;

  constructor(numBlocks: number, blockSize: number, opts: { caching?: boolean } = {}) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new Error(`KV cache: numBlocks must be >= 1, got ${numBlocks}`);
    if (!Number.isInteger(blockSize) || blockSize < 1) throw new Error(`KV cache: blockSize must be >= 1, got ${blockSize}`);
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.caching = opts.caching ?? true;
    this.freeList = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
    this.refs = new Int32Array(numBlocks);
    this.serial = new Float64Array(numBlocks);
    this.parent = new Float64Array(numBlocks);
    this.saltOf = new Array<string | undefined>(numBlocks);
    this.tokensOf = new Int32Array(this.caching ? numBlocks * blockSize : 0);
    this.keyOf = new Float64Array(numBlocks);
    this.twinOf = new Float64Array(numBlocks);
  }

  /** Blocks a sequence can take now: the empty ones and the cached ones nobody reads. */
  get freeBlocks(): number {
    return this.freeList.length + this.idle.size;
  }

  /** Blocks holding cached content (read by sequences or idle): full blocks and window twins. */
  get cachedBlocks(): number {
    return this.byKey.size + this.twins.size;
  }

  /** Blocks needed to hold `tokens` positions. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /** Whether a step may write block b: one sequence holds it and it is not cached (an invariant tests check). */
  writable(b: number): boolean {
    return this.refs[b] === 1 && this.serial[b] === 0 && this.twinOf[b] === 0;
  }

  /** Takes n blocks, all or none: empty ones first, then the least recently used cached ones (their content is dropped). */
  allocate(n: number): number[] {
    if (n > this.freeBlocks) throw new KvCacheFullError(n, this.freeBlocks, this.numBlocks);
    const out = this.freeList.splice(Math.max(0, this.freeList.length - n), n).reverse();
    for (const b of this.idle) {
      if (out.length === n) break;
      this.idle.delete(b);
      this.uncache(b);
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
      if (this.serial[b] !== 0 || this.twinOf[b] !== 0) this.idle.add(b);
      else this.freeList.push(b);
    }
  }

  /**
   * The cached blocks holding a sequence's first blocks: block i of `tokens` under keys[i], up to the first block
   * not cached, at most `count`. Takes nothing.
   */
  match(keys: readonly number[], tokens: readonly number[], salt: string, count: number): number[] {
    const out: number[] = [];
    let parent = ROOT;
    for (let i = 0; i < count; i++) {
      const b = this.byKey.get(keys[i]);
      if (b === undefined || !this.holds(b, tokens, i * this.blockSize, parent, salt)) break;
      out.push(b);
      parent = this.serial[b];
    }
    return out;
  }

  /** The serial of a cached block's content (what a child names as its parent). */
  serialOf(b: number): number {
    return this.serial[b];
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
      if (this.serial[b] === 0 && this.twinOf[b] === 0) throw new Error(`KV cache: block ${b} holds no cached content`);
      if (this.refs[b]++ === 0) this.idle.delete(b);
    }
  }

  /**
   * Caches block b (in use, its KV written): tokens[from .. from + blockSize) under `key`, after the content named
   * `parent` (ROOT with `salt` for a first block). Returns the serial now holding that content: b's own, or that of
   * a block cached with it already (two sequences computed the same prefix at once: b stays private and is freed
   * when its sequence ends), or 0 when it cannot be cached (caching off, parent unknown, key taken by other content).
   */
  register(b: number, key: number, tokens: readonly number[], from: number, parent: number, salt: string): number {
    if (!this.caching || parent === UNKNOWN) return 0;
    if (this.refs[b] === 0) throw new Error(`KV cache: block ${b} registered while free`);
    if (this.serial[b] !== 0) return this.serial[b];
    const other = this.byKey.get(key);
    if (other !== undefined) {
      if (this.holds(other, tokens, from, parent, salt)) return this.serial[other];
      // The key's holder is other content (a hash collision, or a child of an evicted parent): make room if idle.
      if (this.refs[other] !== 0) return 0;
      this.idle.delete(other);
      this.uncache(other);
      this.freeList.push(other);
    }
    const bs = this.blockSize;
    for (let j = 0; j < bs; j++) this.tokensOf[b * bs + j] = tokens[from + j];
    this.serial[b] = ++this.serials;
    this.parent[b] = parent;
    this.saltOf[b] = parent === ROOT ? salt : undefined;
    this.keyOf[b] = key;
    this.byKey.set(key, b);
    return this.serial[b];
  }

  /**
   * Caches window block b (in use, its KV written) as the twin of the full content `serial`, unless that content
   * has a twin already (b then stays private) or caching is off.
   */
  registerTwin(b: number, serial: number): void {
    if (this.refs[b] === 0) throw new Error(`KV cache: block ${b} registered while free`);
    if (!this.caching || serial === 0 || this.twinOf[b] !== 0 || this.twins.has(serial)) return;
    if (this.serial[b] !== 0) throw new Error(`KV cache: block ${b} holds full-layer content`);
    this.twinOf[b] = serial;
    this.twins.set(serial, b);
  }

  /** The cached window block twinning the full content `serial`, if any. */
  twin(serial: number): number | undefined {
    return serial === 0 ? undefined : this.twins.get(serial);
  }

  /** Whether cached block b holds tokens[from .. from + blockSize) after the content `parent` (and `salt`). */
  private holds(b: number, tokens: readonly number[], from: number, parent: number, salt: string): boolean {
    if (this.parent[b] !== parent || (parent === ROOT && this.saltOf[b] !== salt)) return false;
    const bs = this.blockSize;
    for (let j = 0; j < bs; j++) if (this.tokensOf[b * bs + j] !== tokens[from + j]) return false;
    return true;
  }

  private uncache(b: number): void {
    if (this.twinOf[b] !== 0) {
      this.twins.delete(this.twinOf[b]);
      this.twinOf[b] = 0;
      return;
    }
    this.byKey.delete(this.keyOf[b]);
    this.serial[b] = 0;
    this.saltOf[b] = undefined;
  }
}

/**
 * A sequence's chain of block keys: keys[i] hashes keys[i - 1] (the salt for block 0) and block i's token ids, so
 * equal keys point at the same prefix almost always; the pool's exact match settles it. Two 32-bit lanes, 53 bits
 * kept (a Map key): cheap enough to hash every token once (the budget is 1% of a step).
 */
export class BlockKeys {
  readonly keys: number[] = [];
  readonly salt: string;
  private readonly blockSize: number;
  private h1: number;
  private h2: number;

  constructor(blockSize: number, salt = '') {
    this.blockSize = blockSize;
    this.salt = salt;
    this.h1 = 0x243f6a88;
    this.h2 = 0x85a308d3;
    const codes = Array.from(salt, (c) => c.codePointAt(0)!);
    this.absorb(codes, 0, codes.length);
    this.absorb([codes.length], 0, 1);
  }

  /** Extends the keys to every full block of tokens[0 .. upTo). */
  extend(tokens: readonly number[], upTo: number): void {
    const bs = this.blockSize;
    for (let i = this.keys.length; (i + 1) * bs <= upTo; i++) {
      this.absorb(tokens, i * bs, (i + 1) * bs);
      this.h1 = fmix(this.h1 ^ this.h2);
      this.h2 = fmix(this.h2 + this.h1);
      this.keys.push((this.h1 >>> 0) * 0x200000 + (this.h2 >>> 11));
    }
  }

  private absorb(xs: readonly number[], from: number, to: number): void {
    let { h1, h2 } = this;
    for (let j = from; j < to; j++) {
      h1 = Math.imul(h1 ^ xs[j], 0x9e3779b1);
      h1 = (h1 << 13) | (h1 >>> 19);
      h2 = (Math.imul(h2 ^ xs[j], 0x85ebca77) + h1) | 0;
      h2 = (h2 << 17) | (h2 >>> 15);
    }
    this.h1 = h1;
    this.h2 = h2;
  }
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** One sequence's blocks, grown as its positions fill. */
export class BlockTable {
  readonly blocks: number[] = [];
  private readonly pool: KvBlockPool;
  /** Per leading block: the serial of the cached content it holds (0: not cached); the rest are not cached yet. */
  private readonly contents: number[] = [];

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
    for (const b of cached) this.contents.push(this.pool.serialOf(b));
  }

  /** The serial of the cached content block i holds (0: not cached, or not registered yet). */
  contentOf(i: number): number {
    return this.contents[i] ?? 0;
  }

  /** Caches blocks 0 .. full-1 (full, their KV written) with the pool, under the sequence's keys. */
  register(keys: BlockKeys, tokens: readonly number[], full: number): void {
    if (full > keys.keys.length || full > this.blocks.length) throw new Error(`KV cache: ${full} full blocks, ${keys.keys.length} keys, ${this.blocks.length} blocks`);
    const bs = this.pool.blockSize;
    for (let i = this.contents.length; i < full; i++) {
      const parent = i === 0 ? ROOT : this.contents[i - 1] || UNKNOWN;
      this.contents.push(this.pool.register(this.blocks[i], keys.keys[i], tokens, i * bs, parent, keys.salt));
    }
  }

  /** Gives every block back, the last first: a prefix's later blocks are then evicted before its first ones. */
  free(): void {
    this.pool.release([...this.blocks].reverse());
    this.blocks.length = 0;
    this.contents.length = 0;
  }

  /** Writes this table into a step's [numSeqs * maxBlocksPerSeq] array at row `seq` (unused entries stay 0). */
  writeRow(out: Int32Array, seq: number, maxBlocksPerSeq: number): void {
    out.set(this.blocks, seq * maxBlocksPerSeq);
  }
}

/**
 * One sequence's window table (window KV): the blocks of its sliding-window layers, addressed as the full table
 * (position p in entry p / blockSize), of which it holds only those a step can still read: a step at positions
 * first.. reads its window from first - window + 1 (native/kv_layout.h's window_blocks). Given-back entries are -1
 * here and 0 in a step's array (never read there).
 */
export class WindowTable {
  readonly blocks: number[] = [];
  readonly window: number;
  private readonly pool: KvBlockPool;
  /** Entries before this one are given back. */
  private first = 0;
  /** Entries before this one were offered to the cache as twins. */
  private registered = 0;

  constructor(pool: KvBlockPool, window: number) {
    if (!Number.isInteger(window) || window < 1) throw new Error(`KV cache: window must be >= 1, got ${window}`);
    this.pool = pool;
    this.window = window;
  }

  /** The first entry a step from position `first` on reads. */
  firstEntry(first: number): number {
    return Math.floor(Math.max(0, first - this.window + 1) / this.pool.blockSize);
  }

  /** Blocks still to allocate so that positions up to tokens-1 have a home. */
  missingFor(tokens: number): number {
    return Math.max(0, this.pool.blocksFor(tokens) - this.blocks.length);
  }

  /** Makes room for `tokens` positions; throws KvCacheFullError (taking nothing) when the pool cannot. */
  ensure(tokens: number): void {
    const n = this.missingFor(tokens);
    if (n > 0) this.blocks.push(...this.pool.allocate(n));
  }

  /**
   * Starts an empty table with cached twins: `twins` hold entries from .. from + twins.length - 1, the ones a step
   * after the cached prefix reads (earlier entries given back). Takes a reference to each.
   */
  adopt(twins: readonly number[], from: number): void {
    if (this.blocks.length > 0) throw new Error('KV cache: adopt() on a window table that holds blocks');
    this.pool.acquire(twins);
    for (let i = 0; i < from; i++) this.blocks.push(-1);
    this.blocks.push(...twins);
    this.first = this.registered = from;
  }

  /**
   * After a step: offers entries 0 .. full-1 (full, their KV written) to the cache as twins of the full table's
   * cached content, then gives back every entry a step from position `next` on does not read.
   */
  advance(table: BlockTable, full: number, next: number): void {
    for (; this.registered < full; this.registered++) {
      const b = this.blocks[this.registered];
      if (b >= 0) this.pool.registerTwin(b, table.contentOf(this.registered));
    }
    const keep = Math.min(this.firstEntry(next), this.blocks.length);
    if (keep <= this.first) return;
    const out = this.blocks.slice(this.first, keep).filter((b) => b >= 0).reverse();
    for (let i = this.first; i < keep; i++) this.blocks[i] = -1;
    this.first = keep;
    this.registered = Math.max(this.registered, keep);
    this.pool.release(out);
  }

  /** Blocks held now. */
  get held(): number {
    return this.blocks.length - this.first;
  }

  /** Gives every block back, the last first. */
  free(): void {
    this.pool.release(this.blocks.slice(this.first).reverse());
    this.blocks.length = 0;
    this.first = this.registered = 0;
  }

  /** Writes this table into a step's array at row `seq` (given-back entries as 0, unused entries stay 0). */
  writeRow(out: Int32Array, seq: number, maxBlocksPerSeq: number): void {
    const at = seq * maxBlocksPerSeq;
    for (let i = this.first; i < this.blocks.length; i++) out[at + i] = this.blocks[i];
  }
}

/**
 * The most positions one sequence can hold in a pool of numBlocks (window KV: its full table, and its window
 * table's blocks for a prefill chunk of `chunk` tokens and the window before it).
 */
export function kvCapacity(numBlocks: number, blockSize: number, window = 0, chunk = 1): number {
  if (window <= 0) return numBlocks * blockSize;
  const windowBlocks = Math.ceil((window - 1 + chunk) / blockSize) + 1;
  // Up to windowBlocks blocks long, the window table holds every block the full one does; beyond, windowBlocks.
  return Math.max(numBlocks - windowBlocks, Math.floor(numBlocks / 2)) * blockSize;
}
