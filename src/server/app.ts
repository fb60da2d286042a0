// The HTTP app (fastify): routes, the API key check, the body limit and the error handler that turns every
// failure into the OpenAI error object. Not listening: serve.ts listens, and a Node service can take this app
// and add its own routes beside ours.
import Fastify, { type FastifyInstance } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import { chatCompletions } from './chat.js';
import { completions } from './completions.js';
import type { ServerContext } from './context.js';
import { ApiError, toApiError } from './errors.js';
import { responses } from './responses.js';

const DEFAULT_BODY_LIMIT = 8 * 1024 * 1024;

function keyMatches(header: string | undefined, key: string): boolean {
  const m = header !== undefined ? /^Bearer\s+(.+)$/i.exec(header) : null;
  if (!m) return false;
  const a = Buffer.from(m[1].trim());
  const b = Buffer.from(key);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function buildApp(ctx: ServerContext): FastifyInstance {
  const app = Fastify({ bodyLimit: ctx.options.bodyLimit ?? DEFAULT_BODY_LIMIT, logger: false, return503OnClosing: true });

  app.addHook('onRequest', async (request) => {
    if (ctx.options.apiKey === undefined || request.url === '/health' || request.url.startsWith('/health?')) return;
    if (!keyMatches(request.headers.authorization, ctx.options.apiKey))
      throw new ApiError(401, 'invalid_api_key', 'a valid API key is required (Authorization: Bearer KEY)');
  });

  app.setErrorHandler((err, _request, reply) => {
    const status = (err as { statusCode?: number }).statusCode;
    let e: ApiError;
    if (err instanceof ApiError) e = err;
    else if (status === 413) e = new ApiError(413, 'request_too_large', `the request body is larger than ${ctx.options.bodyLimit ?? DEFAULT_BODY_LIMIT} bytes`);
    else if (status === 415) e = new ApiError(415, 'unsupported_media_type', 'send the body as application/json');
    else if (status !== undefined && status >= 400 && status < 500) e = new ApiError(400, 'invalid_request_error', `the request body is not valid JSON: ${(err as Error).message}`);
    else e = toApiError(err);
    if (reply.sent || reply.raw.headersSent) return;
    reply.code(e.status).headers(e.headers).send(e.body());
  });

  app.setNotFoundHandler((request, reply) => {
    const e = new ApiError(404, 'not_found', `no route ${request.method} ${request.url.split('?')[0]}`);
    reply.code(404).send(e.body());
  });

  app.get('/health', async (_request, reply) => {
    if (!ctx.model) return reply.code(503).send({ status: 'loading', loaded_bytes: ctx.loading.loadedBytes, total_bytes: ctx.loading.totalBytes });
    return { status: 'ok' };
  });

  app.get('/metrics', async (_request, reply) => {
    reply.type(ctx.metrics.contentType);
    return ctx.metrics.text();
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: ctx.modelName, object: 'model', created: 0, owned_by: 'harmonium', max_model_len: ctx.model?.contextLength ?? null }],
  }));

  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request) => {
    if (request.params.id !== ctx.modelName) throw new ApiError(404, 'model_not_found', `the model '${request.params.id}' does not exist`, 'model');
    return { id: ctx.modelName, object: 'model', created: 0, owned_by: 'harmonium' };
  });

  app.post('/v1/chat/completions', (request, reply) => chatCompletions(ctx, request.body, reply));
  app.post('/v1/responses', (request, reply) => responses(ctx, request.body, reply));
  app.post('/v1/completions', (request, reply) => completions(ctx, request.body, reply));
  return app;
}
