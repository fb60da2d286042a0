// Options shared by `run` and `chat`: which model to load, and the sampling flags (OpenAI's names, dashed).
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { HarmoniumError } from '../errors.js';
import type { HarmoniumLoadOptions } from '../api/types.js';
import { DUMMY_MODEL_NAMES, type DummyModelName } from '../model/dummy.js';
import type { ReasoningEffort } from '../harmony/types.js';
import type { SamplingParams } from '../sampling/params.js';

export interface ModelFlags {
  model?: string;
  backend: 'cpu' | 'cuda';
  dummyWeights?: string;
  contextLength?: number;
}

export interface SamplingFlags {
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
  seed?: number;
  maxTokens?: number;
  stop?: string[];
  reasoningEffort?: ReasoningEffort;
  system?: string;
}

/** The text each number flag was given, by library name, so that a range error echoes what was typed. */
const typed = new Map<string, string>();

/** A number flag: anything that is not a number is refused here, naming the flag and the text given. */
function number(param: string) {
  return (v: string) => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('It is not a number.');
    typed.set(param, v);
    return n;
  };
}

/** Library names (options of load(), request fields) to the flags that set them. */
const FLAG_OF: Record<string, string> = {
  model: '--model',
  backend: '--backend',
  dummyWeights: '--dummy-weights',
  contextLength: '--context-length',
  temperature: '--temperature',
  top_p: '--top-p',
  top_k: '--top-k',
  min_p: '--min-p',
  repetition_penalty: '--repetition-penalty',
  frequency_penalty: '--frequency-penalty',
  presence_penalty: '--presence-penalty',
  seed: '--seed',
  max_tokens: '--max-tokens',
  stop: '--stop',
  reasoning_effort: '--reasoning-effort',
};

/**
 * A library error as the CLI says it: `temperature: must be <= 2, got 5` becomes
 * `--temperature: must be <= 2, got 5` (with the value as typed, e.g. `5.0`).
 */
export function flagMessage(err: HarmoniumError): string {
  const flag = err.param === undefined ? undefined : FLAG_OF[err.param];
  if (!flag || !err.message.startsWith(`${err.param}: `)) return err.message;
  let rest = err.message.slice(err.param!.length + 2);
  const raw = typed.get(err.param!);
  if (raw !== undefined) rest = rest.replace(/, got [^,]*$/, `, got ${raw}`);
  return `${flag}: ${rest}`;
}

export function addModelFlags(cmd: Command): Command {
  return cmd
    .option('--model <dir>', 'a gpt-oss checkpoint directory (default: the embedded tiny model)')
    .addOption(new Option('--backend <name>', 'where to run').choices(['cpu', 'cuda']).default('cpu'))
    .addOption(new Option('--dummy-weights <name>', 'random weights with a real gpt-oss shape').choices([...DUMMY_MODEL_NAMES]))
    .option('--context-length <n>', 'longest sequence, prompt + answer', number('contextLength'));
}

export function addSamplingFlags(cmd: Command): Command {
  return cmd
    .option('--temperature <t>', '0 = greedy (default 1)', number('temperature'))
    .option('--top-p <p>', 'nucleus sampling, (0, 1]', number('top_p'))
    .option('--top-k <k>', 'keep the k most likely tokens', number('top_k'))
    .option('--min-p <p>', 'drop tokens below p times the most likely one', number('min_p'))
    .option('--repetition-penalty <r>', '> 1 discourages tokens already seen', number('repetition_penalty'))
    .option('--frequency-penalty <f>', '-2..2, per earlier occurrence', number('frequency_penalty'))
    .option('--presence-penalty <p>', '-2..2, once per token seen', number('presence_penalty'))
    .option('--seed <n>', 'same seed, same answer', number('seed'))
    .option('--max-tokens <n>', 'generated tokens at most', number('max_tokens'))
    .option('--stop <text>', 'stop before this text (repeatable)', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .addOption(new Option('--reasoning-effort <level>', 'how long the model thinks').choices(['low', 'medium', 'high']))
    .option('--system <text>', 'instructions (the developer message)');
}

export function loadOptions(f: ModelFlags): HarmoniumLoadOptions {
  return {
    model: f.model,
    backend: f.backend,
    dummyWeights: f.dummyWeights as DummyModelName | undefined,
    contextLength: f.contextLength,
  };
}

export function samplingParams(f: SamplingFlags): SamplingParams {
  const p: SamplingParams = {};
  if (f.temperature !== undefined) p.temperature = f.temperature;
  if (f.topP !== undefined) p.top_p = f.topP;
  if (f.topK !== undefined) p.top_k = f.topK;
  if (f.minP !== undefined) p.min_p = f.minP;
  if (f.repetitionPenalty !== undefined) p.repetition_penalty = f.repetitionPenalty;
  if (f.frequencyPenalty !== undefined) p.frequency_penalty = f.frequencyPenalty;
  if (f.presencePenalty !== undefined) p.presence_penalty = f.presencePenalty;
  if (f.seed !== undefined) p.seed = f.seed;
  if (f.maxTokens !== undefined) p.max_tokens = f.maxTokens;
  if (f.stop !== undefined) p.stop = f.stop;
  return p;
}

/** The label of the load bar: what is being loaded. */
export function modelLabel(f: ModelFlags): string {
  return f.dummyWeights ? `${f.dummyWeights} (dummy)` : f.model ? 'model' : 'tiny model';
}
