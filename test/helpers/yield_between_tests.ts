// Loaded before every test file (vitest.config.ts setupFiles). Several suites run seconds of synchronous work per
// test (full-vocabulary sampling references); back to back, they can hold a worker's event loop for over a minute,
// and vitest then fails the run with `Timeout calling "onTaskUpdate"` (its RPC answer waited behind the tests).
// Yielding to the event loop before each test lets the worker answer its runner in between.
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { beforeEach } from 'vitest';

beforeEach(async () => {
  await yieldToEventLoop();
});
