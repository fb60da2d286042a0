// `harmonium run "prompt"`: one question, the answer streamed (or, with --json, the whole result as JSON). The
// prompt `-` is read from stdin. Without --model the embedded tiny model answers (random weights: the text is
// noise, the pipeline is real). Ctrl-C ends the line, prints the summary so far and exits 130.
import type { Command } from 'commander';
import { Harmonium } from '../api.js';
import type { ChatMessage } from '../harmony/types.js';
import { streamAnswer } from './answer.js';
import { CliExit, INTERRUPTED, readStdin } from './exit.js';
import { addModelFlags, addSamplingFlags, loadOptions, modelLabel, samplingParams, type ModelFlags, type SamplingFlags } from './flags.js';
import { loadProgress } from './progress.js';
import { resolveSampling } from '../sampling/params.js';
import { VOCAB_SIZE } from '../tokenizer/tokenizer.js';

interface RunFlags extends ModelFlags, SamplingFlags {
  showReasoning?: boolean;
  json?: boolean;
}

export function registerRun(program: Command): void {
  const cmd = program
    .command('run')
    .description('answer one prompt, streaming the final answer (summary line on stderr)')
    .argument('<prompt>', 'the user message, or - to read it from stdin')
    .option('--show-reasoning', 'also print the chain of thought (dimmed)')
    .option('--json', 'print the whole result (content, reasoning, tool calls, usage, timings) as JSON, no streaming');
  addModelFlags(cmd);
  addSamplingFlags(cmd);
  cmd.action(async (prompt: string, flags: RunFlags) => {
    resolveSampling(samplingParams(flags), VOCAB_SIZE, () => 0); // bad flags fail before the model loads
    const text = prompt === '-' ? await readStdin() : prompt;
    const ac = new AbortController();
    const onSigint = () => ac.abort(new Error('interrupted'));
    process.once('SIGINT', onSigint);
    let model: Harmonium | undefined;
    try {
      const bar = loadProgress(`loading ${modelLabel(flags)}`);
      model = await Harmonium.load({ ...loadOptions(flags), onProgress: bar.onProgress, signal: ac.signal });
      bar.done();
      const messages: ChatMessage[] = [];
      if (flags.system !== undefined) messages.push({ role: 'system', content: flags.system });
      messages.push({ role: 'user', content: text });
      const stream = model.chat({ messages, reasoning_effort: flags.reasoningEffort, ...samplingParams(flags) }, { signal: ac.signal });
      if (flags.json) process.stdout.write(JSON.stringify(await stream.result, null, 2) + '\n');
      else await streamAnswer(stream, { showReasoning: flags.showReasoning === true, signal: ac.signal });
    } catch (err) {
      if (!ac.signal.aborted) throw err;
      if (model === undefined || flags.json) process.stderr.write('\n');
      throw new CliExit(INTERRUPTED);
    } finally {
      process.off('SIGINT', onSigint);
      await model?.close();
    }
  });
}
