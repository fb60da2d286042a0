// The command at its edges (issue 8), run as a user runs it (compiled, through bin/harmonium.js): pipes that
// close early, Ctrl-C, bad flags, stdin, --json and --version. Compiled into a private folder
// (test/helpers/private_build.ts: copies of the launcher and package.json, the checkout's addon).
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { privateBuild, root } from './helpers/private_build.js';

let bin = '';
let env: NodeJS.ProcessEnv = process.env;

function harmonium(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: root, encoding: 'utf8', input, env, timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  ({ bin, env } = privateBuild('cli'));
}, 180_000);

describe('pipes and signals', () => {
  it('a reader that stops early (| head -c 20): exit 0, nothing on stderr but the load bar', () => {
    const r = spawnSync('sh', ['-c', `"${process.execPath}" "${bin}" run --max-tokens 400 --show-reasoning hi | head -c 20`], {
      cwd: root,
      env,
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.status).toBe(0);
    expect(r.stdout.length).toBeLessThanOrEqual(20);
    expect(r.stderr).not.toMatch(/EPIPE|Error|at /);
  }, 120_000);

  it('Ctrl-C during run: the line is ended, the summary so far is printed, exit 130', async () => {
    const child = spawn(process.execPath, [bin, 'run', '--max-tokens', '20000', '--show-reasoning', 'hi'], { cwd: root, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    let exited = false;
    const code = new Promise<number | null>((resolve) => child.on('exit', (c) => ((exited = true), resolve(c))));
    // Interrupt once tokens are flowing (or after 20 s, which fails below: nothing was generated).
    for (let t = 0; stdout.length < 40 && !exited && t < 400; t++) await new Promise((r) => setTimeout(r, 50));
    child.kill('SIGINT');
    expect({ code: await code, stderr }).toMatchObject({ code: 130 });
    expect(stdout.endsWith('\n')).toBe(true);
    expect(stderr).toMatch(/\nprompt \d+ tokens, generated \d+ tokens, .*finish interrupted\n$/);
    expect(stderr).not.toMatch(/harmonium: interrupted/);
  }, 120_000);
});

describe('flags', () => {
  it('--version prints the package version', () => {
    const r = harmonium(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version);
  });

  it('a usage error is one line that says where the help is', () => {
    for (const args of [['run', '--bogus', 'hi'], ['run'], ['frobnicate'], ['run', '--backend', 'tpu', 'hi']]) {
      const r = harmonium(args);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^harmonium: .*; see 'harmonium( run)? --help'\n$/);
    }
  });

  it('messages name the flag and echo the value as typed', () => {
    const a = harmonium(['run', '--max-tokens', 'abc', 'hi']);
    expect(a.stderr).toMatch(/--max-tokens <n>' argument 'abc' is invalid/);
    expect(a.stderr).not.toMatch(/NaN/);
    const b = harmonium(['run', '--temperature', '5.0', 'hi']);
    expect(b.stderr).toBe('harmonium: --temperature: must be <= 2, got 5.0\n');
    const c = harmonium(['run', '--context-length', '1', 'hi']);
    expect(c.stderr).toBe('harmonium: --context-length: must be an integer >= 2, got 1\n');
    expect(c.stderr).not.toMatch(/contextLength/);
  }, 60_000);
});

describe('an install without its addon (npm install --ignore-scripts)', () => {
  it('says how to build it, in one line, with one prefix', () => {
    const r = spawnSync(process.execPath, [bin, 'run', 'hi'], {
      cwd: root,
      encoding: 'utf8',
      env: { ...env, HARMONIUM_BUILD_DIR: join(root, 'no-such-build') },
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^harmonium: the native addon is not built .*npm rebuild harmonium/m);
    expect(r.stderr).not.toMatch(/harmonium: harmonium:/);
  });
});

describe('stdin and --json', () => {
  it('run - reads the prompt from stdin; --json prints the whole result', () => {
    const r = harmonium(['run', '--max-tokens', '3', '--json', '-'], 'a question from stdin');
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout);
    expect(result.usage.completion_tokens).toBe(3);
    expect(result.usage.prompt_tokens).toBeGreaterThan(10);
    expect(result.finish_reason).toBe('length');
  }, 60_000);

  it('render - reads the request from stdin', () => {
    const r = harmonium(['render', '-'], JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }));
    expect(r.code).toBe(0);
    expect(r.stdout.endsWith('<|start|>user<|message|>hi<|end|><|start|>assistant')).toBe(true);
    const bad = harmonium(['render', '-'], JSON.stringify({ messages: [], n: 2 }));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^harmonium: stdin: /);
  });

  it('score --json', () => {
    const r = harmonium(['score', '--tokens', '1,2,3', '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.tokens).toEqual([1, 2, 3]);
    expect(j.logprobs).toHaveLength(2);
    expect(j.perplexity).toBeGreaterThan(0);
    expect(j.logits).toBeUndefined();
  }, 60_000);
});
