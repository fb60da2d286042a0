// A small safetensors writer, used by the tests (to craft good and bad files) and by the embedded tiny model.
// Tensors are laid out back to back in the order given; the header is padded with spaces so the data starts on
// an 8-byte boundary, as the reference implementation does.
import { open } from 'node:fs/promises';
import { SAFETENSORS_DTYPE_BITS } from './safetensors.js';

export interface TensorToWrite {
  name: string;
  dtype: string;
  shape: number[];
  /** The raw little-endian bytes, or a function producing them when the writer reaches this tensor. */
  data: Uint8Array | (() => Uint8Array);
}

/** Byte length of a tensor of this dtype and shape. */
export function tensorBytes(dtype: string, shape: number[]): number {
  const bits = SAFETENSORS_DTYPE_BITS[dtype];
  if (bits === undefined) throw new Error(`safetensors writer: unknown dtype ${dtype}`);
  return (shape.reduce((a, b) => a * b, 1) * bits) / 8;
}

/** The 8-byte length plus the padded JSON header for these tensors. */
export function encodeHeader(tensors: Omit<TensorToWrite, 'data'>[], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const n = tensorBytes(t.dtype, t.shape);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  return headerFromText(JSON.stringify(header));
}

/** Frames arbitrary header text (valid or not: tests use this to build bad files) with its 8-byte length. */
export function headerFromText(text: string, align = 8): Buffer {
  let json = Buffer.from(text, 'utf8');
  const pad = (align - ((8 + json.length) % align)) % align;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json]);
}

/** Writes a safetensors file, one tensor at a time so that large tensors need not coexist in memory. */
export async function writeSafetensors(
  file: string,
  tensors: TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<void> {
  const fh = await open(file, 'w');
  try {
    const header = encodeHeader(tensors, metadata);
    await fh.write(header, 0, header.length, 0);
    let position = header.length;
    for (const t of tensors) {
      const bytes = typeof t.data === 'function' ? t.data() : t.data;
      const n = tensorBytes(t.dtype, t.shape);
      if (bytes.length !== n) {
        throw new Error(`safetensors writer: ${t.name}: ${bytes.length} bytes given, shape [${t.shape}] of ${t.dtype} needs ${n}`);
      }
      await fh.write(bytes, 0, bytes.length, position);
      position += bytes.length;
    }
  } finally {
    await fh.close();
  }
}
