// A simple continuous-batching scheduler: each step holds every decoding sequence (one token each) plus prefill
// chunks of sequences still reading their prompt (each at most prefillChunk tokens), within a token budget
// (stepTokens). New requests are admitted in arrival
// order as blocks and slots allow. When a decoding sequence needs a block and none is free, the most recently
// admitted sequence is preempted: its blocks are freed and it goes back to the front of the queue to recompute its
// tokens later (vLLM's recompute preemption), so the oldest requests always make progress.
// A sequence being admitted first takes the cached blocks its tokens start with (prefix caching, kv_blocks.ts)
// and prefills only the rest; as its blocks fill they are registered for others to share.
// With window KV (kvWindow > 0) each sequence also has a window table for the sliding layers: it grows with the
// sequence and gives back what its window has left after every step (kv_blocks.ts's WindowTable).
import { BlockKeys, BlockTable, WindowTable, type KvBlockPool } from './kv_blocks.js';

export interface SchedulerLimits {
  /** Sequences per step (the native max_seqs). */
  maxSeqs: number;
  /** Tokens per step (the native max_batch_tokens). */
  maxBatchTokens: number;
  /**
   * The token budget of one step (decode tokens first, then prefill chunks), at most maxBatchTokens; default
   * maxBatchTokens. Smaller keeps decoding sequences' steps short while prompts are read (ITL), larger reads
   * prompts in fewer steps (TTFT, prefill throughput).
   */
  stepTokens?: number;
  /** Prompt tokens one sequence prefills in one step at most; default the step budget. */
  prefillChunk?: number;
}

/** The step budget and prefill chunk the limits resolve to (defaults filled, each within its bound). */
export function stepBudget(limits: SchedulerLimits): { stepTokens: number; prefillChunk: number } {
  const stepTokens = Math.max(1, Math.min(limits.stepTokens ?? limits.maxBatchTokens, limits.maxBatchTokens));
  return { stepTokens, prefillChunk: Math.max(1, Math.min(limits.prefillChunk ?? stepTokens, stepTokens)) };
}

export class Sequence<T = unknown> {
  /** Prompt then generated tokens. */
  readonly tokens: number[];
  readonly promptLength: number;
  /** Positions whose KV is in the cache. */
  computed = 0;
  readonly table: BlockTable;
  /** The sliding layers' blocks (window KV), else undefined. */
  readonly window: WindowTable | undefined;
  /** Chain keys of its full blocks (computed as they are needed). */
  readonly keys: BlockKeys;
  /** Prompt tokens found in the prefix cache at its first admission (usage's cached_tokens). */
  cachedTokens: number | undefined;
  state: 'waiting' | 'running' | 'finished' = 'waiting';
  /** What the engine keeps with the sequence. */
  readonly owner: T;

  /**
   * `cacheSalt` keeps tenants apart: sequences share cached blocks only under the same salt. `kvWindow` > 0: the
   * model's window KV (a window table beside the full one).
   */
  constructor(prompt: readonly number[], pool: KvBlockPool, owner: T, cacheSalt?: string, kvWindow = 0) {
    this.tokens = [...prompt];
    this.promptLength = prompt.length;
    this.table = new BlockTable(pool);
    this.window = kvWindow > 0 ? new WindowTable(pool, kvWindow) : undefined;
    this.keys = new BlockKeys(pool.blockSize, cacheSalt);
    this.owner = owner;
  }

  get generated(): number {
    return this.tokens.length - this.promptLength;
  }

  /** Blocks still to allocate so that positions 0 .. tokens-1 have a home in both tables. */
  missingFor(tokens: number): number {
    return this.table.missingFor(tokens) + (this.window?.missingFor(tokens) ?? 0);
  }

  /** Makes room for `tokens` positions in both tables (the caller checked missingFor against the free blocks). */
  ensure(tokens: number): void {
    this.table.ensure(tokens);
    this.window?.ensure(tokens);
  }

  /** Gives every block back. */
  free(): void {
    this.table.free();
    this.window?.free();
  }
}

/** The cached blocks a waiting sequence starts with: full blocks, and (window KV) the twins its window reads. */
interface CachedPrefix {
  blocks: number[];
  twins: number[];
  /** The window table entry of twins[0]. */
  twinsFrom: number;
}

/** Part of a step: `length` tokens of `seq` from position `start`; `samples` when it reaches the sequence's end. */
export interface Chunk<T> {
  seq: Sequence<T>;
  start: number;
  length: number;
  samples: boolean;
}

export class Scheduler<T = unknown> {
  private readonly pool: KvBlockPool;
  private readonly limits: SchedulerLimits;
  /** Tokens per step and prompt tokens per sequence per step (stepBudget). */
  readonly budget: { stepTokens: number; prefillChunk: number };
  /** Admission order; preempted sequences return to the front. */
  readonly waiting: Sequence<T>[] = [];
  /** Admission order (oldest first). */
  readonly running: Sequence<T>[] = [];
  preemptions = 0;
  /** Prefix cache lookups, in prompt tokens: looked up and found (at each request's first admission; vLLM's counters). */
  prefixQueries = 0;
  prefixHits = 0;

  constructor(pool: KvBlockPool, limits: SchedulerLimits) {
    this.pool = pool;
    this.limits = limits;
    this.budget = stepBudget(limits);
  }

  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0;
  }

  add(seq: Sequence<T>): void {
    this.waiting.push(seq);
  }

  /** Takes a sequence out (finished, aborted or failed) and frees its blocks. */
  remove(seq: Sequence<T>): void {
    for (const list of [this.waiting, this.running]) {
      const i = list.indexOf(seq);
      if (i >= 0) list.splice(i, 1);
    }
    if (seq.table.blocks.length) seq.free();  // (its window table holds blocks only while this one does)
    seq.state = 'finished';
  }

  /** Records that positions 0 .. computed-1 of `seq` hold KV now; its blocks that are full become shareable. */
  advance(seq: Sequence<T>, computed: number): void {
    seq.computed = computed;
    const full = Math.floor(computed / this.pool.blockSize);
    if (this.pool.caching) {
      seq.keys.extend(seq.tokens, computed);
      seq.table.register(seq.keys, seq.tokens, full);
    }
    // The window's twins are registered with the content just cached, then what the window has left is given back.
    seq.window?.advance(seq.table, full, computed);
  }

  /**
   * The cached blocks `seq` starts with. Only blocks before the one holding its last token: that token is always
   * computed (its logits are sampled), and its KV must land in a block of the sequence's own.
   */
  private cachedPrefix(seq: Sequence<T>): CachedPrefix {
    const none = { blocks: [], twins: [], twinsFrom: 0 };
    if (!this.pool.caching) return none;
    const bs = this.pool.blockSize;
    const usable = Math.floor((seq.tokens.length - 1) / bs);
    seq.keys.extend(seq.tokens, usable * bs);
    const blocks = this.pool.match(seq.keys.keys, seq.tokens, seq.keys.salt, usable);
    if (!seq.window) return { blocks, twins: [], twinsFrom: 0 };
    // The longest of these prefixes whose window (the blocks a step after it reads) is cached too.
    for (let h = blocks.length; h > 0; h--) {
      const from = seq.window.firstEntry(h * bs);
      const twins: number[] = [];
      for (let i = from; i < h; i++) {
        const t = this.pool.twin(this.pool.serialOf(blocks[i]));
        if (t === undefined) break;
        twins.push(t);
      }
      if (twins.length === h - from) return { blocks: blocks.slice(0, h), twins, twinsFrom: from };
    }
    return none;
  }

  private preempt(seq: Sequence<T>): void {
    this.running.splice(this.running.indexOf(seq), 1);
    seq.free();
    seq.computed = 0;
    seq.state = 'waiting';
    this.waiting.unshift(seq);
    this.preemptions++;
  }

  /** Makes room for a decoding sequence, preempting the newest sequences; false when `seq` itself was preempted. */
  private reserveDecode(seq: Sequence<T>, tokens: number): boolean {
    while (seq.missingFor(tokens) > this.pool.freeBlocks) {
      const victim = this.running[this.running.length - 1];
      this.preempt(victim);
      if (victim === seq) return false;
    }
    seq.ensure(tokens);
    return true;
  }

  /** The next step's work. Empty only when there is nothing to do. */
  schedule(): Chunk<T>[] {
    for (;;) {
      const chunks = this.trySchedule();
      // Prefilling sequences can hold blocks that none of them can grow past; the newest gives way.
      if (chunks.length > 0 || this.running.length < 2) return chunks;
      this.preempt(this.running[this.running.length - 1]);
    }
  }

  private trySchedule(): Chunk<T>[] {
    const chunks: Chunk<T>[] = [];
    let budget = this.budget.stepTokens;
    const chunk = this.budget.prefillChunk;
    // Decoding sequences first, oldest first: a long prefill must not stall them.
    for (const seq of [...this.running]) {
      if (seq.state !== 'running' || seq.tokens.length - seq.computed !== 1 || budget < 1) continue;
      if (!this.reserveDecode(seq, seq.computed + 1)) continue;
      chunks.push({ seq, start: seq.computed, length: 1, samples: true });
      budget--;
    }
    // Then prefill chunks: sequences already admitted, then new ones in arrival order.
    for (const seq of this.running) {
      const need = seq.tokens.length - seq.computed;
      if (need <= 1 || budget < 1) continue;
      const len = Math.min(need, budget, chunk);
      if (seq.missingFor(seq.computed + len) > this.pool.freeBlocks) continue;
      seq.ensure(seq.computed + len);
      chunks.push({ seq, start: seq.computed, length: len, samples: len === need });
      budget -= len;
    }
    while (this.waiting.length > 0 && budget > 0 && this.running.length < this.limits.maxSeqs) {
      const seq = this.waiting[0];
      // Waiting sequences hold no blocks (new, or preempted).
      const hit = this.cachedPrefix(seq);
      const start = hit.blocks.length * this.pool.blockSize;
      const need = seq.tokens.length - start;
      const len = Math.min(need, budget, chunk);
      const fresh = this.pool.blocksFor(start + len) - hit.blocks.length;
      const wanted = fresh * (seq.window ? 2 : 1) + this.pool.idleAmong(hit.blocks) + this.pool.idleAmong(hit.twins);
      if (wanted > this.pool.freeBlocks) break;
      seq.table.adopt(hit.blocks);
      seq.window?.adopt(hit.twins, hit.twinsFrom);
      seq.computed = start;
      seq.ensure(start + len);
      if (seq.cachedTokens === undefined && this.pool.caching) {
        this.prefixQueries += seq.promptLength;
        this.prefixHits += start;
      }
      seq.cachedTokens ??= start;
      this.waiting.shift();
      this.running.push(seq);
      seq.state = 'running';
      chunks.push({ seq, start: seq.computed, length: len, samples: len === need });
      budget -= len;
    }
    return chunks;
  }
}
