// The serving benchmark's driver: one warm-up request, then every prompt sent at the request rate (all at once
// for inf, else Poisson arrivals) with at most max-concurrency in flight, a progress bar on stderr, and the
// metrics over the whole run.
import { sendRequest, type ClientOptions, type RequestOutput } from './serve_client.js';
import type { BenchRequest } from './serve_dataset.js';
import { seededRandom } from './serve_dataset.js';

export interface RunOptions extends ClientOptions {
  requestRate: number;
  maxConcurrency?: number;
  seed: number;
  /** Where the progress bar goes (undefined: none). */
  progress?: NodeJS.WriteStream;
}

function progressBar(total: number, out: NodeJS.WriteStream | undefined) {
  const start = performance.now();
  let lastDraw = 0;
  const draw = (done: number, force = false) => {
    const now = performance.now();
    if (!out || (!force && now - lastDraw < 100)) return;
    lastDraw = now;
    const secs = (now - start) / 1000;
    const width = 30;
    const filled = Math.round((done / total) * width);
    const rate = done / Math.max(secs, 1e-3);
    const eta = rate > 0 ? (total - done) / rate : 0;
    const line = `${String(Math.floor((done / total) * 100)).padStart(3)}%|${'█'.repeat(filled)}${' '.repeat(width - filled)}| ${done}/${total} [${secs.toFixed(0)}s<${eta.toFixed(0)}s, ${rate.toFixed(2)} it/s]`;
    out.write(out.isTTY ? `\r${line}` : done === total ? `${line}\n` : '');
    if (out.isTTY && done === total) out.write('\n');
  };
  return draw;
}

export async function runBenchmark(requests: BenchRequest[], o: RunOptions): Promise<{ outputs: RequestOutput[]; duration: number }> {
  const warm = await sendRequest(o, requests[0]);
  if (!warm.success) throw new Error(`the warm-up request failed: ${warm.error}`);
  const draw = progressBar(requests.length, o.progress);
  const rand = seededRandom(o.seed ^ 0x5eed);
  const limit = o.maxConcurrency ?? Infinity;
  let inFlight = 0;
  const waiters: (() => void)[] = [];
  const acquire = async () => {
    while (inFlight >= limit) await new Promise<void>((r) => waiters.push(r));
    inFlight++;
  };
  const release = () => {
    inFlight--;
    waiters.shift()?.();
  };
  let done = 0;
  const start = performance.now();
  const tasks: Promise<RequestOutput>[] = [];
  for (const r of requests) {
    await acquire();
    tasks.push(
      sendRequest(o, r).then((out) => {
        release();
        draw(++done);
        return out;
      }),
    );
    // Poisson arrivals: exponential gaps with mean 1 / rate.
    if (Number.isFinite(o.requestRate)) await new Promise((res) => setTimeout(res, (-Math.log(1 - rand()) / o.requestRate) * 1000));
  }
  const outputs = await Promise.all(tasks);
  const duration = (performance.now() - start) / 1000;
  draw(done, true);
  return { outputs, duration };
}
