import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/helpers/yield_between_tests.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The CPU reference is multi-threaded itself; running test files two at a time is enough on 2 cores.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
