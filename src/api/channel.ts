// A push-to-pull bridge: the engine pushes events as tokens come, a consumer pulls them with `for await`.
// Events are buffered, so a consumer may start late or never (then only `.result` is used).

export class EventChannel<T> implements AsyncIterable<T> {
  private readonly buffer: T[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private error: unknown;
  private failed = false;

  push(event: T): void {
    if (this.ended) return;
    this.buffer.push(event);
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  fail(err: unknown): void {
    if (this.ended) return;
    this.failed = true;
    this.error = err;
    this.end();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.buffer.length > 0) {
        yield this.buffer.shift()!;
        continue;
      }
      if (this.ended) {
        if (this.failed) throw this.error;
        return;
      }
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }
}
