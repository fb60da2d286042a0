// Every error the library throws on purpose, in one place. Each is a HarmoniumError with a string `code` a program
// can switch on (the HTTP server maps them to statuses) and, where one field is at fault, `param` naming it as the
// caller spelled it (`temperature`, `messages[2].role`, `contextLength`). Messages are one line.
//
//   class               code                                   thrown when
//   RequestError        invalid_request                        a chat request field is missing, unknown or bad
//   SamplingParamError  invalid_request                        a sampling field is out of range (a RequestError)
//   EngineRequestError  context_length_exceeded, invalid_token, the engine refuses or cannot finish a request
//                       empty_prompt, kv_cache_full, closed,  (vocabulary_too_small: chat on a model without the
//                       vocabulary_too_small                   harmony special tokens)
//   LoadOptionError     invalid_load_option                    Harmonium.load() options are bad
//   CheckpointError     invalid_checkpoint                     a checkpoint file or field is bad (names the file)
//   DeviceError         no_cuda_device                         backend 'cuda' without a usable GPU
//   AddonError          addon_not_built                        the native addon is missing
// An aborted call rejects with its signal's reason (an AbortError unless the caller gave another).

export class HarmoniumError extends Error {
  readonly code: string;
  readonly param: string | undefined;
  constructor(code: string, message: string, param?: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.param = param;
  }
}

/** A chat request the library cannot accept; `param` is the field's path when one field is at fault. */
export class RequestError extends HarmoniumError {
  constructor(message: string, param?: string) {
    super('invalid_request', message, param);
  }
}

/** A sampling value out of range; the message starts with the parameter's name. */
export class SamplingParamError extends RequestError {
  declare readonly param: string;
  constructor(param: string, message: string) {
    super(`${param}: ${message}`, param);
  }
}

/** A request the engine refuses or cannot finish; `code` says why. */
export class EngineRequestError extends HarmoniumError {
  constructor(code: string, message: string, param?: string) {
    super(code, message, param);
  }
}

/** A bad option of Harmonium.load(); `param` is the option's name. */
export class LoadOptionError extends HarmoniumError {
  declare readonly param: string;
  constructor(param: string, message: string) {
    super('invalid_load_option', message, param);
  }
}

/** The one error of checkpoint reading: `<file>: <tensor or field>: <what>`. */
export class CheckpointError extends HarmoniumError {
  constructor(
    readonly file: string,
    readonly subject: string,
    readonly what: string,
  ) {
    super('invalid_checkpoint', `${file}: ${subject}: ${what}`);
  }
}

/** backend 'cuda' where no CUDA GPU is usable. */
export class DeviceError extends HarmoniumError {
  constructor(message: string) {
    super('no_cuda_device', message, 'backend');
  }
}

/** The native addon is not built (an install run with --ignore-scripts, or a failed build). */
export class AddonError extends HarmoniumError {
  constructor(message: string) {
    super('addon_not_built', message);
  }
}
