// The request shape harmonium accepts (an OpenAI Chat Completions-style request, as `harmonium render FILE.json`
// and the library's chat() take it) and the harmony-level message the renderer builds from it.
//
// An assistant's chain of thought arrives under three names, all accepted: `reasoning` (vLLM's current name),
// `reasoning_content` (llama-server and older vLLM) and `thinking` (the Hugging Face chat template's).

/** Roles a request message may have. */
export type ChatRole = 'system' | 'developer' | 'user' | 'assistant' | 'tool';

/** One part of an array-form message content; only text parts can be rendered. */
export interface TextContentPart {
  type: 'text';
  text: string;
}

/** A tool call as OpenAI sends it in an assistant message. `arguments` is the JSON text of the arguments. */
export interface ToolCall {
  id?: string;
  type?: 'function';
  function: { name: string; arguments: string };
}

export interface ChatMessage {
  role: ChatRole;
  content?: string | TextContentPart[] | null;
  /** For tool messages: the function name (otherwise found from tool_call_id). Ignored on other roles. */
  name?: string;
  /** Assistant chain of thought (vLLM). */
  reasoning?: string | null;
  /** Assistant chain of thought (llama-server, older vLLM). */
  reasoning_content?: string | null;
  /** Assistant chain of thought (Hugging Face chat template). */
  thinking?: string | null;
  tool_calls?: ToolCall[];
  /** For tool messages: the id of the assistant tool call this message answers. */
  tool_call_id?: string;
}

/** A JSON Schema, as far as the renderer reads it. */
export type JsonSchema = { [key: string]: unknown };

/** An OpenAI function tool. */
export interface Tool {
  type: 'function';
  function: {
    name: string;
    description?: string;
    /** JSON Schema of the arguments (an object schema); absent means the function takes no arguments. */
    parameters?: JsonSchema;
    strict?: boolean;
  };
}

export type ReasoningEffort = 'low' | 'medium' | 'high';

/** Built-in tools gpt-oss was trained with; their descriptions are fixed by the harmony format. */
export type BuiltinTool = 'browser' | 'python';

/**
 * A chat request. Fields other than these (model, temperature, ...) are ignored by the renderer, so a whole
 * Chat Completions request body can be passed as is.
 */
export interface ChatRequest {
  messages: ChatMessage[];
  tools?: Tool[];
  /** Default medium. */
  reasoning_effort?: ReasoningEffort;
  /** Default "You are ChatGPT, a large language model trained by OpenAI."; null leaves the line out. */
  model_identity?: string | null;
  /** Default "2024-06"; null leaves the line out. */
  knowledge_cutoff?: string | null;
  /** YYYY-MM-DD; absent leaves the line out. */
  current_date?: string;
  builtin_tools?: BuiltinTool[];
}

/**
 * One harmony message: `<|start|>{author}[ to={recipient}][<|channel|>{channel}][ {contentType}]<|message|>{content}`
 * followed by `<|call|>` (an assistant message with a recipient) or `<|end|>`.
 * `author` is the role (system, developer, user, assistant) or, for a tool's answer, the tool's name
 * (`functions.get_weather`, `browser.search`).
 */
export interface HarmonyMessage {
  author: string;
  recipient?: string;
  channel?: string;
  /** e.g. `<|constrain|>json` (rendered with the special token), `json`, `code`. */
  contentType?: string;
  content: string;
}
