// How a command ends other than by success: a message for the user, or a bare exit code (the command already said
// what happened, e.g. the summary after Ctrl-C). main() turns these into stderr lines and the process's exit code.

/** Ends the command with `code` and prints nothing more. */
export class CliExit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** The exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it. */
export const INTERRUPTED = 130;

/** Reads all of stdin, for the `-` argument of run and render. */
export async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
