// Admission control: at most max-num-seqs requests generate and max-queue more wait; the rest are refused with
// 429 + Retry-After at once, before anything is rendered. A slot is held from admission until the request ends
// (finished, failed or its client gone), so the count is exact.
import { ApiError } from './errors.js';

export class Admission {
  private active = 0;

  constructor(
    /** Requests the engine runs at once (max-num-seqs). */
    private readonly running: () => number,
    /** Requests that may wait beyond those. */
    readonly maxQueue: number,
  ) {}

  get inFlight(): number {
    return this.active;
  }

  /** Takes a slot or throws the 429; the returned function gives the slot back (once). */
  enter(): () => void {
    const running = this.running();
    if (this.active >= running + this.maxQueue)
      throw new ApiError(429, 'rate_limit_exceeded', `the server is at capacity (${running} running, ${this.maxQueue} queued); retry later`, null, {
        'retry-after': '1',
      });
    this.active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active--;
    };
  }
}
