// `harmonium inspect`: the sizes of the real gpt-oss models (docs/model.md's figures), the embedded tiny model, and
// the CLI's one-line errors with exit code 1. The CLI is compiled into a private folder and run through a copy of
// bin/harmonium.js (test/helpers/private_build.ts), so this test does not depend on (or disturb) the shared dist/.
import { describe, expect, it, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectReport, runInspect } from '../src/cli/inspect.js';
import { dummyConfig, dummyTensors } from '../src/model/dummy.js';
import { expectedTensors } from '../src/model/checkpoint.js';
import { ensureTinyModel, TINY_CONFIG_JSON } from '../src/model/tiny.js';
import { privateBuild } from './helpers/private_build.js';

let bin = '';
let env: NodeJS.ProcessEnv = process.env;

function cli(...args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env });
}

beforeAll(() => {
  ({ bin, env } = privateBuild('inspect'));
}, 300_000);

describe('inspect', () => {
  it('gpt-oss-120b: ~116.8 B total, ~5.1 B active, 5.0 GB read per decoded token', async () => {
    const r = await inspectReport({ dummyWeights: 'gpt-oss-120b' });
    expect(r.sizes.params.total / 1e9).toBeCloseTo(116.83, 1);
    expect(r.sizes.params.activePerToken / 1e9).toBeCloseTo(5.13, 1);
    expect(r.sizes.bytes.perExpert / 1e6).toBeCloseTo(13.24, 1);
    expect(r.sizes.decodeBytesPerToken.experts / 1e9).toBeCloseTo(1.906, 2);
    expect(r.sizes.decodeBytesPerToken.attentionRouter / 1e9).toBeCloseTo(1.937, 2);
    expect(r.sizes.decodeBytesPerToken.lmHead / 1e9).toBeCloseTo(1.158, 2);
    expect(r.sizes.decodeBytesPerToken.total / 1e9).toBeCloseTo(5.0, 1);
    expect(r.sizes.kvBytesPerContextToken).toBe(36864);
    expect(r.slidingLayers).toEqual(Array.from({ length: 18 }, (_, i) => 2 * i));
  });

  it('gpt-oss-20b: ~20.9 B total, ~3.6 B active, 3.71 GB read per decoded token', async () => {
    const r = await inspectReport({ dummyWeights: 'gpt-oss-20b' });
    expect(r.sizes.params.total / 1e9).toBeCloseTo(20.91, 1);
    expect(r.sizes.params.activePerToken / 1e9).toBeCloseTo(3.61, 1);
    expect(r.sizes.decodeBytesPerToken.experts / 1e9).toBeCloseTo(1.271, 2);
    expect(r.sizes.decodeBytesPerToken.attentionRouter / 1e9).toBeCloseTo(1.279, 2);
    expect(r.sizes.decodeBytesPerToken.total / 1e9).toBeCloseTo(3.71, 2);
    expect(r.fullLayers).toHaveLength(12);
  });

  it('dummy tensors match the expected list with real byte sizes', () => {
    const c = dummyConfig('gpt-oss-20b');
    const t = dummyTensors(c);
    expect(t.map((x) => x.name)).toEqual(expectedTensors(c).map((x) => x.name));
    expect(t.every((x) => x.file === '' && x.offset === 0)).toBe(true);
    const blocks = t.find((x) => x.name === 'model.layers.0.mlp.experts.gate_up_proj_blocks')!;
    expect(blocks.shape).toEqual([32, 5760, 90, 16]);
    expect(blocks.nbytes).toBe(32 * 5760 * 90 * 16);
  });

  it('the tiny model: real layout, real vocabulary, deterministic, inspectable', async () => {
    const dir = await ensureTinyModel();
    expect(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))).toEqual(TINY_CONFIG_JSON);
    const r = await inspectReport({ model: dir });
    expect(r.config.vocabSize).toBe(201088);
    expect(r.config.expertFormat).toBe('mxfp4');
    expect(r.config.layerSliding).toEqual([true, false, true, false]);
    expect(r.checkpoint!.tensorBytes).toBe(r.sizes.bytes.total);
    // Regenerating elsewhere gives the same bytes (seeded PRNG, no clock or platform dependence).
    const { writeRandomCheckpoint, TINY_SEED } = await import('../src/model/tiny.js');
    const again = await mkdtemp(join(tmpdir(), 'hm-tiny-'));
    const t0 = Date.now();
    await writeRandomCheckpoint(again, TINY_CONFIG_JSON, TINY_SEED);
    expect(Date.now() - t0).toBeLessThan(5000);
    const [a, b] = await Promise.all([readFile(join(dir, 'model.safetensors')), readFile(join(again, 'model.safetensors'))]);
    await rm(again, { recursive: true, force: true });
    expect(a.equals(b)).toBe(true);
  });

  it('prints the text report and the JSON report', async () => {
    const text = await runInspect({ dummyWeights: 'gpt-oss-120b' });
    expect(text).toMatch(/116\.83 B total, 5\.13 B active per token/);
    expect(text).toMatch(/sliding \(window 128\) 0 2 4 /);
    const json = JSON.parse(await runInspect({ dummyWeights: 'gpt-oss-20b', json: true }));
    expect(json.config.numExperts).toBe(32);
  });

  it('the CLI prints the report and exits 0', () => {
    const r = cli('inspect', '--dummy-weights', 'gpt-oss-120b');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/parameters +116\.83 B total/);
    expect(r.stdout).toMatch(/total +5\.003 GB/);
  });

  it('the CLI fails with one line naming the file and the tensor, exit code 1', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hm-insp-'));
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...TINY_CONFIG_JSON, hidden_size: 'big' }));
    let r = cli('inspect', '--model', dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`harmonium: ${join(dir, 'config.json')}: hidden_size: must be an integer, got "big"\n`);
    await writeFile(join(dir, 'config.json'), JSON.stringify(TINY_CONFIG_JSON));
    r = cli('inspect', '--model', dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^harmonium: .*model\.safetensors: file: missing/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    r = cli('inspect', '--dummy-weights', 'gpt-oss-7b');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/gpt-oss-7b/);
    await rm(dir, { recursive: true, force: true });
  });
});
