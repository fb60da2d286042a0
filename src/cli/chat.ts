// `harmonium chat`: an interactive multi-turn session. Each answer streams as in `run`; the conversation so far is
// sent with every turn (the renderer drops finished turns' chain of thought, as the harmony format requires).
// Ctrl-C stops an answer in progress; Ctrl-C at the prompt, Ctrl-D or /exit leaves; /reset starts over.
import { createInterface } from 'node:readline/promises';
import type { Command } from 'commander';
import { Harmonium } from '../api.js';
import type { ChatMessage } from '../harmony/types.js';
import { streamAnswer } from './answer.js';
import { addModelFlags, addSamplingFlags, loadOptions, modelLabel, samplingParams, type ModelFlags, type SamplingFlags } from './flags.js';
import { loadProgress } from './progress.js';
import { resolveSampling } from '../sampling/params.js';
import { VOCAB_SIZE } from '../tokenizer/tokenizer.js';

interface ChatFlags extends ModelFlags, SamplingFlags {
  showReasoning?: boolean;
}

export function registerChat(program: Command): void {
  const cmd = program
    .command('chat')
    .description('interactive multi-turn chat (/reset starts over, /exit or Ctrl-D leaves)')
    .option('--show-reasoning', 'also print the chain of thought (dimmed)');
  addModelFlags(cmd);
  addSamplingFlags(cmd);
  cmd.action(async (flags: ChatFlags) => {
    resolveSampling(samplingParams(flags), VOCAB_SIZE, () => 0); // bad flags fail before the model loads
    const bar = loadProgress(`loading ${modelLabel(flags)}`);
    const model = await Harmonium.load({ ...loadOptions(flags), onProgress: bar.onProgress });
    bar.done();
    try {
      await chatLoop(model, flags);
    } finally {
      await model.close();
    }
  });
}

async function chatLoop(model: Harmonium, flags: ChatFlags): Promise<void> {
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY === true });
  const start = (): ChatMessage[] => (flags.system !== undefined ? [{ role: 'system', content: flags.system }] : []);
  let messages = start();
  let answering: AbortController | undefined;
  rl.on('SIGINT', () => {
    if (answering) answering.abort(new Error('interrupted'));
    else rl.close();
  });
  const lines = rl[Symbol.asyncIterator]();
  for (;;) {
    if (process.stdin.isTTY) process.stdout.write('> ');
    const next = await lines.next();
    if (next.done) break;
    const text = next.value.trim();
    if (text === '') continue;
    if (text === '/exit' || text === '/quit') break;
    if (text === '/reset') {
      messages = start();
      process.stderr.write('(conversation cleared)\n');
      continue;
    }
    messages.push({ role: 'user', content: text });
    answering = new AbortController();
    try {
      const result = await streamAnswer(
        model.chat({ messages, reasoning_effort: flags.reasoningEffort, ...samplingParams(flags) }, { signal: answering.signal }),
        { showReasoning: flags.showReasoning === true, signal: answering.signal },
      );
      messages.push({
        role: 'assistant',
        content: result.content,
        reasoning: result.reasoning || undefined,
        tool_calls: result.tool_calls.length ? result.tool_calls : undefined,
      });
    } catch (e) {
      messages.pop();
      process.stderr.write(answering.signal.aborted ? '(answer stopped)\n' : `error: ${(e as Error).message}\n`);
    } finally {
      answering = undefined;
    }
  }
  rl.close();
}
