// The package as npm ships it (issue 8): what the tarball holds, and the install step's behaviour on a machine
// without CMake or a compiler. The full pack, install and run check is .ci/pack_check (CI runs it).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));

describe('the tarball', () => {
  // --ignore-scripts: list what would ship without running prepack's tsc (dist/ is already built by npm ci).
  const listing = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--ignore-scripts', '--json'], { cwd: root, encoding: 'utf8' }));
  const files: string[] = listing[0].files.map((f: { path: string }) => f.path);

  it('holds the compiled JavaScript, the launcher, the install script and the addon sources', () => {
    for (const f of ['package.json', 'bin/harmonium.js', 'dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js', 'scripts/install.mjs', 'CMakeLists.txt', 'native/addon.cpp'])
      expect(files).toContain(f);
  });

  it('holds no tests, fixtures, benchmarks, logs or CI files', () => {
    expect(files.filter((f) => /^(test|bench|\.ci|src)\//.test(f) || f.endsWith('.log'))).toEqual([]);
    expect(listing[0].size).toBeLessThan(1_000_000);
  });

  it('installs without devDependencies: postinstall runs only the install script, never tsc', () => {
    expect(pkg.scripts.postinstall).toBe('node scripts/install.mjs');
    expect(pkg.scripts.prepack).toMatch(/tsc/);
    // cmake-js takes the Node-API headers from a package instead of downloading Node's headers.
    expect(pkg.binary.napi_versions.length).toBeGreaterThan(0);
  });
});

describe('the install step without build tools', () => {
  const install = (path: string) =>
    spawnSync(process.execPath, [join(root, 'scripts', 'install.mjs')], {
      cwd: root,
      encoding: 'utf8',
      env: { HOME: process.env.HOME, PATH: path },
      timeout: 30_000,
    });

  it('no cmake on PATH: one line saying what to install, exit 1', () => {
    const r = install(mkdtempSync(join(tmpdir(), 'hm-nopath-')));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^harmonium: cmake not found on PATH; harmonium needs CMake >= 3\.18 and a C\+\+17 compiler .*npm rebuild harmonium.*\n$/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  const cmake = spawnSync('sh', ['-c', 'command -v cmake'], { encoding: 'utf8' }).stdout.trim();
  it.skipIf(!cmake)('cmake but no C++ compiler: one line, exit 1', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hm-cmakeonly-'));
    symlinkSync(cmake, join(dir, 'cmake'));
    const r = install(dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^harmonium: no C\+\+ compiler found \(tried c\+\+, g\+\+, clang\+\+\);.*\n$/);
  });
});
