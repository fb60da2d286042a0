// The harmonium command: a thin layer over the library (src/index.ts). Each subcommand lives in its own file.
import { Command } from 'commander';
import { registerInspect } from './inspect.js';
import { registerScore } from './score.js';
import { registerRun } from './run.js';
import { registerChat } from './chat.js';
import { registerRender } from './render.js';
import { registerServe } from './serve.js';
import { registerBench } from './bench_serve.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program.name('harmonium').description('gpt-oss inference engine').showHelpAfterError();
  registerInspect(program);
  registerScore(program);
  registerRun(program);
  registerChat(program);
  registerRender(program);
  registerServe(program);
  registerBench(program);
  await program.parseAsync(argv);
}
