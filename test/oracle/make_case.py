#!/usr/bin/env python3
"""Oracle: write a random gpt-oss checkpoint in the Hugging Face layout and the logits transformers computes.

Runs on the GPU machine (python3 with torch, transformers 5.17, safetensors, numpy); it needs no GPU and runs the
oracle on the CPU in fp32, so the logits carry no TF32 or kernel-choice noise. One case is one directory:

  config.json, model.safetensors | model-0000N-of-0000M.safetensors + model.safetensors.index.json
  logits_fp32.npy   [T, V] <f4, transformers loaded in fp32 (MXFP4 experts dequantized)   <- the oracle
  logits_bf16.npy   [T, V] <f4, transformers loaded in bf16, logits upcast                 <- what bf16 costs
  case.json         tokens, the arguments, versions, bf16_vs_fp32 stats, and the checks below

Besides running transformers, the script checks that transformers did what we meant and what
../../docs/model.md says, so the fixtures test the spec and not an accident:
  * decodes expert rows itself from the raw _blocks/_scales (low nibble = even column) and compares them with the
    dequantized parameter transformers loaded;
  * computes the YaRN inv_freq from docs/model.md's formula and compares with transformers' rotary embedding;
  * runs an independent float64 forward pass written from docs/model.md (spec_forward) and compares its logits with
    transformers' fp32 logits, then repeats it with one detail changed at a time (window +-1, no sinks, no YaRN,
    gate/up halves instead of interleaved) to show each detail is both in effect and decided the spec's way.

Usage (one case):   python3 make_case.py --out DIR [--layers 4 --hidden 64 ...]
        (the suite): python3 make_case.py --suite OUTDIR [--tar FILE]   -- the committed fixtures, see README.md
"""
import argparse
import json
import math
import os
import platform
import shutil
import sys
import tarfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


# ----------------------------------------------------------------------------------------------------------------
# Arguments
def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="case directory to write (one case)")
    p.add_argument("--suite", help="write the committed fixture suite into this directory instead")
    p.add_argument("--tar", help="with --suite: also pack the suite into this tar file")
    p.add_argument("--diagnose", nargs="*", help="case dirs: compare transformers with the spec sublayer by sublayer")
    p.add_argument("--sources", help="write the transformers source that decides the semantics to this file")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=64)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--sliding-window", type=int, default=128)
    p.add_argument("--layer-types", default="alternate",
                   help="'alternate' (even layers slide, like gpt-oss) or a comma list of s/f per layer")
    p.add_argument("--rope-form", choices=["rope_scaling", "rope_parameters"], default="rope_scaling")
    p.add_argument("--rope-theta", type=float, default=150000.0)
    p.add_argument("--yarn-factor", type=float, default=32.0, help="1 = no YaRN (plain RoPE, rope_type default)")
    p.add_argument("--yarn-original", type=int, default=4096, help="original_max_position_embeddings")
    p.add_argument("--max-pos", type=int, default=0, help="max_position_embeddings (0: factor * original)")
    p.add_argument("--seq-len", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--sinks-dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--gate-up-scales", default="121,126", help="E8M0 range lo,hi (inclusive) for gate_up")
    p.add_argument("--down-scales", default="119,124", help="E8M0 range lo,hi (inclusive) for down")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 run")
    p.add_argument("--no-spec-check", action="store_true", help="skip the float64 spec forward and ablations")
    return p


def case_args(**kw):
    """Arguments of one case as a namespace, defaults filled in (used by the suite)."""
    a = build_parser().parse_args([])
    for k, v in kw.items():
        assert hasattr(a, k), k
        setattr(a, k, v)
    return a


def layer_types_of(a):
    if a.layer_types == "alternate":
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(a.layers)]
    kinds = a.layer_types.split(",")
    assert len(kinds) == a.layers, "--layer-types needs one entry per layer"
    return ["sliding_attention" if k.strip() == "s" else "full_attention" for k in kinds]


# ----------------------------------------------------------------------------------------------------------------
# Random checkpoint
def bf16(x):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)


def make_tensors(a, rng):
    """All checkpoint tensors, named and shaped as Hugging Face gpt-oss stores them."""
    H, I, E, D = a.hidden, a.intermediate, a.experts, a.head_dim
    nq, nkv, V = a.heads, a.kv_heads, a.vocab
    assert H % 32 == 0 and I % 32 == 0, "MXFP4 blocks are 32 wide: hidden and intermediate must be multiples of 32"
    assert nq % nkv == 0 and a.topk <= E
    gu_lo, gu_hi = (int(s) for s in a.gate_up_scales.split(","))
    dn_lo, dn_hi = (int(s) for s in a.down_scales.split(","))

    def lin(out_f, in_f):
        return rng.standard_normal((out_f, in_f)) / math.sqrt(in_f)

    def bias(n, s=0.1):
        return rng.standard_normal(n) * s

    def norm_w(n):
        return 1.0 + 0.2 * rng.standard_normal(n)

    def mxfp4(rows, cols, lo, hi):
        blocks = rng.integers(0, 256, size=(E, rows, cols // 32, 16), dtype=np.uint8)
        scales = rng.integers(lo, hi + 1, size=(E, rows, cols // 32), dtype=np.uint8)
        return torch.from_numpy(blocks), torch.from_numpy(scales)

    t = {"model.embed_tokens.weight": bf16(rng.standard_normal((V, H)))}
    for i in range(a.layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = bf16(norm_w(H))
        t[p + "post_attention_layernorm.weight"] = bf16(norm_w(H))
        t[p + "self_attn.q_proj.weight"] = bf16(lin(nq * D, H))
        t[p + "self_attn.q_proj.bias"] = bf16(bias(nq * D))
        t[p + "self_attn.k_proj.weight"] = bf16(lin(nkv * D, H))
        t[p + "self_attn.k_proj.bias"] = bf16(bias(nkv * D))
        t[p + "self_attn.v_proj.weight"] = bf16(lin(nkv * D, H))
        t[p + "self_attn.v_proj.bias"] = bf16(bias(nkv * D))
        t[p + "self_attn.o_proj.weight"] = bf16(lin(H, nq * D))
        t[p + "self_attn.o_proj.bias"] = bf16(bias(H))
        sinks = rng.standard_normal(nq) * 1.5
        t[p + "self_attn.sinks"] = (bf16(sinks) if a.sinks_dtype == "bf16"
                                    else torch.from_numpy(sinks.astype(np.float32)))
        t[p + "mlp.router.weight"] = bf16(lin(E, H) * 2.0)
        t[p + "mlp.router.bias"] = bf16(bias(E, 0.5))
        b, s = mxfp4(2 * I, H, gu_lo, gu_hi)
        t[p + "mlp.experts.gate_up_proj_blocks"] = b
        t[p + "mlp.experts.gate_up_proj_scales"] = s
        t[p + "mlp.experts.gate_up_proj_bias"] = bf16(rng.standard_normal((E, 2 * I)) * 0.5)
        b, s = mxfp4(H, I, dn_lo, dn_hi)
        t[p + "mlp.experts.down_proj_blocks"] = b
        t[p + "mlp.experts.down_proj_scales"] = s
        t[p + "mlp.experts.down_proj_bias"] = bf16(bias((E, H)))
    t["model.norm.weight"] = bf16(norm_w(H))
    t["lm_head.weight"] = bf16(lin(V, H))
    return t


def make_config(a):
    """config.json written the way the published gpt-oss configs are."""
    yarn = a.yarn_factor != 1.0
    max_pos = a.max_pos or (int(a.yarn_factor * a.yarn_original) if yarn else 4096)
    rope = {"rope_type": "yarn", "factor": float(a.yarn_factor), "beta_fast": 32.0, "beta_slow": 1.0,
            "original_max_position_embeddings": a.yarn_original, "truncate": False} if yarn else None
    cfg = {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": a.vocab - 1,
        "experts_per_token": a.topk,
        "head_dim": a.head_dim,
        "hidden_act": "silu",
        "hidden_size": a.hidden,
        "initial_context_length": a.yarn_original,
        "initializer_range": 0.02,
        "intermediate_size": a.intermediate,
        "layer_types": layer_types_of(a),
        "max_position_embeddings": max_pos,
        "model_type": "gpt_oss",
        "num_attention_heads": a.heads,
        "num_experts_per_tok": a.topk,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "num_local_experts": a.experts,
        "output_router_logits": False,
        "pad_token_id": a.vocab - 2,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": 1e-05,
        "router_aux_loss_coef": 0.9,
        "sliding_window": a.sliding_window,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.55.0.dev0",
        "use_cache": True,
        "vocab_size": a.vocab,
    }
    if a.rope_form == "rope_scaling":
        cfg["rope_theta"] = a.rope_theta
        cfg["rope_scaling"] = rope
    else:
        cfg["rope_parameters"] = dict(rope or {"rope_type": "default"}, rope_theta=a.rope_theta)
    return cfg


def write_checkpoint(a, out, tensors):
    from safetensors.torch import save_file
    names = list(tensors.keys())
    if a.shards <= 1:
        save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    per = math.ceil(len(names) / a.shards)
    files, weight_map, total = [], {}, 0
    for k in range(a.shards):
        fname = f"model-{k + 1:05d}-of-{a.shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k * per:(k + 1) * per]}
        save_file(part, os.path.join(out, fname), metadata={"format": "pt"})
        for n, v in part.items():
            weight_map[n] = fname
            total += v.numel() * v.element_size()
        files.append(fname)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files


# ----------------------------------------------------------------------------------------------------------------
# The spec, written independently of transformers (docs/model.md), in float64
def decode_mxfp4(blocks, scales):
    """[E, rows, G, 16] u8 + [E, rows, G] u8 -> [E, rows, 32G] float64; low nibble = even column."""
    lut = np.array(FP4_VALUES, dtype=np.float64)
    blocks = blocks.numpy() if torch.is_tensor(blocks) else blocks
    scales = scales.numpy() if torch.is_tensor(scales) else scales
    vals = np.empty(blocks.shape[:-1] + (32,), dtype=np.float64)
    vals[..., 0::2] = lut[blocks & 0x0F]
    vals[..., 1::2] = lut[blocks >> 4]
    vals *= np.exp2(scales.astype(np.float64) - 127.0)[..., None]
    return vals.reshape(blocks.shape[0], blocks.shape[1], -1)


def yarn_inv_freq(dim, base, factor, original, beta_fast=32.0, beta_slow=1.0, truncate=False):
    """docs/model.md's YaRN: returns (inv_freq[dim/2] float64, attention factor)."""
    def corr(n):
        return dim * math.log(original / (n * 2 * math.pi)) / (2 * math.log(base))
    low, high = corr(beta_fast), corr(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    i = np.arange(dim // 2, dtype=np.float64)
    ramp = np.clip((i - low) / (high - low), 0, 1)
    extrap = 1 - ramp
    pos_freq = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    inv = (1 / (factor * pos_freq)) * (1 - extrap) + (1 / pos_freq) * extrap
    return inv, 0.1 * math.log(factor) + 1.0


def spec_rope_tables(a, T, yarn=True):
    D = a.head_dim
    if yarn and a.yarn_factor != 1.0:
        inv, att = yarn_inv_freq(D, a.rope_theta, a.yarn_factor, a.yarn_original)
    else:
        inv, att = 1.0 / a.rope_theta ** (np.arange(0, D, 2) / D), 1.0
    ang = torch.arange(T, dtype=torch.float64)[:, None] * torch.from_numpy(inv)[None, :]
    return torch.cos(ang) * att, torch.sin(ang) * att


def spec_rms(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w


def spec_attention(a, t, li, h, cos, sin, window=None, sinks=True):
    """Attention of layer li on normed input h [T, H] (float64), output after o_proj."""
    f = lambda n: t[n].to(torch.float64)  # noqa: E731
    D, nq, nkv = a.head_dim, a.heads, a.kv_heads
    T = h.shape[0]
    W = a.sliding_window if window is None else window
    p = f"model.layers.{li}."

    def rope(x):  # [T, heads, D], half split
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    q = (h @ f(p + "self_attn.q_proj.weight").T + f(p + "self_attn.q_proj.bias")).view(T, nq, D)
    k = (h @ f(p + "self_attn.k_proj.weight").T + f(p + "self_attn.k_proj.bias")).view(T, nkv, D)
    v = (h @ f(p + "self_attn.v_proj.weight").T + f(p + "self_attn.v_proj.bias")).view(T, nkv, D)
    q, k = rope(q), rope(k)
    tpos = torch.arange(T)[:, None]
    jpos = torch.arange(T)[None, :]
    visible = jpos <= tpos
    if layer_types_of(a)[li] == "sliding_attention":
        visible = visible & (tpos - jpos < W)
    sink = f(p + "self_attn.sinks")
    outs = []
    for hd in range(nq):
        kv = hd // (nq // nkv)
        s = (q[:, hd] @ k[:, kv].T) * D ** -0.5
        s = s.masked_fill(~visible, float("-inf"))
        col = torch.full((T, 1), sink[hd].item() if sinks else float("-inf"), dtype=torch.float64)
        pr = torch.softmax(torch.cat([s, col], dim=1), dim=1)[:, :T]
        outs.append(pr @ v[:, kv])
    return torch.cat(outs, dim=1) @ f(p + "self_attn.o_proj.weight").T + f(p + "self_attn.o_proj.bias")


def spec_router(a, t, li, h):
    p = f"model.layers.{li}."
    r = h @ t[p + "mlp.router.weight"].to(torch.float64).T + t[p + "mlp.router.bias"].to(torch.float64)
    top_v, top_i = torch.topk(r, a.topk, dim=-1)
    return r, torch.softmax(top_v, dim=-1), top_i


def spec_moe(a, t, li, h, interleave=True, route=None):
    """MoE of layer li on normed input h [T, H]; route = (weights, indices) to reuse another router's choice."""
    p = f"model.layers.{li}."
    T, H, K = h.shape[0], a.hidden, a.topk
    _, wts, top_i = spec_router(a, t, li, h) if route is None else (None, *route)
    wgu = torch.from_numpy(decode_mxfp4(t[p + "mlp.experts.gate_up_proj_blocks"],
                                        t[p + "mlp.experts.gate_up_proj_scales"]))  # [E, 2I, H]
    wdn = torch.from_numpy(decode_mxfp4(t[p + "mlp.experts.down_proj_blocks"],
                                        t[p + "mlp.experts.down_proj_scales"]))  # [E, H, I]
    g = torch.einsum("th,eoh->teo", h, wgu) + t[p + "mlp.experts.gate_up_proj_bias"].to(torch.float64)[None]
    if interleave:
        gate, up = g[..., 0::2], g[..., 1::2]
    else:
        gate, up = g.chunk(2, dim=-1)
    gate = gate.clamp(max=7.0)
    up = up.clamp(-7.0, 7.0)
    act = (up + 1) * gate * torch.sigmoid(1.702 * gate)
    y = torch.einsum("tei,ehi->teh", act, wdn) + t[p + "mlp.experts.down_proj_bias"].to(torch.float64)[None]
    return (y.gather(1, top_i[..., None].expand(T, K, H)) * wts[..., None]).sum(1)


def spec_forward(a, t, tokens, window=None, sinks=True, yarn=True, interleave=True):
    """Logits [T, V] (float64) of one prefill, straight from docs/model.md. The keyword arguments switch one detail."""
    f = lambda n: t[n].to(torch.float64)  # noqa: E731
    T = len(tokens)
    cos, sin = spec_rope_tables(a, T, yarn)
    x = f("model.embed_tokens.weight")[torch.tensor(tokens)]
    for li in range(a.layers):
        p = f"model.layers.{li}."
        x = x + spec_attention(a, t, li, spec_rms(x, f(p + "input_layernorm.weight")), cos, sin, window, sinks)
        x = x + spec_moe(a, t, li, spec_rms(x, f(p + "post_attention_layernorm.weight")), interleave)
    x = spec_rms(x, f("model.norm.weight"))
    return x @ f("lm_head.weight").T


def diagnose(case_dir, log):
    """Layer by layer: feed transformers' own sublayer inputs to the spec's sublayers and compare the outputs."""
    from safetensors.torch import load_file
    case = json.load(open(os.path.join(case_dir, "case.json")))
    a = case_args(**{k: v for k, v in case["args"].items() if k not in ("suite", "tar", "out", "sources")})
    t = {}
    for fn in case["files"]:
        t.update(load_file(os.path.join(case_dir, fn)))
    tokens = case["tokens"]
    T = len(tokens)
    model, _ = load_hf(case_dir, torch.float32)
    log(f"[diagnose {case_dir}] experts_implementation={getattr(model.config, '_experts_implementation', '?')} "
        f"attn_implementation={getattr(model.config, '_attn_implementation', '?')}")
    cap = {}

    def grab(name):
        def hook(mod, args, kwargs, out):
            hs = args[0] if args else kwargs.get("hidden_states")
            cap[name] = (hs.detach().double().reshape(-1, hs.shape[-1]).clone(),
                         tuple(o.detach().clone() if torch.is_tensor(o) else o for o in out)
                         if isinstance(out, tuple) else out.detach().clone())
        return hook
    hooks = []
    for li, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(grab(f"layer{li}"), with_kwargs=True))
        hooks.append(layer.input_layernorm.register_forward_hook(grab(f"ln1_{li}"), with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(grab(f"attn{li}"), with_kwargs=True))
        hooks.append(layer.post_attention_layernorm.register_forward_hook(grab(f"ln2_{li}"), with_kwargs=True))
        hooks.append(layer.mlp.register_forward_hook(grab(f"mlp{li}"), with_kwargs=True))
        hooks.append(layer.mlp.router.register_forward_hook(grab(f"router{li}"), with_kwargs=True))
        hooks.append(layer.mlp.experts.register_forward_hook(grab(f"experts{li}"), with_kwargs=True))
    logits = hf_logits(model, tokens)
    for h in hooks:
        h.remove()
    cos, sin = spec_rope_tables(a, T)
    f = lambda n: t[n].to(torch.float64)  # noqa: E731

    def rel(ref, got):
        d = (ref - got).abs()
        per_pos = d.max(-1).values
        return (f"max {float(d.max()):.3e} (rel {float(d.max() / ref.abs().max()):.2e}) at pos "
                f"{int(per_pos.argmax())}; positions with diff>1e-3: {(per_pos > 1e-3).nonzero().flatten().tolist()[:20]}")
    emb = f("model.embed_tokens.weight")[torch.tensor(tokens)]
    log(f"  embed vs layer0 input: {rel(emb, cap['layer0'][0])}")
    for li in range(a.layers):
        p = f"model.layers.{li}."
        x_in = cap[f"layer{li}"][0]
        ln1 = cap[f"ln1_{li}"][1]
        ln1 = (ln1[0] if isinstance(ln1, tuple) else ln1).double().reshape(T, -1)
        log(f" layer {li} ({layer_types_of(a)[li]})")
        log(f"  rms1:   {rel(spec_rms(x_in, f(p + 'input_layernorm.weight')), ln1)}")
        attn_in = cap[f"attn{li}"][0]
        attn_out = cap[f"attn{li}"][1]
        attn_out = (attn_out[0] if isinstance(attn_out, tuple) else attn_out).double().reshape(T, -1)
        log(f"  attn:   {rel(spec_attention(a, t, li, attn_in, cos, sin), attn_out)}")
        for w in (a.sliding_window - 1, a.sliding_window + 1):
            log(f"   (window {w}: {rel(spec_attention(a, t, li, attn_in, cos, sin, window=w), attn_out)})")
        mlp_in = cap[f"mlp{li}"][0]
        mlp_out = cap[f"mlp{li}"][1]
        mlp_out = (mlp_out[0] if isinstance(mlp_out, tuple) else mlp_out).double().reshape(T, -1)
        r_logits, r_scores, r_idx = cap[f"router{li}"][1][:3]
        s_logits, s_w, s_idx = spec_router(a, t, li, mlp_in)
        log(f"  router logits: {rel(s_logits, r_logits.double().reshape(T, -1))}")
        same_set = [set(x.tolist()) == set(y.tolist()) for x, y in zip(s_idx, r_idx.reshape(T, -1))]
        log(f"  router top-k sets differ at {sum(not s for s in same_set)} of {T} tokens; "
            f"order equal everywhere: {bool((s_idx == r_idx.reshape(T, -1)).all())}; "
            f"hf scores shape {tuple(r_scores.shape)} sum/row[0] {float(r_scores.reshape(T, -1)[0].sum()):.4f}")
        ex_in = cap[f"experts{li}"][0]
        log(f"  experts input == mlp input: {float((ex_in - mlp_in).abs().max()):.3e}")
        hf_route = (r_scores.double().reshape(T, -1), r_idx.reshape(T, -1).long())
        if hf_route[0].shape[1] != a.topk:  # scores over all experts: take the selected ones
            hf_route = (hf_route[0].gather(1, hf_route[1]), hf_route[1])
        log(f"  moe (spec router): {rel(spec_moe(a, t, li, mlp_in), mlp_out)}")
        log(f"  moe (hf routing):  {rel(spec_moe(a, t, li, mlp_in, route=hf_route), mlp_out)}")
        nxt = cap[f"layer{li + 1}"][0] if li + 1 < a.layers else None
        if nxt is not None:
            log(f"  residual: x + attn + mlp vs next layer input: {rel(x_in + attn_out + mlp_out, nxt)}")
    return logits


# ----------------------------------------------------------------------------------------------------------------
# Comparison
def compare(ref, got):
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    def logsm(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lr, lg = logsm(ref), logsm(got)
    kl = (np.exp(lr) * (lr - lg)).sum(-1)
    return {
        "max_abs_diff_over_max_logit": float(np.abs(ref - got).max() / np.abs(ref).max()),
        "max_abs_diff": float(np.abs(ref - got).max()),
        "max_abs_logit": float(np.abs(ref).max()),
        "mean_kl": float(kl.mean()),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
    }


# ----------------------------------------------------------------------------------------------------------------
# transformers
def set_experts_implementation(model, impl):
    """transformers 5 routes GptOssExperts through config._experts_implementation (default "grouped_mm" here); the
    oracle uses "eager", the plain per-expert loop that GptOssExperts.forward itself defines."""
    import types
    errors = []
    try:
        model.set_experts_implementation(impl)
    except Exception as e:
        errors.append(repr(e))
        try:
            model.config._experts_implementation = impl
        except Exception as e2:
            errors.append(repr(e2))
    if getattr(model.config, "_experts_implementation", None) == impl:
        return "config"
    if impl == "eager":  # last resort: call the class's own forward, which the dispatch decorator wraps
        for layer in model.model.layers:
            ex = layer.mlp.experts
            orig = getattr(type(ex).forward, "__wrapped__", None)
            if orig is None:
                raise RuntimeError(f"cannot select eager experts: {errors}")
            ex.forward = types.MethodType(orig, ex)
        print(f"  experts forward patched to the eager loop ({errors})", flush=True)
        return "patched"
    raise RuntimeError(f"could not set experts implementation to {impl!r}: {errors}")


def load_hf(out, dtype, experts="eager"):
    from transformers import GptOssForCausalLM, Mxfp4Config
    kw = dict(quantization_config=Mxfp4Config(dequantize=True), attn_implementation="eager",
              output_loading_info=True)
    try:
        model, info = GptOssForCausalLM.from_pretrained(out, dtype=dtype, **kw)
    except TypeError:
        model, info = GptOssForCausalLM.from_pretrained(out, torch_dtype=dtype, **kw)
    model.eval()
    # transformers 5.17 leaves the dequantized MXFP4 experts in bf16 even when asked for dtype=float32
    # (convert_moe_packed_tensors decodes to bf16). Its default "grouped_mm" experts path then casts the fp32
    # activations to the weights' dtype, so the "fp32" model runs every expert matmul on bf16-rounded inputs
    # (about 0.5 % error per MoE layer, up to 19 % of the largest logit on the fixtures), and the "eager" loop
    # refuses the dtype mix. MXFP4 values are exact in bf16, so widening them to fp32 loses nothing and gives the
    # true fp32 forward pass.
    upcast = []
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            upcast.append(name)
    default_impl = getattr(model.config, "_experts_implementation", None)
    set_experts_implementation(model, experts)
    print(f"  loaded {dtype}: widened {len(upcast)} parameters to {dtype} (e.g. {upcast[:2]}); "
          f"experts implementation {default_impl!r} -> {experts!r}", flush=True)
    bad = {k: sorted(map(str, v))[:20] for k, v in info.items()
           if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:  # a weight left at random init would be caught by the spec comparison; record it loudly
        print(f"  WARNING: transformers did not load the checkpoint cleanly: {bad}", flush=True)
    return model, bad


def hf_logits(model, tokens):
    ids = torch.tensor([tokens], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float().numpy()


def check_dequant(model, t, a):
    """Compare transformers' dequantized expert weights with our own decode of the raw bytes."""
    res = {}
    params = dict(model.named_parameters())
    for proj in ("gate_up_proj", "down_proj"):
        name = f"model.layers.0.mlp.experts.{proj}"
        got = params[name].detach().double().numpy()
        raw_b, raw_s = t[f"{name}_blocks"], t[f"{name}_scales"]
        ours = decode_mxfp4(raw_b, raw_s)  # [E, out, in]
        swapped = decode_mxfp4((raw_b.numpy() >> 4) | ((raw_b.numpy() & 0x0F) << 4), raw_s)
        r = {"transformers_shape": list(got.shape), "spec_shape_out_in": list(ours.shape)}
        for label, cand in (("spec_transposed_[E,in,out]", ours.transpose(0, 2, 1)),
                            ("spec_as_is_[E,out,in]", ours),
                            ("high_nibble_first_transposed", swapped.transpose(0, 2, 1))):
            r[label] = float(np.abs(got - cand).max()) if cand.shape == got.shape else "shape differs"
        res[proj] = r
    return res


def rope_check(model, a):
    rot = model.model.rotary_emb
    inv = rot.inv_freq.double().numpy()
    res = {"transformers_inv_freq_first4": [float(v) for v in inv[:4]],
           "transformers_inv_freq_last": float(inv[-1]),
           "transformers_attention_scaling": (float(rot.attention_scaling) if hasattr(rot, "attention_scaling")
                                              else None),
           "rope_type": getattr(rot, "rope_type", None)}
    if a.yarn_factor != 1.0:
        for trunc in (False, True):
            spec, att = yarn_inv_freq(a.head_dim, a.rope_theta, a.yarn_factor, a.yarn_original, truncate=trunc)
            res[f"max_rel_diff_vs_spec_truncate_{trunc}"] = float((np.abs(inv - spec) / np.abs(spec)).max())
            res["spec_attention_factor"] = att
    return res


def grouped_vs_eager(model, tokens, l32):
    """What transformers' default experts implementation would have given instead (for the record)."""
    set_experts_implementation(model, "grouped_mm")
    try:
        return compare(l32, hf_logits(model, tokens))
    finally:
        set_experts_implementation(model, "eager")


def swiglu_clamp_counts(model, tokens, a):
    """Fraction of gate values above 7 and up values outside [-7, 7] on the selected experts (all experts here)."""
    counts = {"gate_gt_7": 0, "up_abs_gt_7": 0, "n": 0}
    hooks = []
    def pre(mod, args, kwargs):
        hs = args[0] if args else kwargs.get("hidden_states")
        w, b = mod.gate_up_proj, mod.gate_up_proj_bias
        g = hs.reshape(-1, hs.shape[-1]).float() @ (w.float() if w.shape[1] == hs.shape[-1] else
                                                    w.float().transpose(1, 2)) + b.float()[:, None, :]
        counts["gate_gt_7"] += int((g[..., 0::2] > 7).sum())
        counts["up_abs_gt_7"] += int((g[..., 1::2].abs() > 7).sum())
        counts["n"] += g[..., 0::2].numel()
    for i in range(a.layers):
        hooks.append(model.model.layers[i].mlp.experts.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        hf_logits(model, tokens)
    except Exception as e:  # diagnostics only
        counts["error"] = repr(e)
    for h in hooks:
        h.remove()
    return counts


def guarded(checks, key, log, fn, *args):
    """Run one diagnostic; a failure is recorded, not fatal (the logits are still worth having)."""
    import traceback
    try:
        checks[key] = fn(*args)
        if key != "spec":
            log(f"  {key}: {checks[key]}")
    except Exception as e:
        checks[key] = None
        checks[key + "_error"] = repr(e)
        log(f"  {key} FAILED: {e!r}\n{traceback.format_exc()}")


def spec_checks(a, tensors, tokens, l32, log):
    res = {}
    ref = spec_forward(a, tensors, tokens).numpy()
    res["spec_vs_transformers_fp32"] = compare(l32, ref)
    log(f"  spec(float64) vs transformers fp32: {res['spec_vs_transformers_fp32']}")
    if res["spec_vs_transformers_fp32"]["max_abs_diff_over_max_logit"] > 1e-4:
        log("  !!! SPEC MISMATCH: the float64 spec forward and transformers disagree beyond rounding")
    abl = {}
    variants = {"window_minus_1": dict(window=a.sliding_window - 1),
                "window_plus_1": dict(window=a.sliding_window + 1),
                "no_sinks": dict(sinks=False),
                "gate_up_halves_not_interleaved": dict(interleave=False)}
    if a.yarn_factor != 1.0:
        variants["plain_rope_no_yarn"] = dict(yarn=False)
    for name, kw in variants.items():
        abl[name] = compare(l32, spec_forward(a, tensors, tokens, **kw).numpy())["max_abs_diff_over_max_logit"]
    res["spec_ablations_max_abs_diff_over_max_logit"] = abl
    log(f"  ablations (each should be far above the spec's own diff): {abl}")
    return res


def run_case(a, out, log):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    tensors = make_tensors(a, rng)
    tokens = [int(x) for x in rng.integers(0, a.vocab, size=a.seq_len)]
    cfg = make_config(a)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    files = write_checkpoint(a, out, tensors)
    log(f"[{out}] wrote {files}, {len(tensors)} tensors, {len(tokens)} tokens")

    m32, load_issues = load_hf(out, torch.float32)
    c = m32.config
    log(f"  config.layer_types={c.layer_types} sliding_window={c.sliding_window} "
        f"rope={getattr(c, 'rope_parameters', None) or getattr(c, 'rope_scaling', None)}")
    per_layer_window = [getattr(m32.model.layers[i].self_attn, "sliding_window", "?") for i in range(a.layers)]
    log(f"  per-layer self_attn.sliding_window={per_layer_window}")
    log(f"  sinks dtype in model={m32.model.layers[0].self_attn.sinks.dtype} values[:3]="
        f"{m32.model.layers[0].self_attn.sinks[:3].tolist()}")
    checks = {"per_layer_sliding_window": [w if isinstance(w, (int, type(None))) else str(w)
                                           for w in per_layer_window], "load_issues": load_issues}
    guarded(checks, "rope", log, rope_check, m32, a)
    guarded(checks, "dequant", log, check_dequant, m32, tensors, a)

    l32 = hf_logits(m32, tokens)
    checks["experts_implementation"] = getattr(m32.config, "_experts_implementation", None)
    guarded(checks, "swiglu_clamps", log, swiglu_clamp_counts, m32, tokens, a)
    guarded(checks, "transformers_grouped_mm_vs_eager_fp32", log, grouped_vs_eager, m32, tokens, l32)
    del m32
    np.save(os.path.join(out, "logits_fp32.npy"), l32.astype("<f4"))
    log(f"  fp32 logits {l32.shape} max|logit|={np.abs(l32).max():.4f} std={l32.std():.4f}")

    result = {"tokens": tokens, "args": vars(a).copy(), "files": files}
    result["args"].pop("suite", None)
    result["args"].pop("tar", None)
    result["args"].pop("out", None)
    if not a.no_bf16:
        m16, _ = load_hf(out, torch.bfloat16)
        l16 = hf_logits(m16, tokens)
        del m16
        np.save(os.path.join(out, "logits_bf16.npy"), l16.astype("<f4"))
        result["bf16_vs_fp32"] = compare(l32, l16)
        log(f"  bf16_vs_fp32: {result['bf16_vs_fp32']}")

    if not a.no_spec_check:
        guarded(checks, "spec", log, spec_checks, a, tensors, tokens, l32, log)
        checks.update(checks.pop("spec") or {})


    import safetensors
    import transformers
    result["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                          "numpy": np.__version__}
    result["checks"] = checks
    result["oracle"] = {"model_dtype": "float32", "experts_weights_widened_to_fp32": True,
                        "experts_implementation": checks.get("experts_implementation"),
                        "attn_implementation": "eager", "device": "cpu", "stale": False}
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# ----------------------------------------------------------------------------------------------------------------
# The committed fixtures
SUITE = {
    # sliding + full layers, 200 tokens past a 128 window, GQA 4, top-4 of 8, the real YaRN, rope_scaling form
    "window128-gqa": dict(layers=4, hidden=64, intermediate=64, experts=8, topk=4, heads=8, kv_heads=2,
                          head_dim=16, vocab=512, sliding_window=128, rope_form="rope_scaling",
                          rope_theta=150000.0, yarn_factor=32.0, yarn_original=4096, seq_len=200, seed=1,
                          shards=1, sinks_dtype="bf16"),
    # small window, positions far past original_max_position_embeddings, GQA 8, 2 shards, fp32 sinks,
    # rope_parameters form with its own theta
    "window16-yarn-sharded": dict(layers=3, hidden=128, intermediate=64, experts=4, topk=2, heads=8, kv_heads=1,
                                  head_dim=32, vocab=1024, sliding_window=16, rope_form="rope_parameters",
                                  rope_theta=10000.0, yarn_factor=8.0, yarn_original=32, seq_len=80, seed=2,
                                  shards=2, sinks_dtype="f32"),
    # the real head_dim 64 and real YaRN (inv_freq comparable with docs/model.md's numbers), hidden 96 (3 blocks),
    # 6 experts top-3, GQA 2, a layer pattern that is not alternating, 3 shards
    "hd64-realyarn-3shards": dict(layers=4, hidden=96, intermediate=96, experts=6, topk=3, heads=6, kv_heads=3,
                                  head_dim=64, vocab=640, sliding_window=32, layer_types="s,s,f,s",
                                  rope_form="rope_scaling", rope_theta=150000.0, yarn_factor=32.0,
                                  yarn_original=4096, seq_len=100, seed=3, shards=3, sinks_dtype="bf16"),
}


def source_report(path):
    """Write the transformers source that decides the semantics we rely on, for the record."""
    import inspect
    import transformers
    from transformers.models.gpt_oss import modeling_gpt_oss as mg
    chunks = [f"transformers {transformers.__version__} at {os.path.dirname(transformers.__file__)}\n"]
    def add(label, fn):
        try:
            chunks.append(f"\n===== {label} =====\n{inspect.getsource(fn)}")
        except Exception as e:
            chunks.append(f"\n===== {label}: unavailable ({e!r}) =====\n")
    add("gpt_oss.eager_attention_forward", getattr(mg, "eager_attention_forward", None))
    for cls in ("GptOssAttention", "GptOssExperts", "GptOssTopKRouter", "GptOssMLP", "GptOssRMSNorm",
                "GptOssRotaryEmbedding", "GptOssModel", "GptOssDecoderLayer"):
        add(f"gpt_oss.{cls}", getattr(mg, cls, None))
    add("gpt_oss._apply_rotary_emb", getattr(mg, "_apply_rotary_emb", None))
    add("gpt_oss.apply_rotary_pos_emb", getattr(mg, "apply_rotary_pos_emb", None))
    add("gpt_oss.repeat_kv", getattr(mg, "repeat_kv", None))
    try:
        from transformers import masking_utils as mu
        for fn in ("sliding_window_overlay", "sliding_window_causal_mask_function", "causal_mask_function",
                   "create_sliding_window_causal_mask"):
            add(f"masking_utils.{fn}", getattr(mu, fn, None))
    except Exception as e:
        chunks.append(f"masking_utils unavailable: {e!r}\n")
    try:
        from transformers.integrations import mxfp4 as mx
        for fn in ("convert_moe_packed_tensors", "Mxfp4Dequantize", "dequantize", "dequantize_convertops"):
            if hasattr(mx, fn):
                add(f"integrations.mxfp4.{fn}", getattr(mx, fn))
    except Exception as e:
        chunks.append(f"mxfp4 integration unavailable: {e!r}\n")
    try:
        from transformers import modeling_rope_utils as ru
        add("modeling_rope_utils._compute_yarn_parameters", ru._compute_yarn_parameters)
    except Exception as e:
        chunks.append(f"rope utils unavailable: {e!r}\n")
    with open(path, "w") as f:
        f.write("".join(chunks))


def main():
    a = build_parser().parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))
    log = lambda s: print(s, flush=True)  # noqa: E731
    if a.sources:
        try:
            source_report(a.sources)
        except Exception as e:
            log(f"source report failed: {e!r}")
    if a.diagnose:
        for d in a.diagnose:
            diagnose(d, log)
        return
    if a.suite:
        os.makedirs(a.suite, exist_ok=True)
        summary = {}
        for name, kw in SUITE.items():
            r = run_case(case_args(**kw), os.path.join(a.suite, name), log)
            summary[name] = {"bf16_vs_fp32": r.get("bf16_vs_fp32"),
                             "spec_vs_transformers_fp32": r["checks"].get("spec_vs_transformers_fp32"),
                             "ablations": r["checks"].get("spec_ablations_max_abs_diff_over_max_logit")}
        log(json.dumps(summary, indent=1))
        if a.tar:
            with tarfile.open(a.tar, "w") as tf:
                for name in SUITE:
                    tf.add(os.path.join(a.suite, name), arcname=name)
            log(f"packed {a.tar}")
        return
    if not a.out:
        raise SystemExit("give --out DIR (one case) or --suite DIR")
    run_case(a, a.out, log)


if __name__ == "__main__":
    main()
