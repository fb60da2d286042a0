// The harmonium command end to end, as a user runs it: compiled with tsc, run with node, on the embedded tiny
// model (random weights: the answer is noise, so the checks are on structure, determinism and the summary line).
// Compiled into a private folder (test/helpers/private_build.ts).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { renderConversationTokens } from '../src/harmony/render.js';
import { HarmonyTokenizer } from '../src/tokenizer/tokenizer.js';
import { privateBuild, root, type PrivateBuild } from './helpers/private_build.js';

let cli: PrivateBuild;
const casesDir = join(root, '..', 'shared', 'spec', 'harmony-cases');

function harmonium(...args: string[]) {
  const r = spawnSync(process.execPath, [cli.bin, ...args], { cwd: root, encoding: 'utf8', env: cli.env, timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const SUMMARY = /^prompt (\d+) tokens, generated (\d+) tokens, time to first token \d+ ms, [\d.]+ tokens\/s, finish (stop|length|tool_calls)/m;

const H4_REQUEST = {
  current_date: '2026-01-15',
  reasoning_effort: 'low',
  messages: [
    { role: 'user', content: 'What is 2 + 2?' },
    { role: 'assistant', reasoning: 'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.', content: '2 + 2 equals 4.' },
    { role: 'user', content: 'What about 9 / 2?' },
  ],
};

beforeAll(() => {
  cli = privateBuild('e2e');
}, 180_000);

describe('harmonium run', () => {
  it('answers "hi" on the embedded model and ends with the summary line', () => {
    const r = harmonium('run', 'hi');
    expect(r.stderr).toMatch(SUMMARY);
    expect(r.code).toBe(0);
    const [, prompt, generated] = SUMMARY.exec(r.stderr)!;
    expect(Number(prompt)).toBeGreaterThan(10);
    expect(Number(generated)).toBe(64); // the tiny model's default max_tokens bounds the run
    expect(r.stderr).toMatch(/loading tiny model \[#+\] [\d.]+ MB \/ [\d.]+ MB +[\d.]+ [KMG]?B\/s/);
  }, 180_000);

  it('is deterministic for a seed, and --max-tokens bounds it', () => {
    const a = harmonium('run', '--seed', '11', '--max-tokens', '9', '--show-reasoning', 'tell me a story');
    const b = harmonium('run', '--seed', '11', '--max-tokens', '9', '--show-reasoning', 'tell me a story');
    expect(a.code).toBe(0);
    expect(a.stdout).toBe(b.stdout);
    expect(SUMMARY.exec(a.stderr)![2]).toBe('9');
  }, 180_000);

  it('refuses out-of-range sampling values with a one-line error', () => {
    const r = harmonium('run', '--temperature', '5', 'hi');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/harmonium: --temperature: must be <= 2, got 5/);
    const k = harmonium('run', '--top-k', 'many', 'hi');
    expect(k.code).toBe(1);
    expect(k.stderr).toMatch(/'--top-k <k>' argument 'many' is invalid/);
    expect(k.stderr).not.toMatch(/loading/);
  }, 180_000);
});

describe('harmonium chat', () => {
  it('keeps the conversation across turns; /reset starts over', () => {
    const r = spawnSync(process.execPath, [cli.bin, 'chat', '--max-tokens', '4', '--seed', '2'], {
      cwd: root,
      encoding: 'utf8',
      input: 'first question\nsecond question\n/reset\nsecond question\n/exit\n',
      env: cli.env,
      timeout: 120_000,
    });
    expect(r.status).toBe(0);
    const prompts = [...r.stderr.matchAll(new RegExp(SUMMARY.source, 'gm'))].map((m) => Number(m[1]));
    expect(prompts).toHaveLength(3);
    expect(prompts[1]).toBeGreaterThan(prompts[0]); // the first exchange is part of the second prompt
    expect(prompts[2]).toBeLessThan(prompts[1]);
    expect(r.stderr).toContain('(conversation cleared)');
  }, 180_000);
});

describe('harmonium render', () => {
  const dir = mkdtempSync(join(tmpdir(), 'harmonium-render-'));
  const file = join(dir, 'request.json');
  writeFileSync(file, JSON.stringify(H4_REQUEST));

  // The expected rendering lives in ../shared/spec (beside the checkout in CI and here); skip where it is absent.
  it.skipIf(!existsSync(join(casesDir, 'H4.expected')))('prints exactly the harmony text, nothing added', () => {
    const r = harmonium('render', file);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(readFileSync(join(casesDir, 'H4.expected'), 'utf8'));
    expect(r.stdout.endsWith('<|start|>assistant')).toBe(true);
  }, 60_000);

  it('--ids prints the token ids', () => {
    const r = harmonium('render', file, '--ids');
    expect(r.code).toBe(0);
    const ids = r.stdout.trim().split(',').map(Number);
    expect(ids).toEqual(renderConversationTokens(H4_REQUEST as never, new HarmonyTokenizer()));
    expect(ids[0]).toBe(200006);
    expect(ids.slice(-2)).toEqual([200006, 173781]);
  }, 60_000);

  it('names the file on a bad request', () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ messages: [{ role: 'robot', content: 'x' }] }));
    const r = harmonium('render', bad);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(bad);
    expect(r.stderr).toMatch(/robot/);
    writeFileSync(bad, '{ not json');
    expect(harmonium('render', bad).stderr).toContain(bad);
  }, 60_000);
});
