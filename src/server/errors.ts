// The OpenAI error object and the one place that maps a failure to it: {"error": {message, type, param, code}}
// with string codes. Library errors are mapped by their `code` (EngineRequestError, SamplingParamError) or name
// (the renderer's RequestError); anything else is an internal error, which model output never causes (the
// harmony parser returns a best effort instead of throwing).

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string };
}

/** A request the server refuses, with the HTTP status and the OpenAI error fields. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }

  get type(): string {
    if (this.status === 401) return 'authentication_error';
    if (this.status === 404) return this.code === 'model_not_found' ? 'invalid_request_error' : 'not_found_error';
    if (this.status === 429) return 'rate_limit_error';
    if (this.status === 503) return 'service_unavailable_error';
    if (this.status >= 500) return 'server_error';
    return 'invalid_request_error';
  }

  body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400 naming the field. */
export function badRequest(param: string | null, message: string, code = 'invalid_request_error'): ApiError {
  return new ApiError(400, code, param ? `${param}: ${message}` : message, param);
}

/** The first path of a renderer message (`messages[2].content must be ...` -> `messages[2].content`). */
function leadingPath(message: string): string | null {
  const m = /^([A-Za-z_][\w]*(?:\[\d+\]|\.[A-Za-z_]\w*)*)/.exec(message);
  return m ? m[1] : null;
}

/** Maps any failure of a request to the error the client receives. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const e = err as { name?: unknown; code?: unknown; param?: unknown; message?: unknown };
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const param = typeof e?.param === 'string' ? e.param : null;
  if (e?.name === 'SamplingParamError') return new ApiError(400, 'invalid_value', message, param);
  if (e?.name === 'RequestError') return new ApiError(400, 'invalid_request_error', message, param ?? leadingPath(message));
  switch (e?.code) {
    case 'context_length_exceeded':
      return new ApiError(400, 'context_length_exceeded', message, param ?? 'messages');
    case 'empty_prompt':
    case 'invalid_token':
      return new ApiError(400, e.code, message, param ?? 'prompt');
    case 'closed':
      return new ApiError(503, 'model_closed', message);
    case 'kv_cache_full':
      return new ApiError(503, 'kv_cache_full', message);
  }
  // Another library error that names its own string code and parameter is the request's fault.
  if (typeof e?.code === 'string' && typeof e?.param === 'string') return new ApiError(400, e.code, message, param);
  return new ApiError(500, 'internal_error', message);
}
