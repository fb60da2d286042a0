// `harmonium serve` and `harmonium bench serve` as a user runs them (compiled, run with node, the tiny model):
// the server listens, /health turns 200, the benchmark prints vLLM's block and writes its JSON, Ctrl-C stops the
// server cleanly; a public address without a key and a step budget of 0 tokens are refused. The metric definitions are checked on known data.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RequestOutput } from '../src/bench/serve_client.js';
import { computeMetrics, formatBlock, percentile } from '../src/bench/serve_metrics.js';
import { privateBuild, root } from './helpers/private_build.js';

// A private compiled copy (test/helpers/private_build.ts): the shared dist/ is npm pack's.
let bin = '';
let env: NodeJS.ProcessEnv = process.env;
let server: ChildProcess | undefined;
let url = '';

beforeAll(async () => {
  ({ bin, env } = privateBuild('serve'));
  server = spawn(process.execPath, [bin, 'serve', '--port', '0', '--max-num-seqs', '4', '--max-num-batched-tokens', '256'], { cwd: root, env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  url = await new Promise<string>((resolve, reject) => {
    server!.stderr!.on('data', (d: Buffer) => {
      log += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(log);
      if (m) resolve(m[1]);
    });
    server!.on('exit', (code) => reject(new Error(`serve exited ${code}: ${log}`)));
  });
  for (let i = 0; i < 200 && (await fetch(`${url}/health`)).status !== 200; i++) await new Promise((r) => setTimeout(r, 100));
}, 180_000);

afterAll(() => {
  if (server && server.exitCode === null) server.kill('SIGKILL');
});

describe('harmonium serve + bench serve', () => {
  it('benchmarks the server: the block, the JSON result, then Ctrl-C stops it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hm-bench-'));
    const file = join(dir, 'result.json');
    const r = spawnSync(
      process.execPath,
      [bin, 'bench', 'serve', '--base-url', url, '--num-prompts', '8', '--random-input-len', '32', '--random-output-len', '8', '--max-concurrency', '4', '--ignore-eos', '--save-result', file, '--disable-tqdm'],
      { cwd: root, env, encoding: 'utf8', timeout: 120_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    for (const line of ['Successful requests:                     8', 'Failed requests:                         0', 'Maximum request concurrency:             4', 'Total generated tokens:                  64', 'Mean TTFT (ms):', 'P99 TPOT (ms):', 'Median ITL (ms):', 'P99 E2EL (ms):'])
      expect(r.stdout).toContain(line);
    expect(r.stdout).toContain('============ Serving Benchmark Result ============');
    const json = JSON.parse(readFileSync(file, 'utf8'));
    expect(json).toMatchObject({ completed: 8, failed: 0, total_output_tokens: 64, max_concurrency: 4, model_id: 'tiny' });
    expect(json.output_lens).toEqual(Array(8).fill(8));
    const exited = new Promise<number | null>((res) => server!.on('exit', (code) => res(code)));
    server!.kill('SIGINT');
    expect(await exited).toBe(0);
  });

  it('refuses a step budget below one token, before loading anything', () => {
    const r = spawnSync(process.execPath, [bin, 'serve', '--max-num-batched-tokens', '0'], { cwd: root, env, encoding: 'utf8', timeout: 60_000 });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/--max-num-batched-tokens.*expected an integer >= 1/);
  });

  it('refuses a public address without --api-key, before loading anything', () => {
    const r = spawnSync(process.execPath, [bin, 'serve', '--host', '0.0.0.0'], { cwd: root, env, encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/refusing to listen on 0\.0\.0\.0 without --api-key/);
  });
});

describe('serving benchmark metrics', () => {
  const out = (startTime: number, ttft: number, itl: number[], outputTokens: number): RequestOutput => ({
    success: true,
    error: '',
    promptLen: 10,
    outputTokens,
    ttft,
    itl,
    latency: ttft + itl.reduce((a, b) => a + b, 0),
    startTime,
  });

  it('defines TPOT, ITL, percentiles and peaks as vLLM does', () => {
    expect(percentile([1, 2, 3, 4], 50)).toBe(2.5);
    expect(percentile([0, 10], 99)).toBeCloseTo(9.9);
    const outputs = [out(100, 0.1, [0.02, 0.02, 0.02], 4), out(100.5, 0.3, [0.05], 2), { ...out(101, 0, [], 0), success: false, error: 'x' }];
    const m = computeMetrics(outputs, 2, [99]);
    expect([m.completed, m.failed, m.totalInput, m.totalOutput]).toEqual([2, 1, 20, 6]);
    expect(m.stats.tpot.mean).toBeCloseTo(((0.06 / 3 + 0.05 / 1) / 2) * 1000);
    expect(m.stats.itl.median).toBeCloseTo(20); // pooled: [20, 20, 20, 50]
    expect(m.stats.ttft.mean).toBeCloseTo(200);
    expect(m.outputThroughput).toBe(3);
    expect(m.peakOutputThroughput).toBe(6); // all six chunks fall in the first second
    expect(m.peakConcurrency).toBe(2);
    const block = formatBlock(m, { requestRate: Infinity, metrics: ['ttft', 'tpot', 'itl', 'e2el'] }).split('\n');
    expect(block[0]).toBe('============ Serving Benchmark Result ============');
    expect(block[1]).toBe('Successful requests:                     2         ');
    expect(block).toContain('-----Time per Output Token (excl. 1st token)------');
    expect(block).toContain('---------------Inter-token Latency----------------');
    expect(block[block.length - 1]).toBe('='.repeat(50));
  });
});
