// The harmonium command: a thin layer over the library (src/index.ts). Each subcommand lives in its own file; this
// one owns how the process ends: one line per error (flag names, not library names), exit 1; usage errors as one
// line plus where the help is; quiet exit 0 when the reader of stdout goes away (`| head`); 130 after Ctrl-C.
import { createRequire } from 'node:module';
import { Command } from 'commander';
import { HarmoniumError } from '../errors.js';
import { CliExit } from './exit.js';
import { flagMessage } from './flags.js';
import { registerInspect } from './inspect.js';
import { registerScore } from './score.js';
import { registerRun } from './run.js';
import { registerChat } from './chat.js';
import { registerRender } from './render.js';
import { registerServe } from './serve.js';
import { registerBench } from './bench_serve.js';

/** The package's version: package.json is two levels above this file, in src/cli and in dist/cli. */
function version(): string {
  try {
    return (createRequire(import.meta.url)('../../package.json') as { version: string }).version;
  } catch {
    return 'unknown'; // compiled somewhere else (a test's scratch build)
  }
}

/** The process's entry point (bin/harmonium.js): runs the command, reports any error, sets the exit code. */
export async function cli(argv: string[]): Promise<void> {
  quietOnClosedPipe();
  try {
    await main(argv);
  } catch (err) {
    if (err instanceof CliExit) {
      process.exitCode = err.code;
      return;
    }
    process.stderr.write(`harmonium: ${err instanceof HarmoniumError ? flagMessage(err) : ((err as Error)?.message ?? String(err))}\n`);
    process.exitCode = 1;
  }
}

/** Runs the command; rejects with what went wrong (usage errors are reported by commander itself). */
export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program.name('harmonium').description('gpt-oss inference engine').version(version(), '-V, --version', 'print the version');
  registerInspect(program);
  registerScore(program);
  registerRun(program);
  registerChat(program);
  registerRender(program);
  registerServe(program);
  registerBench(program);
  for (const cmd of allCommands(program)) oneLineUsageErrors(cmd);
  await program.parseAsync(argv);
}

function allCommands(cmd: Command): Command[] {
  return [cmd, ...cmd.commands.flatMap(allCommands)];
}

/** Commander's usage errors (unknown option, missing argument, bad choice) as one line instead of the whole help. */
function oneLineUsageErrors(cmd: Command): void {
  const path: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) path.unshift(c.name());
  const name = ['harmonium', ...path].join(' ');
  cmd.configureOutput({
    outputError: (text, write) => {
      const line = text.replace(/^error: /, '').trim().replace(/\s*\n\s*/g, ' ').replace(/\.$/, '');
      write(`harmonium: ${line}; see '${name} --help'\n`);
    },
  });
}

/** A reader that stops reading (`harmonium run hi | head -c 20`) ends the command quietly: exit 0, no stack. */
function quietOnClosedPipe(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
      process.exit(0);
    });
  }
}
