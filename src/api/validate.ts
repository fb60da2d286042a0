// The fields a chat request may carry, checked before anything is rendered: the harmony renderer checks what each
// field holds; this checks that every field is one the library knows and can honour, so that a client never gets
// an answer that silently ignored what it asked for. OpenAI fields with only one value we can honour are accepted
// with that value (n: 1, response_format text, tool_choice auto); transport fields (stream, stream_options) belong
// to the HTTP server, which removes them before it calls chat().
import { RequestError } from '../errors.js';
import { REQUEST_KEYS } from '../harmony/request.js';
import { SAMPLING_KEYS } from '../sampling/params.js';

/** Fields accepted and ignored: they name or label the call and change nothing the engine does. */
const LABEL_KEYS = ['model', 'user', 'metadata', 'store', 'parallel_tool_calls'];

const KNOWN = new Set<string>([...REQUEST_KEYS, ...SAMPLING_KEYS, ...LABEL_KEYS, 'n', 'response_format', 'tool_choice']);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Throws RequestError (with `param`) on a field that is unknown, or set to a value the engine cannot honour. */
export function checkChatRequest(request: unknown): void {
  if (!isObject(request)) throw new RequestError('the request must be an object with a messages array');
  for (const key of Object.keys(request)) {
    if (KNOWN.has(key)) continue;
    if (key === 'stream' || key === 'stream_options')
      throw new RequestError(`${key}: not a library field (chat() always streams: iterate what it returns)`, key);
    throw new RequestError(`${key}: unknown field`, key);
  }
  const r = request;
  if (!Array.isArray(r.messages)) throw new RequestError('messages must be an array', 'messages');
  if (r.messages.length === 0) throw new RequestError('messages must not be empty', 'messages');
  if (r.n !== undefined && r.n !== null && r.n !== 1) throw new RequestError(`n: only 1 is supported, got ${JSON.stringify(r.n)}`, 'n');
  const rf = r.response_format;
  if (rf !== undefined && rf !== null && !(isObject(rf) && rf.type === 'text'))
    throw new RequestError(`response_format: only {"type": "text"} is supported (no constrained decoding), got ${JSON.stringify(rf)}`, 'response_format');
  const tc = r.tool_choice;
  if (tc !== undefined && tc !== null && tc !== 'auto')
    throw new RequestError(`tool_choice: only "auto" is supported (the engine cannot force or forbid a tool call), got ${JSON.stringify(tc)}`, 'tool_choice');
  const ptc = r.parallel_tool_calls;
  if (ptc !== undefined && ptc !== null && typeof ptc !== 'boolean') throw new RequestError('parallel_tool_calls must be a boolean', 'parallel_tool_calls');
}
