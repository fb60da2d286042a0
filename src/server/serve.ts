// serve(model, options): the OpenAI-compatible server, listening. The model may still be loading (a Promise):
// /health answers 503 with the progress and the API routes 503 until it is ready. Binding anything but a
// loopback address without an API key is refused.
import type { FastifyInstance } from 'fastify';
import type { Harmonium } from '../api.js';
import { buildApp } from './app.js';
import { ServerContext, type ServerOptions } from './context.js';

export interface ServeOptions extends ServerOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 8000; 0 picks a free port. */
  port?: number;
}

export interface ServerHandle {
  /** http://host:port */
  readonly url: string;
  readonly port: number;
  /** The fastify app, for routes of your own beside ours. */
  readonly app: FastifyInstance;
  /** Load progress for /health while the model loads (pass it as Harmonium.load's onProgress). */
  onLoadProgress(loadedBytes: number, totalBytes: number): void;
  /** Resolves when the model is loaded and served. */
  readonly ready: Promise<Harmonium>;
  /** Stops listening and waits for requests in flight to end. Does not close the model. */
  close(): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export function isLoopback(host: string): boolean {
  return LOOPBACK.has(host) || host.startsWith('127.');
}

export async function serve(model: Harmonium | Promise<Harmonium>, options: ServeOptions = {}): Promise<ServerHandle> {
  const host = options.host ?? '127.0.0.1';
  if (!isLoopback(host) && !options.apiKey)
    throw new Error(`refusing to listen on ${host} without an API key: give --api-key (apiKey), or bind 127.0.0.1`);
  const pending = Promise.resolve(model);
  const loaded = model instanceof Promise ? undefined : model;
  const ctx = new ServerContext(options, options.servedModelName ?? (loaded ? servedName(loaded) : 'harmonium'));
  ctx.model = loaded;
  const app = buildApp(ctx);
  await app.listen({ host, port: options.port ?? 8000 });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : (options.port ?? 8000);
  const ready = pending.then((m) => (ctx.model = m));
  ready.catch(() => undefined); // the caller handles a failed load through `ready`
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    app,
    ready,
    onLoadProgress(l, t) {
      ctx.loading = { loadedBytes: l, totalBytes: t };
    },
    close: () => app.close(),
  };
}

/** The name a model is served under by default: the checkpoint's directory name, the dummy name, or 'tiny'. */
export function servedName(model: Pick<Harmonium, 'source'>): string {
  return model.source.replace(/\/+$/, '').split('/').pop() || model.source;
}
