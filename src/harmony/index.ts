// The harmony chat format: request types, rendering to text/tokens, and the streaming parser of generated tokens.
export type {
  BuiltinTool,
  ChatMessage,
  ChatRequest,
  ChatRole,
  HarmonyMessage,
  JsonSchema,
  ReasoningEffort,
  TextContentPart,
  Tool,
  ToolCall,
} from './types.js';
export { RequestError, toHarmonyMessages } from './request.js';
export {
  renderConversation,
  renderConversationTokens,
  renderMessages,
  renderMessagesTokens,
  renderMessagesSegments,
  segmentsToText,
  segmentsToTokens,
  type RenderConversationOptions,
  type RenderMessagesOptions,
  type Segment,
} from './render.js';
export { renderDeveloperContent, renderSystemContent, renderToolsSection, type SystemContentOptions } from './content.js';
export { BROWSER_NAMESPACE, PYTHON_NAMESPACE, type ToolDescription, type ToolNamespace } from './builtin_tools.js';
export { schemaToTypeScript } from './schema_to_ts.js';
export {
  HarmonyStreamParser,
  type EndToken,
  type HarmonyEvent,
  type HarmonyStreamParserOptions,
  type ParseResult,
  type ParsedMessage,
  type ParsedRole,
  type ParsedToolCall,
  type StopReason,
} from './parser.js';
