// Streams one chat answer to the terminal: the final answer on stdout as it comes; the chain of thought hidden,
// or dimmed before it with --show-reasoning; tool calls as one line each on stderr; the summary line on stderr.
// Stopped by its signal (Ctrl-C), it still ends the line and prints the summary so far, `finish interrupted`.
import type { ChatEvent, ChatResult, Stream } from '../api/types.js';
import { summaryLine } from './progress.js';

export interface AnswerOptions {
  showReasoning: boolean;
  /** The signal the stream was started with: when it fires, the answer is cut short, and the error rethrown. */
  signal?: AbortSignal;
  out?: NodeJS.WriteStream;
  err?: NodeJS.WriteStream;
}

export async function streamAnswer(stream: Stream<ChatEvent, ChatResult>, opts: AnswerOptions): Promise<ChatResult> {
  const out = opts.out ?? process.stdout;
  const err = opts.err ?? process.stderr;
  const dim = out.isTTY === true;
  const state = { mode: 'none' as 'none' | 'reasoning' | 'content', endsWithNewline: true };
  const write = (text: string) => {
    if (!text) return;
    out.write(text);
    state.endsWithNewline = text.endsWith('\n');
  };
  const endLine = () => {
    if (state.mode === 'reasoning' && dim) out.write('\x1b[22m');
    if (!state.endsWithNewline) write('\n');
  };
  try {
    for await (const e of stream) {
      if (e.type === 'reasoning' && opts.showReasoning) {
        if (state.mode !== 'reasoning') {
          if (state.mode !== 'none' && !state.endsWithNewline) write('\n');
          if (dim) out.write('\x1b[2m');
          state.mode = 'reasoning';
        }
        write(e.delta);
      } else if (e.type === 'content') {
        if (state.mode === 'reasoning') {
          if (dim) out.write('\x1b[22m');
          if (!state.endsWithNewline) write('\n');
        }
        state.mode = 'content';
        write(e.delta);
      } else if (e.type === 'tool_call') {
        err.write(`[tool call] ${e.tool_call.function.name}(${e.tool_call.function.arguments})\n`);
      }
    }
  } catch (e) {
    if (!opts.signal?.aborted) throw e;
    endLine();
    const { usage, timings } = stream.progress();
    err.write(`${summaryLine(usage, timings, 'interrupted')}\n`);
    throw e;
  }
  endLine();
  const result = await stream.result;
  err.write(`${summaryLine(result.usage, result.timings, result.finish_reason)}${result.malformed ? ' (output not in harmony format)' : ''}\n`);
  return result;
}
