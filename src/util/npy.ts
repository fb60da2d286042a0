// NumPy .npy files of float32 arrays: what `harmonium score --out` writes and what the oracle fixtures hold.
// Format 1.0 (2.0 when the header would not fit): magic, version, header length, a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (...), } padded with spaces so that the data starts at a
// multiple of 64 bytes, the header ended by '\n', then the raw C-order little-endian data (what numpy.save writes).
import { readFile, writeFile } from 'node:fs/promises';
import { endianness } from 'node:os';

export interface NpyArray {
  shape: number[];
  data: Float32Array;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const HOST_LE = endianness() === 'LE';

/** The array's bytes in little-endian order (a view, not a copy, on little-endian hosts). */
function littleEndianBytes(data: Float32Array): Buffer {
  if (HOST_LE) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const out = Buffer.alloc(data.length * 4);
  for (let i = 0; i < data.length; i++) out.writeFloatLE(data[i], i * 4);
  return out;
}

/** The bytes of a .npy file holding data (float32, C order) with this shape. */
export function encodeNpy(data: Float32Array, shape: number[]): Buffer {
  const count = shape.reduce((a, b) => a * b, 1);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`npy: bad shape [${shape}]`);
  if (count !== data.length) throw new Error(`npy: shape [${shape}] holds ${count} values, data has ${data.length}`);
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  // numpy leaves room for the first axis to grow to 21 digits (so files can be appended to in place); we match its
  // bytes exactly.
  const growth = shape.length > 0 ? Math.max(0, 21 - String(shape[0]).length) : 0;
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': ${shapeText}, }${' '.repeat(growth)}`;
  let version = 1;
  let prefix = 10; // magic 6 + version 2 + u16 length
  let total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  if (total - prefix > 0xffff) {
    version = 2;
    prefix = 12; // u32 length
    total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  }
  const header = Buffer.alloc(total, 0x20);
  MAGIC.copy(header, 0);
  header[6] = version;
  header[7] = 0;
  if (version === 1) header.writeUInt16LE(total - prefix, 8);
  else header.writeUInt32LE(total - prefix, 8);
  header.write(dict, prefix, 'latin1');
  header[total - 1] = 0x0a;
  return Buffer.concat([header, littleEndianBytes(data)]);
}

export async function writeNpy(file: string, data: Float32Array, shape: number[]): Promise<void> {
  await writeFile(file, encodeNpy(data, shape));
}

/** Parses a .npy file of little-endian float32 in C order (all the oracle writes); anything else is an error. */
export function decodeNpy(buf: Buffer, file = '<npy>'): NpyArray {
  const fail = (what: string): never => {
    throw new Error(`${file}: ${what}`);
  };
  if (buf.length < 10 || !buf.subarray(0, 6).equals(MAGIC)) fail('not a .npy file (bad magic)');
  const major = buf[6];
  if (major !== 1 && major !== 2 && major !== 3) fail(`unsupported .npy version ${major}.${buf[7]}`);
  const lenBytes = major === 1 ? 2 : 4;
  if (buf.length < 8 + lenBytes) fail('truncated header');
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = 8 + lenBytes;
  if (buf.length < start + headerLen) fail('truncated header');
  const text = buf.subarray(start, start + headerLen).toString('latin1');
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(text)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(text)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(text)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) fail(`malformed header ${JSON.stringify(text.trim())}`);
  if (descr !== '<f4') fail(`dtype ${descr}, expected <f4 (little-endian float32)`);
  if (fortran === 'True') fail('Fortran-order arrays are not supported');
  const shape = shapeText!
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(Number);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) fail(`bad shape (${shapeText})`);
  const count = shape.reduce((a, b) => a * b, 1);
  const dataStart = start + headerLen;
  if (buf.length !== dataStart + count * 4) fail(`holds ${buf.length - dataStart} data bytes, shape [${shape}] needs ${count * 4}`);
  const data = new Float32Array(count);
  if (HOST_LE) new Uint8Array(data.buffer).set(buf.subarray(dataStart)); // a copy: buf's offset may be unaligned
  else for (let i = 0; i < count; i++) data[i] = buf.readFloatLE(dataStart + i * 4);
  return { shape, data };
}

export async function readNpy(file: string): Promise<NpyArray> {
  return decodeNpy(await readFile(file), file);
}
