// The harmonium command: a thin layer over the library (src/index.ts). Each subcommand lives in its own file.
import { Command } from 'commander';

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program.name('harmonium').description('gpt-oss inference engine').showHelpAfterError();
  await program.parseAsync(argv);
}
