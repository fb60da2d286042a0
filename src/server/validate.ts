// Request checks at the HTTP layer: unknown fields and wrong types are 400s naming the field (never coerced,
// never ignored). Sampling values and messages are checked again by the library, whose errors name them too.
import { badRequest } from './errors.js';

export type Body = Record<string, unknown>;

export function isObject(v: unknown): v is Body {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The body as an object, or a 400. */
export function bodyObject(v: unknown): Body {
  if (!isObject(v)) throw badRequest(null, 'the request body must be a JSON object');
  return v;
}

/** Every key must be one the endpoint knows. */
export function checkKeys(body: Body, allowed: ReadonlySet<string>, where = ''): void {
  for (const k of Object.keys(body))
    if (!allowed.has(k)) throw badRequest(`${where}${k}`, 'unknown or unsupported parameter', 'unknown_parameter');
}

const present = (v: unknown) => v !== undefined && v !== null;

function typeError(param: string, expected: string, v: unknown): never {
  throw badRequest(param, `must be ${expected}, got ${Array.isArray(v) ? 'an array' : v === null ? 'null' : typeof v}`, 'invalid_type');
}

export function optBool(body: Body, key: string, where = ''): boolean | undefined {
  const v = body[key];
  if (!present(v)) return undefined;
  if (typeof v !== 'boolean') typeError(`${where}${key}`, 'a boolean', v);
  return v;
}

export function optString(body: Body, key: string, where = ''): string | undefined {
  const v = body[key];
  if (!present(v)) return undefined;
  if (typeof v !== 'string') typeError(`${where}${key}`, 'a string', v);
  return v;
}

export function optInt(body: Body, key: string, where = ''): number | undefined {
  const v = body[key];
  if (!present(v)) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) typeError(`${where}${key}`, 'an integer', v);
  return v;
}

export function optObject(body: Body, key: string, where = ''): Body | undefined {
  const v = body[key];
  if (!present(v)) return undefined;
  if (!isObject(v)) typeError(`${where}${key}`, 'an object', v);
  return v;
}

export function optArray(body: Body, key: string, where = ''): unknown[] | undefined {
  const v = body[key];
  if (!present(v)) return undefined;
  if (!Array.isArray(v)) typeError(`${where}${key}`, 'an array', v);
  return v;
}

/** `n`: only one choice per request. */
export function checkN(body: Body): void {
  const n = optInt(body, 'n');
  if (n !== undefined && n !== 1) throw badRequest('n', `only n = 1 is supported, got ${n}`, 'unsupported_value');
}

/** `stream_options.include_usage`, checked. */
export function includeUsage(body: Body): boolean {
  const so = optObject(body, 'stream_options');
  if (!so) return false;
  checkKeys(so, new Set(['include_usage']), 'stream_options.');
  return optBool(so, 'include_usage', 'stream_options.') === true;
}

/** `cache_salt` (vLLM's): requests share cached prompt blocks only under the same salt. A non-empty string. */
export function cacheSalt(body: Body): string | undefined {
  const salt = optString(body, 'cache_salt');
  if (salt === '') throw badRequest('cache_salt', 'must be a non-empty string', 'invalid_value');
  return salt;
}
