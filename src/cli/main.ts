// The harmonium command: a thin layer over the library (src/index.ts). Each subcommand lives in its own file.
import { Command } from 'commander';
import { registerInspect } from './inspect.js';
import { registerScore } from './score.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program.name('harmonium').description('gpt-oss inference engine').showHelpAfterError();
  registerInspect(program);
  registerScore(program);
  await program.parseAsync(argv);
}
