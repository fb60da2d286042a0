// `harmonium score`: one prefill of the given tokens, next-token log-probabilities, perplexity, --out logits.npy,
// and a clear refusal of --backend cuda where no GPU is usable.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../src/cli/main.js';
import { parseTokenList, runScore } from '../src/cli/score.js';
import { loadModel } from '../src/model/load.js';
import { writeRandomCheckpoint } from '../src/model/tiny.js';
import { loadAddon } from '../src/native.js';
import { packageRoot } from '../src/util/package_root.js';
import { readNpy } from '../src/util/npy.js';

const CONFIG = {
  model_type: 'gpt_oss',
  hidden_size: 64,
  intermediate_size: 32,
  num_hidden_layers: 2,
  num_local_experts: 4,
  num_experts_per_tok: 2,
  num_attention_heads: 4,
  num_key_value_heads: 1,
  head_dim: 16,
  vocab_size: 96,
  sliding_window: 4,
  layer_types: ['sliding_attention', 'full_attention'],
  max_position_embeddings: 4096,
  rope_theta: 150000,
  rope_scaling: { rope_type: 'yarn', factor: 32, beta_fast: 32, beta_slow: 1, original_max_position_embeddings: 128, truncate: false },
  quantization_config: { quant_method: 'mxfp4' },
};
const TOKENS = [5, 17, 3, 88, 42, 42, 0, 95, 7, 61, 12, 33, 2, 70, 70, 9, 14, 50, 1, 6]; // 20: crosses a 16-block

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-score-'));
  await writeRandomCheckpoint(join(dir, 'model'), CONFIG, 5);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('harmonium score', () => {
  it('prints each next-token log-probability and the perplexity, and writes the logits [T, V]', async () => {
    const out = join(dir, 'logits.npy');
    let text = '';
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      text += String(chunk);
      return true;
    });
    try {
      await main(['node', 'harmonium', 'score', '--model', join(dir, 'model'), '--tokens', TOKENS.join(','), '--out', out]);
    } finally {
      write.mockRestore();
    }
    const saved = await readNpy(out);
    const V = CONFIG.vocab_size;
    expect(saved.shape).toEqual([TOKENS.length, V]);

    // The printed log-probabilities are log_softmax of the saved logits at the next token.
    const rows = text.split('\n').filter((l) => /^\s+\d+\s+\d+\s+\d+\s+-?\d+\.\d+$/.test(l));
    expect(rows.length).toBe(TOKENS.length - 1);
    let sum = 0;
    rows.forEach((line, t) => {
      const [pos, tok, next, lp] = line.trim().split(/\s+/);
      expect([Number(pos), Number(tok), Number(next)]).toEqual([t, TOKENS[t], TOKENS[t + 1]]);
      const row = saved.data.subarray(t * V, (t + 1) * V);
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((a, x) => a + Math.exp(x - m), 0));
      const want = row[TOKENS[t + 1]] - lse;
      expect(Number(lp)).toBeCloseTo(want, 5);
      sum += want;
    });
    const ppl = Number(/perplexity\s+([\d.]+) over 19 predictions/.exec(text)?.[1]);
    expect(ppl).toBeCloseTo(Math.exp(-sum / (TOKENS.length - 1)), 3);
  });

  it('gives the logits of one prefill (the same as stepping the model directly)', async () => {
    const r = await runScore({ model: join(dir, 'model'), tokens: TOKENS.join(', ') });
    const model = await loadModel({ model: join(dir, 'model'), backend: 'cpu', blockSize: 4, numBlocks: 8 });
    try {
      // Token by token, in other blocks: the CPU reference gives the same numbers however the sequence is cut.
      const V = CONFIG.vocab_size;
      for (let t = 0; t < TOKENS.length; t++) {
        const s = await model.step({
          tokens: Int32Array.of(TOKENS[t]),
          positions: Int32Array.of(t),
          seqLens: Int32Array.of(1),
          blockTables: Int32Array.of(7, 6, 5, 4, 3),
          maxBlocksPerSeq: 5,
          fullLogits: Uint8Array.of(1),
        });
        expect(Array.from(s.logits)).toEqual(Array.from(r.logits.subarray(t * V, (t + 1) * V)));
      }
    } finally {
      model.close();
    }
    expect(r.logprobs.length).toBe(TOKENS.length - 1);
    expect(r.perplexity).toBeGreaterThan(1);
  });

  it('handles one token (nothing to predict)', async () => {
    const r = await runScore({ model: join(dir, 'model'), tokens: '7' });
    expect(r.logprobs).toEqual([]);
    expect(r.perplexity).toBeNaN();
  });

  it('rejects bad token lists with a one-line message', async () => {
    expect(() => parseTokenList('')).toThrow(/empty/);
    expect(() => parseTokenList('1,x,3')).toThrow(/entry 1 \("x"\) is not a non-negative integer/);
    expect(() => parseTokenList('1,-2')).toThrow(/entry 1/);
    await expect(runScore({ model: join(dir, 'model'), tokens: '1,96' })).rejects.toThrow(/token 1 \(id 96\) is outside the vocabulary 0\.\.95/);
  });

  const noGpu = loadAddon().cudaDevices().count === 0;
  it.skipIf(!noGpu)('says clearly that --backend cuda needs a GPU when none is usable', async () => {
    await expect(main(['node', 'harmonium', 'score', '--model', join(dir, 'model'), '--tokens', '1,2', '--backend', 'cuda'])).rejects.toThrow(
      /--backend cuda needs a CUDA GPU, and none is usable here/,
    );
  });

  // The installed command (dist/, built by `npm run build`): the message and a non-zero exit code.
  const bin = join(packageRoot(), 'bin', 'harmonium.js');
  const built = existsSync(join(packageRoot(), 'dist', 'cli', 'score.js'));
  it.skipIf(!noGpu || !built)('exits non-zero from the command line for --backend cuda without a GPU', async () => {
    const run = promisify(execFile);
    const err = await run(process.execPath, [bin, 'score', '--model', join(dir, 'model'), '--tokens', '1,2', '--backend', 'cuda']).then(
      () => null,
      (e: { code?: number; stderr?: string }) => e,
    );
    expect(err).not.toBeNull();
    expect(err!.code).not.toBe(0);
    expect(err!.stderr).toMatch(/needs a CUDA GPU/);
  });
});
