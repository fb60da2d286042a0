// The text inside harmony's system and developer messages: model identity, dates, reasoning effort, tool
// namespaces (built-in ones in the system message, function tools in the developer message) and valid channels.
// Section order and blank lines follow OpenAI's harmony library, the format's authority.

import { BROWSER_NAMESPACE, PYTHON_NAMESPACE, type ToolDescription, type ToolNamespace } from './builtin_tools.js';
import { schemaToTypeScript } from './schema_to_ts.js';
import type { BuiltinTool, ReasoningEffort } from './types.js';

export const DEFAULT_MODEL_IDENTITY = 'You are ChatGPT, a large language model trained by OpenAI.';
export const DEFAULT_KNOWLEDGE_CUTOFF = '2024-06';
export const DEFAULT_CHANNELS = ['analysis', 'commentary', 'final'];
const FUNCTIONS_CHANNEL_NOTE = "Calls to these tools must go to the commentary channel: 'functions'.";

/** Lines as Rust's str::lines gives them: no trailing empty line, a trailing \r dropped from each. */
function lines(text: string): string[] {
  if (text === '') return [];
  const out = text.split('\n');
  if (out[out.length - 1] === '') out.pop();
  return out.map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
}

/** `# Tools` then one `## name` section per namespace, namespaces in name order. */
export function renderToolsSection(namespaces: ToolNamespace[]): string {
  const sections = ['# Tools'];
  const sorted = [...namespaces].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const ns of sorted) {
    const parts = [`## ${ns.name}\n`];
    const hasTools = ns.tools.length > 0;
    // A namespace with tools writes its description as comments above the namespace; one without (python)
    // writes it as plain prose.
    if (ns.description !== undefined) for (const l of lines(ns.description)) parts.push(hasTools ? `// ${l}` : l);
    if (hasTools) {
      parts.push(`namespace ${ns.name} {\n`);
      for (const tool of ns.tools) {
        for (const l of lines(tool.description)) parts.push(`// ${l}`);
        parts.push(
          tool.parameters !== undefined
            ? `type ${tool.name} = (_: ${schemaToTypeScript(tool.parameters, '')}) => any;\n`
            : `type ${tool.name} = () => any;\n`,
        );
      }
      parts.push(`} // namespace ${ns.name}`);
    }
    sections.push(parts.join('\n'));
  }
  return sections.join('\n\n');
}

export interface SystemContentOptions {
  /** null leaves the line out. */
  modelIdentity?: string | null;
  /** null leaves the line out. */
  knowledgeCutoff?: string | null;
  currentDate?: string;
  /** null leaves the line out. */
  reasoningEffort?: ReasoningEffort | null;
  builtinTools?: BuiltinTool[];
  /** Default analysis, commentary, final; empty leaves the channel line out. */
  validChannels?: string[];
  channelRequired?: boolean;
  /** Whether the conversation's developer message declares function tools (adds the commentary-channel note). */
  hasFunctionTools?: boolean;
}

/** The system message's text: identity and dates, reasoning effort, built-in tools, valid channels. */
export function renderSystemContent(opts: SystemContentOptions = {}): string {
  const sections: string[] = [];
  const top: string[] = [];
  const identity = opts.modelIdentity === undefined ? DEFAULT_MODEL_IDENTITY : opts.modelIdentity;
  const cutoff = opts.knowledgeCutoff === undefined ? DEFAULT_KNOWLEDGE_CUTOFF : opts.knowledgeCutoff;
  if (identity !== null) top.push(identity);
  if (cutoff !== null) top.push(`Knowledge cutoff: ${cutoff}`);
  if (opts.currentDate !== undefined) top.push(`Current date: ${opts.currentDate}`);
  if (top.length) sections.push(top.join('\n'));
  const effort = opts.reasoningEffort === undefined ? 'medium' : opts.reasoningEffort;
  if (effort !== null) sections.push(`Reasoning: ${effort}`);
  const builtins = [...new Set(opts.builtinTools ?? [])].map((t) => (t === 'browser' ? BROWSER_NAMESPACE : PYTHON_NAMESPACE));
  if (builtins.length) sections.push(renderToolsSection(builtins));
  const channels = opts.validChannels ?? DEFAULT_CHANNELS;
  if (channels.length) {
    let line = `# Valid channels: ${channels.join(', ')}.`;
    if (opts.channelRequired ?? true) line += ' Channel must be included for every message.';
    if (opts.hasFunctionTools) line += `\n${FUNCTIONS_CHANNEL_NOTE}`;
    sections.push(line);
  }
  return sections.join('\n\n');
}

/** The developer message's text: `# Instructions` and the function tools' namespace. */
export function renderDeveloperContent(instructions: string | undefined, functionTools: ToolDescription[] = []): string {
  const sections: string[] = [];
  if (instructions !== undefined) sections.push('# Instructions', instructions);
  if (functionTools.length) sections.push(renderToolsSection([{ name: 'functions', tools: functionTools }]));
  return sections.join('\n\n');
}
