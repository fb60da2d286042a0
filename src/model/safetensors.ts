// Our own safetensors reader. A file is: 8-byte little-endian header length N, N bytes of JSON header
// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}), then the raw data.
// Every rule of the format is checked on the header alone, before any tensor buffer is allocated, so a bad file
// fails fast with one line naming the file and the tensor; tensors are then read by offset through a file
// handle (never a whole file in memory).
import { open } from 'node:fs/promises';

import { CheckpointError } from '../errors.js';

export { CheckpointError };

/** Bits per element of every dtype the safetensors format defines (sub-byte types pack tightly). */
export const SAFETENSORS_DTYPE_BITS: Readonly<Record<string, number>> = {
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
};

/** The format's own cap on the header (the reference implementation refuses more). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** data_offsets as written: relative to the start of the data section. */
  begin: number;
  end: number;
  /** Absolute byte offset in the file: 8 + header length + begin. */
  offset: number;
  nbytes: number;
}

export interface SafetensorsHeader {
  file: string;
  headerLength: number;
  fileSize: number;
  metadata: Record<string, string>;
  /** Tensors in the order of their data (sorted by offset). */
  entries: SafetensorsEntry[];
  byName: Map<string, SafetensorsEntry>;
}

/** Reads and validates the header of one safetensors file. Throws CheckpointError on any format violation. */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    throw new CheckpointError(file, 'file', `cannot open (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  try {
    const fileSize = (await fh.stat()).size;
    if (fileSize < 8) throw new CheckpointError(file, 'header', `truncated: ${fileSize} bytes, less than the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    await readExactly(fh, lenBuf, 0, file, 'header');
    const headerLength = lenBuf.readBigUInt64LE(0);
    if (headerLength > BigInt(MAX_HEADER_BYTES)) {
      throw new CheckpointError(file, 'header', `header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    }
    if (8n + headerLength > BigInt(fileSize)) {
      throw new CheckpointError(file, 'header', `header length ${headerLength} runs past the end of the file (${fileSize} bytes)`);
    }
    const headerBuf = Buffer.alloc(Number(headerLength));
    await readExactly(fh, headerBuf, 8, file, 'header');
    return parseSafetensorsHeader(file, headerBuf, fileSize);
  } finally {
    await fh.close();
  }
}

/**
 * Validates a header's bytes against the format's rules, given the file's total size. Pure (no I/O) so that
 * every rule can be tested on crafted bytes.
 */
export function parseSafetensorsHeader(file: string, headerBytes: Uint8Array, fileSize: number): SafetensorsHeader {
  const headerLength = headerBytes.length;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw new CheckpointError(file, 'header', 'not valid UTF-8');
  }
  if (!text.startsWith('{')) throw new CheckpointError(file, 'header', 'does not start with a JSON object');
  // JSON.parse keeps the last of two equal keys without a word, so duplicates are found by our own scan first.
  const dup = findDuplicateKey(text);
  if (dup.error) throw new CheckpointError(file, 'header', `invalid JSON: ${dup.error}`);
  if (dup.key !== undefined) {
    const subject = dup.depth === 1 ? dup.key : `${dup.parent}.${dup.key}`;
    throw new CheckpointError(file, subject, dup.depth === 1 ? 'duplicate tensor name' : 'duplicate field');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(file, 'header', `invalid JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(json)) throw new CheckpointError(file, 'header', 'is not a JSON object');

  const dataStart = 8 + headerLength;
  const dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const entries: SafetensorsEntry[] = [];
  for (const [name, value] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(value)) throw new CheckpointError(file, '__metadata__', 'must be an object of strings');
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string') throw new CheckpointError(file, `__metadata__.${k}`, 'must be a string');
        metadata[k] = v;
      }
      continue;
    }
    entries.push(parseEntry(file, name, value, dataStart));
  }

  // The data section is exactly the tensors, back to back in offset order: no hole, no overlap, nothing after.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const e of entries) {
    if (e.end > dataSize) {
      throw new CheckpointError(file, e.name, `data_offsets [${e.begin}, ${e.end}] run past the end of the file (data section is ${dataSize} bytes)`);
    }
    if (e.begin < cursor) {
      throw new CheckpointError(file, e.name, `data_offsets [${e.begin}, ${e.end}] overlap the previous tensor (which ends at ${cursor})`);
    }
    if (e.begin > cursor) {
      throw new CheckpointError(file, e.name, `hole of ${e.begin - cursor} bytes before data_offsets [${e.begin}, ${e.end}]`);
    }
    cursor = e.end;
  }
  if (cursor !== dataSize) {
    throw new CheckpointError(file, 'data', `tensors end at data offset ${cursor} but the file has ${dataSize - cursor} more bytes`);
  }
  const byName = new Map(entries.map((e) => [e.name, e]));
  return { file, headerLength, fileSize, metadata, entries, byName };
}

function parseEntry(file: string, name: string, value: unknown, dataStart: number): SafetensorsEntry {
  if (!isPlainObject(value)) throw new CheckpointError(file, name, 'entry is not an object');
  for (const key of Object.keys(value)) {
    if (key !== 'dtype' && key !== 'shape' && key !== 'data_offsets') {
      throw new CheckpointError(file, name, `unknown field "${key}"`);
    }
  }
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (typeof dtype !== 'string') throw new CheckpointError(file, name, 'dtype missing or not a string');
  const bits = SAFETENSORS_DTYPE_BITS[dtype];
  if (bits === undefined || !Object.hasOwn(SAFETENSORS_DTYPE_BITS, dtype)) {
    throw new CheckpointError(file, name, `unknown dtype "${dtype}"`);
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw new CheckpointError(file, name, 'shape must be an array of non-negative integers');
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    throw new CheckpointError(file, name, 'data_offsets must be two non-negative integers');
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) throw new CheckpointError(file, name, `data_offsets [${begin}, ${end}] end before they begin`);
  // Shape times dtype size in exact integers: a product of safe integers can overflow a double silently.
  let bitCount = BigInt(bits);
  for (const d of shape as number[]) bitCount *= BigInt(d);
  if (bitCount % 8n !== 0n) throw new CheckpointError(file, name, `shape [${shape}] of ${dtype} is not a whole number of bytes`);
  const expected = bitCount / 8n;
  if (expected !== BigInt(end - begin)) {
    throw new CheckpointError(file, name, `shape [${shape}] of ${dtype} needs ${expected} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
  }
  return { name, dtype, shape: shape as number[], begin, end, offset: dataStart + begin, nbytes: end - begin };
}

/** Reads one tensor's bytes (or a sub-range of them) by offset; never reads more than asked. */
export async function readTensorBytes(
  loc: { name: string; file: string; offset: number; nbytes: number },
  start = 0,
  length = loc.nbytes - start,
): Promise<Buffer> {
  if (start < 0 || length < 0 || start + length > loc.nbytes) {
    throw new CheckpointError(loc.file, loc.name, `range [${start}, ${start + length}) outside the tensor's ${loc.nbytes} bytes`);
  }
  const fh = await open(loc.file, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new CheckpointError(loc.file, loc.name, `cannot open (${err.code ?? err})`);
  });
  try {
    const buf = Buffer.alloc(length);
    await readExactly(fh, buf, loc.offset + start, loc.file, loc.name);
    return buf;
  } finally {
    await fh.close();
  }
}

type Handle = Awaited<ReturnType<typeof open>>;

async function readExactly(fh: Handle, buf: Buffer, position: number, file: string, subject: string): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    // Reads above 2 GiB are refused by Node, so large tensors come in 1 GiB pieces.
    const want = Math.min(buf.length - done, 1 << 30);
    const { bytesRead } = await fh.read(buf, done, want, position + done);
    if (bytesRead === 0) throw new CheckpointError(file, subject, `truncated: short read at byte ${position + done}`);
    done += bytesRead;
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

interface DuplicateScan {
  key?: string;
  parent?: string;
  depth?: number;
  error?: string;
}

/**
 * Walks JSON text once and reports the first key that appears twice in the same object (at any depth), or a
 * syntax error. Values are skipped, not built: JSON.parse does that afterwards on text already known to be sound.
 */
export function findDuplicateKey(text: string): DuplicateScan {
  let i = 0;
  const ws = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const fail = (msg: string): never => {
    throw new ScanError(`${msg} at character ${i}`);
  };
  const str = (): string => {
    const start = i;
    i++; // opening quote
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') i++;
      else if (text.charCodeAt(i) < 0x20) fail('control character in string');
      i++;
    }
    if (i >= text.length) fail('unterminated string');
    i++;
    try {
      return JSON.parse(text.slice(start, i)) as string;
    } catch {
      return fail('bad string escape');
    }
  };
  const value = (path: string, depth: number): DuplicateScan | undefined => {
    if (depth > 64) fail('nesting deeper than 64 levels');
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const seen = new Set<string>();
      ws();
      if (text[i] === '}') {
        i++;
        return undefined;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const key = str();
        if (seen.has(key)) return { key, parent: path, depth: depth + 1 };
        seen.add(key);
        ws();
        if (text[i] !== ':') fail('expected ":"');
        i++;
        const inner = value(depth === 0 ? key : `${path}.${key}`, depth + 1);
        if (inner) return inner;
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return undefined;
        }
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return undefined;
      }
      for (;;) {
        const inner = value(path, depth + 1);
        if (inner) return inner;
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return undefined;
        }
        fail('expected "," or "]"');
      }
    }
    if (c === '"') {
      str();
      return undefined;
    }
    const m = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 400));
    if (!m) fail('unexpected token');
    i += m![0].length;
    return undefined;
  };
  try {
    const found = value('', 0);
    if (found) return found;
    ws();
    if (i !== text.length) fail('trailing characters');
    return {};
  } catch (err) {
    if (err instanceof ScanError) return { error: err.message };
    throw err;
  }
}

class ScanError extends Error {}
