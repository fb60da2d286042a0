// Public library API of harmonium.
export type { ModelConfig, TensorLocation } from './model/types.js';
export { openCheckpoint, expectedTensors } from './model/checkpoint.js';
export type { Checkpoint, ExpectedTensor } from './model/checkpoint.js';
export { readConfig, parseConfig } from './model/config.js';
export { dummyConfig, dummyTensors } from './model/dummy.js';
export type { DummyModelName } from './model/dummy.js';
export { modelSizes } from './model/sizes.js';
export type { ModelSizes } from './model/sizes.js';
export { ensureTinyModel } from './model/tiny.js';

// The model API: load, chat, generate, close (src/api.ts).
export { Harmonium } from './api.js';
export type {
  HarmoniumLoadOptions,
  ChatCompletionRequest,
  CallOptions,
  ChatEvent,
  ChatResult,
  ChatFinishReason,
  EngineStatus,
  GeneratedToken,
  GenerateResult,
  Stream,
  Timings,
  Usage,
} from './api/types.js';
export { resolveSampling } from './sampling/params.js';
export type { SamplingParams, ResolvedSampling } from './sampling/params.js';
export type { TokenLogprob } from './sampling/sampler.js';
// Every error the library throws on purpose: a HarmoniumError with `code` (and `param` where one field is at fault).
export {
  HarmoniumError,
  RequestError,
  SamplingParamError,
  EngineRequestError,
  LoadOptionError,
  CheckpointError,
  DeviceError,
  AddonError,
} from './errors.js';
export type { ChatRequest, ChatMessage, Tool, ToolCall, ReasoningEffort, BuiltinTool } from './harmony/types.js';

// The OpenAI-compatible HTTP server (src/server/).
export { serve, type ServeOptions, type ServerHandle } from './server/serve.js';
