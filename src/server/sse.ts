// Server-sent events as OpenAI streams them: `data: {json}\n\n` per event (Responses events also name themselves
// with `event:`), `data: [DONE]` at the end of a chat or completions stream. The headers go out with the first
// event, so a request that fails before producing anything still gets a proper error status.
import type { FastifyReply } from 'fastify';

export class SseWriter {
  private started = false;

  constructor(private readonly reply: FastifyReply) {}

  private start(): void {
    if (this.started) return;
    this.started = true;
    this.reply.hijack();
    this.reply.raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
  }

  get closed(): boolean {
    return this.reply.raw.destroyed || this.reply.raw.writableEnded;
  }

  send(data: unknown, event?: string): void {
    this.start();
    if (this.closed) return;
    this.reply.raw.write(`${event ? `event: ${event}\n` : ''}data: ${JSON.stringify(data)}\n\n`);
  }

  /** Ends the stream, with `data: [DONE]` for the chat and completions APIs. */
  end(done: boolean): void {
    this.start();
    if (this.closed) return;
    this.reply.raw.end(done ? 'data: [DONE]\n\n' : undefined);
  }
}
