// Load progress on stderr: a bar with bytes and rate, redrawn on a terminal, one closing line otherwise (logs, CI).
// Also the one-line run summary every generation command ends with.
import type { Timings, Usage } from '../api/types.js';

export function formatBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let u = 0;
  while (n >= 1000 && u < units.length - 1) {
    n /= 1000;
    u++;
  }
  return `${n.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

export interface LoadProgress {
  onProgress(loaded: number, total: number): void;
  /** Ends the bar with the total time. */
  done(): void;
}

export function loadProgress(label: string, out: NodeJS.WriteStream = process.stderr): LoadProgress {
  const start = performance.now();
  const tty = out.isTTY === true;
  let lastDraw = 0;
  let loaded = 0;
  let total = 0;
  const line = () => {
    const secs = Math.max((performance.now() - start) / 1000, 1e-3);
    const rate = `${formatBytes(loaded / secs)}/s`;
    const frac = total > 0 ? Math.min(loaded / total, 1) : 0;
    const width = 24;
    const filled = Math.round(frac * width);
    return `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${formatBytes(loaded)} / ${formatBytes(total)}  ${rate}`;
  };
  return {
    onProgress(l, t) {
      loaded = l;
      total = t;
      const now = performance.now();
      // Not a terminal (a log, CI): only the closing line, from done().
      if (!tty || (now - lastDraw < 80 && l < t)) return;
      lastDraw = now;
      out.write(`\r${line()}\x1b[K`);
    },
    done() {
      const secs = (performance.now() - start) / 1000;
      const text = `${line()}  ${secs.toFixed(1)} s`;
      out.write(tty ? `\r${text}\x1b[K\n` : `${text}\n`);
    },
  };
}

/** `prompt 83 tokens, generated 64 tokens, time to first token 120 ms, 45.2 tokens/s, finish length` */
export function summaryLine(usage: Usage, timings: Timings, finish: string): string {
  return (
    `prompt ${usage.prompt_tokens} tokens, generated ${usage.completion_tokens} tokens, ` +
    `time to first token ${timings.time_to_first_token_ms.toFixed(0)} ms, ` +
    `${timings.tokens_per_second.toFixed(1)} tokens/s, finish ${finish}`
  );
}
