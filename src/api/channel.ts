// A push-to-pull bridge: the engine pushes events as tokens come, a consumer pulls them with `for await`.
// Events are buffered, so a consumer may start late or never (then only `.result` is used). A consumer that
// leaves early (break, return()) cancels: onCancel runs once, and what is buffered is dropped.

export class EventChannel<T> implements AsyncIterable<T> {
  private readonly buffer: T[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private error: unknown;
  private failed = false;

  constructor(private readonly onCancel: () => void = () => undefined) {}

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

  private cancel(): void {
    if (this.ended) return;
    this.buffer.length = 0;
    this.end();
    this.onCancel();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private async next(): Promise<IteratorResult<T, undefined>> {
    for (;;) {
      if (this.buffer.length > 0) return { done: false, value: this.buffer.shift()! };
      if (this.ended) {
        if (this.failed) throw this.error;
        return { done: true, value: undefined };
      }
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  // A plain iterator rather than an async generator: a generator's return() waits behind a pending next(), so a
  // consumer could not cancel while it waits for the next token.
  [Symbol.asyncIterator](): AsyncIterator<T, undefined> {
    return {
      next: () => this.next(),
      return: async () => {
        this.cancel();
        return { done: true, value: undefined };
      },
    };
  }
}
