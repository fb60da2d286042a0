// Shared by the CPU and GPU oracle suites: the committed transformers cases, and one sequence run through a model
// in each of the three schedules the issues hold a backend to (one prefill, token by token, half then the rest).
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import type { LoadedModel } from '../../src/model/load.js';

export const fixturesDir = join(import.meta.dirname, '..', 'fixtures');

/** Names of the case directories in test/fixtures (those with a case.json), sorted. */
export function fixtureCases(): string[] {
  if (!existsSync(fixturesDir)) return [];
  return readdirSync(fixturesDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(fixturesDir, d.name, 'case.json')))
    .map((d) => d.name)
    .sort();
}

export type Schedule = 'prefill' | 'decode' | 'half';

/** Runs `tokens` as one sequence whose KV lives in `blocks`; returns its full logits [T * V]. */
export async function sequenceLogits(model: LoadedModel, tokens: number[], mode: Schedule, blocks: number[]): Promise<Float32Array> {
  const V = model.config.vocabSize;
  const out = new Float32Array(tokens.length * V);
  const blockTables = Int32Array.from(blocks);
  const run = async (start: number, end: number) => {
    const r = await model.step({
      tokens: Int32Array.from(tokens.slice(start, end)),
      positions: Int32Array.from({ length: end - start }, (_, i) => start + i),
      seqLens: Int32Array.of(end - start),
      blockTables,
      maxBlocksPerSeq: blocks.length,
      allPositions: true,
      fullLogits: Uint8Array.of(1),
    });
    expect(r.numRows).toBe(end - start);
    out.set(r.logits, start * V);
  };
  const split = mode === 'prefill' ? tokens.length : mode === 'half' ? Math.floor(tokens.length / 2) : 0;
  if (split > 0) await run(0, split);
  for (let t = split; t < tokens.length; t++) await run(t, t + 1);
  return out;
}
