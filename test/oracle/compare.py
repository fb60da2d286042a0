#!/usr/bin/env python3
"""Compare an engine's logits with a fixture's oracle logits.

  python3 test/oracle/compare.py CASE_DIR ENGINE_LOGITS.npy [--ref logits_fp32.npy]

Prints max|diff| / max|oracle logit| (the issue's bound is 1e-3 for the fp32 CPU backend), mean KL(oracle || engine)
over positions, and top-1 agreement. Pure Python (no numpy needed), so it runs on the dev machine; it reads only
little-endian float32 .npy files in C order, [T, V], which is what the fixtures and `harmonium score --out` write.
"""
import argparse
import ast
import json
import math
import os
import struct
import sys
from array import array


def read_npy_f4(path):
    """-> (shape, flat array('f')). Accepts .npy v1/v2/v3 with descr '<f4' and fortran_order False."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    major = data[6]
    if major == 1:
        hlen, off = struct.unpack("<H", data[8:10])[0], 10
    else:
        hlen, off = struct.unpack("<I", data[8:12])[0], 12
    header = ast.literal_eval(data[off:off + hlen].decode("latin1"))
    if header["descr"] not in ("<f4", "float32") or header["fortran_order"]:
        raise ValueError(f"{path}: need <f4 in C order, got {header}")
    shape = tuple(header["shape"])
    n = 1
    for d in shape:
        n *= d
    body = data[off + hlen:]
    if len(body) != 4 * n:
        raise ValueError(f"{path}: {len(body)} data bytes for shape {shape}")
    arr = array("f")
    arr.frombytes(body)
    if sys.byteorder != "little":
        arr.byteswap()
    return shape, arr


def log_softmax(row):
    m = max(row)
    s = math.log(sum(math.exp(x - m) for x in row))
    return [x - m - s for x in row]


def compare(ref_shape, ref, got_shape, got):
    if ref_shape != got_shape or len(ref_shape) != 2:
        raise ValueError(f"shape mismatch: oracle {ref_shape} vs engine {got_shape}")
    T, V = ref_shape
    max_diff = max(abs(a - b) for a, b in zip(ref, got))
    max_logit = max(abs(a) for a in ref)
    kl_sum, top1 = 0.0, 0
    for t in range(T):
        r = ref[t * V:(t + 1) * V]
        g = got[t * V:(t + 1) * V]
        lr, lg = log_softmax(r), log_softmax(g)
        kl_sum += sum(math.exp(a) * (a - b) for a, b in zip(lr, lg))
        top1 += max(range(V), key=r.__getitem__) == max(range(V), key=g.__getitem__)
    return {"max_abs_diff_over_max_logit": max_diff / max_logit, "max_abs_diff": max_diff,
            "max_abs_logit": max_logit, "mean_kl": kl_sum / T, "top1_agreement": top1 / T}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case_dir")
    p.add_argument("engine_npy")
    p.add_argument("--ref", default="logits_fp32.npy", help="oracle file inside the case dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()
    case = json.load(open(os.path.join(a.case_dir, "case.json")))
    if case.get("oracle", {}).get("stale"):
        print(f"warning: {a.case_dir}: oracle marked stale: {case['oracle'].get('why')}", file=sys.stderr)
    rs, ref = read_npy_f4(os.path.join(a.case_dir, a.ref))
    gs, got = read_npy_f4(a.engine_npy)
    res = compare(rs, ref, gs, got)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{os.path.basename(os.path.normpath(a.case_dir))}: max|diff|/max|logit| = "
              f"{res['max_abs_diff_over_max_logit']:.3e} (max|diff| {res['max_abs_diff']:.3e}, "
              f"max|logit| {res['max_abs_logit']:.4f}); mean KL(oracle||engine) = {res['mean_kl']:.3e}; "
              f"top-1 agreement = {res['top1_agreement']:.4f}")


if __name__ == "__main__":
    main()
