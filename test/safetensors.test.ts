// The safetensors reader: every format rule, each violated once by a crafted file, each failing with one line
// that names the file and the tensor (or the header).
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CheckpointError,
  findDuplicateKey,
  readSafetensorsHeader,
  readTensorBytes,
} from '../src/model/safetensors.js';
import { headerFromText, writeSafetensors } from '../src/model/safetensors_write.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hm-st-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function raw(name: string, headerText: string, dataBytes: number | Buffer): Promise<string> {
  const file = join(dir, name);
  const data = typeof dataBytes === 'number' ? Buffer.alloc(dataBytes) : dataBytes;
  await writeFile(file, Buffer.concat([headerFromText(headerText), data]));
  return file;
}

async function expectError(file: string, subject: string, what: RegExp) {
  const err = await readSafetensorsHeader(file).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CheckpointError);
  const msg = (err as Error).message;
  expect(msg.split('\n')).toHaveLength(1);
  expect(msg.startsWith(`${file}: ${subject}: `)).toBe(true);
  expect(msg).toMatch(what);
}

const hdr = (o: object) => JSON.stringify(o);

describe('safetensors reader', () => {
  it('reads a written file back, with absolute offsets', async () => {
    const file = join(dir, 'ok.safetensors');
    const a = Uint8Array.from([1, 2, 3, 4, 5, 6]);
    const b = new Uint8Array(new Float32Array([1.5, -2]).buffer);
    await writeSafetensors(
      file,
      [
        { name: 'a', dtype: 'BF16', shape: [3], data: a },
        { name: 'b', dtype: 'F32', shape: [2], data: b },
      ],
      { format: 'pt' },
    );
    const h = await readSafetensorsHeader(file);
    expect(h.metadata).toEqual({ format: 'pt' });
    expect(h.entries.map((e) => e.name)).toEqual(['a', 'b']);
    const eb = h.byName.get('b')!;
    expect(eb.offset).toBe(8 + h.headerLength + 6);
    expect((8 + h.headerLength) % 8).toBe(0);
    expect([...(await readTensorBytes({ ...eb, file }))]).toEqual([...b]);
    expect([...(await readTensorBytes({ ...h.byName.get('a')!, file }, 2, 3))]).toEqual([3, 4, 5]);
  });

  it('accepts every safetensors dtype, sub-byte ones included, and an empty file', async () => {
    const file = await raw(
      'dtypes.safetensors',
      hdr({
        x: { dtype: 'F4', shape: [4], data_offsets: [0, 2] },
        y: { dtype: 'F8_E8M0', shape: [2], data_offsets: [2, 4] },
        z: { dtype: 'I64', shape: [1], data_offsets: [4, 12] },
        e: { dtype: 'F32', shape: [0, 5], data_offsets: [12, 12] },
      }),
      12,
    );
    const h = await readSafetensorsHeader(file);
    expect(h.entries.map((e) => e.dtype)).toEqual(['F4', 'F8_E8M0', 'I64', 'F32']);
    const empty = await raw('empty.safetensors', '{}', 0);
    expect((await readSafetensorsHeader(empty)).entries).toEqual([]);
  });

  it('truncated file (shorter than the 8-byte length)', async () => {
    const file = join(dir, 'trunc8.safetensors');
    await writeFile(file, Buffer.from([1, 2, 3]));
    await expectError(file, 'header', /truncated/);
  });

  it('truncated file (data cut short)', async () => {
    const file = await raw('trunc.safetensors', hdr({ w: { dtype: 'BF16', shape: [4], data_offsets: [0, 8] } }), 5);
    await expectError(file, 'w', /past the end of the file/);
  });

  it('header length past the end of the file', async () => {
    const file = join(dir, 'hlen.safetensors');
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(1000n);
    await writeFile(file, b);
    await expectError(file, 'header', /past the end of the file/);
  });

  it('header length above 100 MB', async () => {
    const file = join(dir, 'huge.safetensors');
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(2n ** 63n);
    await writeFile(file, b);
    await expectError(file, 'header', /exceeds the 100000000-byte limit/);
  });

  it('header that is not JSON, or not an object', async () => {
    await expectError(await raw('nojson.safetensors', '{"a": ', 0), 'header', /invalid JSON/);
    await expectError(await raw('arr.safetensors', '[1, 2]', 0), 'header', /JSON object/);
  });

  it('tensor range outside the file', async () => {
    const file = await raw(
      'outside.safetensors',
      hdr({
        a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] },
        b: { dtype: 'U8', shape: [100], data_offsets: [4, 104] },
      }),
      8,
    );
    await expectError(file, 'b', /run past the end of the file/);
  });

  it('overlapping ranges', async () => {
    const file = await raw(
      'overlap.safetensors',
      hdr({
        a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] },
        b: { dtype: 'U8', shape: [4], data_offsets: [2, 6] },
      }),
      6,
    );
    await expectError(file, 'b', /overlap/);
  });

  it('a hole between ranges', async () => {
    const file = await raw(
      'hole.safetensors',
      hdr({
        a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] },
        b: { dtype: 'U8', shape: [4], data_offsets: [6, 10] },
      }),
      10,
    );
    await expectError(file, 'b', /hole of 2 bytes/);
  });

  it('a range not starting at 0', async () => {
    const file = await raw('start.safetensors', hdr({ a: { dtype: 'U8', shape: [4], data_offsets: [4, 8] } }), 8);
    await expectError(file, 'a', /hole of 4 bytes/);
  });

  it('bytes after the last tensor', async () => {
    const file = await raw('tail.safetensors', hdr({ a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }), 6);
    await expectError(file, 'data', /2 more bytes/);
  });

  it('unknown dtype', async () => {
    const file = await raw('dtype.safetensors', hdr({ a: { dtype: 'Q4_K', shape: [4], data_offsets: [0, 4] } }), 4);
    await expectError(file, 'a', /unknown dtype "Q4_K"/);
  });

  it('duplicate tensor name (JSON.parse would keep the last one silently)', async () => {
    const text =
      '{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, ' +
      '"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}';
    await expectError(await raw('dup.safetensors', text, 8), 'a', /duplicate tensor name/);
    // Escapes that decode to the same name are the same name.
    const esc = '{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "\\u0061": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}';
    await expectError(await raw('dup2.safetensors', esc, 8), 'a', /duplicate tensor name/);
  });

  it('duplicate field inside an entry', async () => {
    const text = '{"a": {"dtype": "U8", "dtype": "I8", "shape": [4], "data_offsets": [0, 4]}}';
    await expectError(await raw('dupfield.safetensors', text, 4), 'a.dtype', /duplicate field/);
  });

  it('shape x dtype size disagreeing with the byte range', async () => {
    const file = await raw('size.safetensors', hdr({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }), 8);
    await expectError(file, 'a', /needs 12 bytes/);
  });

  it('shape whose byte size overflows 64 bits', async () => {
    const big = 2 ** 52;
    const file = await raw('overflow.safetensors', hdr({ a: { dtype: 'F64', shape: [big, big, big], data_offsets: [0, 8] } }), 8);
    await expectError(file, 'a', /needs \d{40,} bytes/);
  });

  it('malformed entries', async () => {
    await expectError(await raw('neg.safetensors', hdr({ a: { dtype: 'U8', shape: [-1], data_offsets: [0, 0] } }), 0), 'a', /shape/);
    await expectError(await raw('offs.safetensors', hdr({ a: { dtype: 'U8', shape: [1], data_offsets: [0] } }), 1), 'a', /data_offsets/);
    await expectError(await raw('rev.safetensors', hdr({ a: { dtype: 'U8', shape: [0], data_offsets: [1, 0] } }), 1), 'a', /end before/);
    await expectError(await raw('extra.safetensors', hdr({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1], x: 1 } }), 1), 'a', /unknown field/);
    await expectError(await raw('meta.safetensors', hdr({ __metadata__: { k: 1 } }), 0), '__metadata__.k', /string/);
  });

  it('duplicate scan agrees with JSON on tricky text', () => {
    expect(findDuplicateKey('{"a": "}\\"", "b": [{"a": 1}, {"a": 2}]}')).toEqual({});
    expect(findDuplicateKey('{"x": {"y": 1, "y": 2}}')).toMatchObject({ key: 'y', parent: 'x', depth: 2 });
    expect(findDuplicateKey('{"x": 1} trailing').error).toMatch(/trailing/);
    expect(findDuplicateKey('[' .repeat(100) + ']'.repeat(100)).error).toMatch(/nesting/);
  });

  it('a missing file', async () => {
    await expectError(join(dir, 'nope.safetensors'), 'file', /cannot open \(ENOENT\)/);
  });
});
