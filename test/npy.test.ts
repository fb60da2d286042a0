// .npy read/write: byte-for-byte what numpy.save writes for float32 (headers below were produced by numpy 2.4),
// round trips, and clear errors for what we do not read.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeNpy, encodeNpy, readNpy, writeNpy } from '../src/util/npy.js';

const MAGIC = '\x93NUMPY';

/** A version 1.0 .npy header as numpy writes it: magic, 1.0, u16 length, the padded dict and '\n'. */
function numpyHeader(dictPadded: string): Buffer {
  const len = Buffer.alloc(2);
  len.writeUInt16LE(dictPadded.length);
  return Buffer.concat([Buffer.from(MAGIC, 'latin1'), Buffer.from([1, 0]), len, Buffer.from(dictPadded, 'latin1')]);
}
const pad = (dict: string, total: number) => dict + ' '.repeat(total - 10 - dict.length - 1) + '\n';

describe('npy', () => {
  it('writes exactly the bytes numpy.save writes', () => {
    const data = Float32Array.from({ length: 6 }, (_, i) => i);
    const want = Buffer.concat([
      numpyHeader(pad("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 128)),
      Buffer.from(data.buffer),
    ]);
    expect(encodeNpy(data, [2, 3]).equals(want)).toBe(true);
    // 1-D shapes keep Python's trailing comma; numpy leaves room for the first axis to grow.
    expect(encodeNpy(new Float32Array(5), [5]).subarray(0, 128).toString('latin1')).toBe(
      numpyHeader(pad("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 128)).toString('latin1'),
    );
    const shape14 = Array(14).fill(2);
    expect(encodeNpy(new Float32Array(2 ** 14), shape14).subarray(0, 128).toString('latin1')).toBe(
      numpyHeader(pad(`{'descr': '<f4', 'fortran_order': False, 'shape': (${shape14.join(', ')}), }`, 128)).toString('latin1'),
    );
  });

  it('starts the data on a 64-byte boundary and round-trips through a file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hm-npy-'));
    try {
      for (const shape of [[3, 7], [1], [0, 4], [2, 3, 5], []]) {
        const n = shape.reduce((a, b) => a * b, 1);
        const data = Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 1e3);
        const file = join(dir, 'a.npy');
        await writeNpy(file, data, shape);
        const bytes = await readFile(file);
        expect(bytes[6]).toBe(1);
        expect((bytes.length - n * 4) % 64).toBe(0);
        const back = await readNpy(file);
        expect(back.shape).toEqual(shape);
        expect(Array.from(back.data)).toEqual(Array.from(data));
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('reads version 2.0 headers', () => {
    const dict = pad("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 128 + 2);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(dict.length);
    const buf = Buffer.concat([Buffer.from(MAGIC, 'latin1'), Buffer.from([2, 0]), len, Buffer.from(dict, 'latin1'), Buffer.from(Float32Array.of(1.5, -2).buffer)]);
    const a = decodeNpy(buf);
    expect(a.shape).toEqual([2]);
    expect(Array.from(a.data)).toEqual([1.5, -2]);
  });

  it('rejects what it does not read, naming the file', () => {
    const good = encodeNpy(Float32Array.of(1, 2), [2]);
    const withDict = (from: string, to: string) => Buffer.from(good.toString('latin1').replace(from, to), 'latin1');
    expect(() => decodeNpy(withDict("'<f4'", "'<f8'"), 'x.npy')).toThrow(/x\.npy: dtype <f8, expected <f4/);
    expect(() => decodeNpy(withDict("'<f4'", "'>f4'"), 'x.npy')).toThrow(/dtype >f4/);
    expect(() => decodeNpy(withDict('False', 'True '), 'x.npy')).toThrow(/Fortran-order/);
    expect(() => decodeNpy(good.subarray(0, good.length - 1), 'x.npy')).toThrow(/holds 7 data bytes, shape \[2\] needs 8/);
    expect(() => decodeNpy(Buffer.from('not numpy at all'), 'x.npy')).toThrow(/bad magic/);
    expect(() => encodeNpy(new Float32Array(3), [2, 2])).toThrow(/holds 4 values, data has 3/);
  });
});
