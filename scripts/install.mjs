#!/usr/bin/env node
// The package's install step (npm's postinstall). Builds the native addon from source with cmake-js, then:
//  - in an installed package (`npm install harmonium`): nothing else. The compiled JavaScript ships in dist/, and
//    the test programs are not built (HARMONIUM_BUILD_TESTS=OFF), so only the registry and a compiler are needed;
//  - in a dev checkout (test/ is present, devDependencies installed): the test programs too (build/hm_op_test,
//    which the GPU suites drive), then the TypeScript, exactly what `npm run build` does.
// A missing CMake or C++ compiler ends the install with one line saying what to install. HARMONIUM_WITH_CUDA=OFF
// in the environment forces a CPU-only addon (a quick build where nvcc exists but no GPU will be used).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const dev = existsSync(join(root, 'test')) && existsSync(join(root, 'tsconfig.json'));
const NEEDS = 'harmonium needs CMake >= 3.18 and a C++17 compiler to build its native addon';

function fail(message) {
  process.stderr.write(`harmonium: ${message}\n`);
  process.exit(1);
}

/** True when `cmd` runs (it is on PATH). */
function runs(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.error === undefined && r.status === 0;
}

function findCompiler() {
  const candidates = process.env.CXX ? [process.env.CXX] : ['c++', 'g++', 'clang++'];
  return candidates.find((c) => runs(c));
}

function node(script, args) {
  const r = spawnSync(process.execPath, [script, ...args], { cwd: root, stdio: 'inherit' });
  return r.status ?? 1;
}

if (!runs('cmake')) fail(`cmake not found on PATH; ${NEEDS} (install them, then run \`npm rebuild harmonium\`)`);
if (!findCompiler()) fail(`no C++ compiler found (tried ${process.env.CXX ?? 'c++, g++, clang++'}); ${NEEDS} (install one, then run \`npm rebuild harmonium\`)`);

const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
const args = ['compile', '--out', 'build', `--CDHARMONIUM_BUILD_TESTS=${dev ? 'ON' : 'OFF'}`];
if (process.env.HARMONIUM_WITH_CUDA) args.push(`--CDHARMONIUM_WITH_CUDA=${process.env.HARMONIUM_WITH_CUDA}`);
if (node(cmakeJs, args) !== 0) fail('building the native addon failed (the CMake output above says where)');

if (dev) {
  const tsc = join(dirname(require.resolve('typescript/package.json')), 'bin', 'tsc');
  if (node(tsc, ['-p', 'tsconfig.json']) !== 0) fail('compiling the TypeScript failed');
}
