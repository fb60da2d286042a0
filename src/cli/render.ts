// `harmonium render FILE.json` (or `-` for stdin): the exact harmony text (or, with --ids, the token ids) a chat request becomes,
// ending with the generation prompt `<|start|>assistant`. Nothing is added to the text, not even a newline, so
// the output can be compared byte for byte. Needs no model.
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { checkChatRequest } from '../api/validate.js';
import { renderConversation, renderConversationTokens } from '../harmony/render.js';
import type { ChatRequest } from '../harmony/types.js';
import { HarmonyTokenizer } from '../tokenizer/tokenizer.js';

export function registerRender(program: Command): void {
  program
    .command('render')
    .description('print the exact harmony text a chat request (Chat Completions JSON) renders to')
    .argument('<file>', 'a JSON request: messages, tools, reasoning_effort, model_identity, ...; - reads stdin')
    .option('--ids', 'print the token ids (comma-separated) instead of the text')
    .action((file: string, flags: { ids?: boolean }) => {
      process.stdout.write(runRender(file, flags.ids === true));
    });
}

/** The command's output; throws a one-line error naming the file on unreadable JSON or a bad request. */
export function runRender(file: string, ids: boolean): string {
  const name = file === '-' ? 'stdin' : file;
  let request: ChatRequest;
  try {
    request = JSON.parse(readFileSync(file === '-' ? 0 : file, 'utf8')) as ChatRequest;
  } catch (e) {
    throw new Error(`${name}: ${(e as Error).message}`);
  }
  if (typeof request !== 'object' || request === null || Array.isArray(request)) throw new Error(`${name}: the request must be a JSON object`);
  try {
    checkChatRequest(request);
    return ids ? renderConversationTokens(request, new HarmonyTokenizer()).join(',') + '\n' : renderConversation(request);
  } catch (e) {
    throw new Error(`${name}: ${(e as Error).message}`);
  }
}
