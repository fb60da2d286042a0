// Streams one chat answer to the terminal: the final answer on stdout as it comes; the chain of thought hidden,
// or dimmed before it with --show-reasoning; tool calls as one line each on stderr; the summary line on stderr.
import type { ChatEvent, ChatResult, Stream } from '../api/types.js';
import { summaryLine } from './progress.js';

export interface AnswerOptions {
  showReasoning: boolean;
  out?: NodeJS.WriteStream;
  err?: NodeJS.WriteStream;
}

export async function streamAnswer(stream: Stream<ChatEvent, ChatResult>, opts: AnswerOptions): Promise<ChatResult> {
  const out = opts.out ?? process.stdout;
  const err = opts.err ?? process.stderr;
  const dim = out.isTTY === true;
  let mode: 'none' | 'reasoning' | 'content' = 'none';
  let endsWithNewline = true;
  const write = (text: string) => {
    if (!text) return;
    out.write(text);
    endsWithNewline = text.endsWith('\n');
  };
  for await (const e of stream) {
    if (e.type === 'reasoning' && opts.showReasoning) {
      if (mode !== 'reasoning') {
        if (mode !== 'none' && !endsWithNewline) write('\n');
        if (dim) out.write('\x1b[2m');
        mode = 'reasoning';
      }
      write(e.delta);
    } else if (e.type === 'content') {
      if (mode === 'reasoning') {
        if (dim) out.write('\x1b[22m');
        if (!endsWithNewline) write('\n');
      }
      mode = 'content';
      write(e.delta);
    } else if (e.type === 'tool_call') {
      err.write(`[tool call] ${e.tool_call.function.name}(${e.tool_call.function.arguments})\n`);
    }
  }
  if (mode === 'reasoning' && dim) out.write('\x1b[22m');
  if (!endsWithNewline) write('\n');
  const result = await stream.result;
  err.write(`${summaryLine(result.usage, result.timings, result.finish_reason)}${result.malformed ? ' (output not in harmony format)' : ''}\n`);
  return result;
}
