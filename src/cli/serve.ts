// `harmonium serve`: the OpenAI-compatible server (src/server/). It listens at once: /health answers 503 with
// the load progress until the model is loaded, then 200. Ctrl-C (or SIGTERM) stops accepting, lets requests in
// flight end, and frees the model.
import { InvalidArgumentError, Option, type Command } from 'commander';
import { Harmonium } from '../api.js';
import { DEFAULT_MAX_QUEUE } from '../server/context.js';
import { isLoopback, serve, servedName } from '../server/serve.js';
import { addModelFlags, loadOptions, modelLabel, type ModelFlags } from './flags.js';
import { loadProgress } from './progress.js';

interface ServeFlags extends ModelFlags {
  host: string;
  port: number;
  apiKey?: string;
  maxNumSeqs?: number;
  maxNumBatchedTokens?: number;
  maxModelLen?: number;
  maxQueue: number;
  servedModelName?: string;
  reasoningField: 'both' | 'reasoning' | 'reasoning_content';
  enablePrefixCaching: boolean;
}

/** A whole number flag, checked here so that a typo fails before anything loads. */
export function intFlag(min: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer >= ${min}`);
    return n;
  };
}

export function registerServe(program: Command): void {
  const cmd = program
    .command('serve')
    .description('an OpenAI-compatible HTTP server (chat completions, responses, completions, models, health, metrics)')
    .option('--host <address>', 'address to bind; anything but loopback needs --api-key', '127.0.0.1')
    .option('--port <n>', 'port (0 picks a free one)', intFlag(0), 8000)
    .option('--api-key <key>', 'require "Authorization: Bearer KEY" on every route but /health')
    .option('--max-num-seqs <n>', 'requests generating at once (default: the library\'s maxSeqs)', intFlag(1))
    .option('--max-num-batched-tokens <n>', 'tokens one step holds, decodes and prompt chunks (default: the library\'s maxBatchTokens, 8192 on CUDA; 2048 or less keeps inter-token latency low while prompts are read)', intFlag(1))
    .option('--max-model-len <n>', 'longest sequence, prompt + answer (as --context-length)', intFlag(2))
    .option('--max-queue <n>', 'requests waiting beyond --max-num-seqs; more get 429', intFlag(0), DEFAULT_MAX_QUEUE)
    .option('--no-enable-prefix-caching', 'prefill every prompt from its start (no KV blocks kept and shared between requests)')
    .option('--served-model-name <name>', 'the model name clients send (default: the directory name, the dummy name or "tiny")')
    .addOption(
      new Option('--reasoning-field <name>', 'where chat messages carry the chain of thought').choices(['both', 'reasoning', 'reasoning_content']).default('both'),
    );
  addModelFlags(cmd);
  cmd.action(async (flags: ServeFlags) => {
    if (!isLoopback(flags.host) && !flags.apiKey) throw new Error(`refusing to listen on ${flags.host} without --api-key`);
    const opts = { ...loadOptions(flags), maxSeqs: flags.maxNumSeqs, maxBatchTokens: flags.maxNumBatchedTokens, prefixCaching: flags.enablePrefixCaching };  // undefined: the library's default
    if (flags.maxModelLen !== undefined) opts.contextLength = flags.maxModelLen;
    const name = flags.servedModelName ?? servedName({ source: flags.dummyWeights ?? flags.model ?? 'tiny' });
    const bar = loadProgress(`loading ${modelLabel(flags)}`);
    let onProgress = (_l: number, _t: number) => {};
    const loading = Harmonium.load({ ...opts, onProgress: (l, t) => (bar.onProgress(l, t), onProgress(l, t)) });
    loading.catch(() => undefined); // reported below, through the server's ready promise
    const server = await serve(loading, {
      host: flags.host,
      port: flags.port,
      apiKey: flags.apiKey,
      maxNumSeqs: flags.maxNumSeqs,
      maxQueue: flags.maxQueue,
      servedModelName: name,
      reasoningField: flags.reasoningField,
    });
    onProgress = server.onLoadProgress;
    process.stderr.write(`harmonium: listening on ${server.url} (GET /health is 503 until the model is loaded)\n`);
    let model: Harmonium;
    try {
      model = await server.ready;
    } catch (err) {
      await server.close();
      throw err;
    }
    bar.done();
    process.stderr.write(`harmonium: serving ${name} (context ${model.contextLength} tokens, ${model.info().deviceName}) on ${server.url}/v1\n`);
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        resolve();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
    process.stderr.write('harmonium: stopping\n');
    await server.close();
    await model.close();
  });
}
