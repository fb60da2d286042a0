// `harmonium run "prompt"`: one question, the answer streamed. Without --model the embedded tiny model answers
// (random weights: the text is noise, the pipeline is real).
import type { Command } from 'commander';
import { Harmonium } from '../api.js';
import type { ChatMessage } from '../harmony/types.js';
import { streamAnswer } from './answer.js';
import { addModelFlags, addSamplingFlags, loadOptions, modelLabel, samplingParams, type ModelFlags, type SamplingFlags } from './flags.js';
import { loadProgress } from './progress.js';
import { resolveSampling } from '../sampling/params.js';
import { VOCAB_SIZE } from '../tokenizer/tokenizer.js';

interface RunFlags extends ModelFlags, SamplingFlags {
  showReasoning?: boolean;
}

export function registerRun(program: Command): void {
  const cmd = program
    .command('run')
    .description('answer one prompt, streaming the final answer (summary line on stderr)')
    .argument('<prompt>', 'the user message')
    .option('--show-reasoning', 'also print the chain of thought (dimmed)');
  addModelFlags(cmd);
  addSamplingFlags(cmd);
  cmd.action(async (prompt: string, flags: RunFlags) => {
    const ac = new AbortController();
    const onSigint = () => ac.abort(new Error('interrupted'));
    process.once('SIGINT', onSigint);
    resolveSampling(samplingParams(flags), VOCAB_SIZE, () => 0); // bad flags fail before the model loads
    const bar = loadProgress(`loading ${modelLabel(flags)}`);
    const model = await Harmonium.load({ ...loadOptions(flags), onProgress: bar.onProgress, signal: ac.signal });
    bar.done();
    try {
      const messages: ChatMessage[] = [];
      if (flags.system !== undefined) messages.push({ role: 'system', content: flags.system });
      messages.push({ role: 'user', content: prompt });
      const stream = model.chat(
        { messages, reasoning_effort: flags.reasoningEffort, ...samplingParams(flags) },
        { signal: ac.signal },
      );
      await streamAnswer(stream, { showReasoning: flags.showReasoning === true });
    } finally {
      process.off('SIGINT', onSigint);
      model.close();
    }
  });
}
