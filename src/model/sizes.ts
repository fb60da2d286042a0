// Parameter counts and bytes of a gpt-oss model, from its config alone: what `harmonium inspect` prints and what
// the benchmarks divide by (docs/model.md, "Bytes per token"). Bandwidth counts only the bytes a decode
// step really needs: the selected experts, never all of them.
import type { ModelConfig, TensorDType } from './types.js';

export const DTYPE_BYTES: Readonly<Record<TensorDType, number>> = { BF16: 2, F32: 4, U8: 1 };

export interface ModelSizes {
  params: {
    total: number;
    /** Parameters touched per token: top-k experts of each layer, attention, router, norms, lm_head (the
     * embedding is a row lookup, so it is not counted, as in the published 3.6 B / 5.1 B). */
    activePerToken: number;
    /** All experts of all layers, biases included. */
    experts: number;
    /** One expert: gate_up and down weights and biases. */
    perExpert: number;
    /** q/k/v/o weights and biases and the sinks, all layers. */
    attention: number;
    router: number;
    /** The two RMSNorms per layer plus the final one. */
    norms: number;
    embedding: number;
    lmHead: number;
  };
  bytes: {
    /** Expert weights in the checkpoint's format (MXFP4 blocks + E8M0 scales, or bf16) plus their bf16 biases. */
    experts: number;
    perExpert: number;
    /** bf16 attention (q/k/v/o, biases, sinks) plus router and norms, all layers. */
    attentionRouterNorms: number;
    embedding: number;
    lmHead: number;
    total: number;
  };
  /** Minimum bytes read from memory per decoded token at batch 1, short context (docs/model.md, "Bytes per token"). */
  decodeBytesPerToken: {
    experts: number;
    attentionRouter: number;
    lmHead: number;
    /** The embedding row and the final norm: a few KB. */
    other: number;
    total: number;
  };
  /** KV cache bytes per token of context (bf16 K and V), summed over the full-attention layers. */
  kvBytesPerContextToken: number;
  /** KV cache bytes a sliding layer ever needs per sequence (window positions), summed over sliding layers. */
  kvBytesSlidingPerSeq: number;
}

export function modelSizes(c: ModelConfig): ModelSizes {
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const E = c.numExperts;
  const L = c.numLayers;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;

  const attnLayer = q * H + q + 2 * (kv * H + kv) + H * q + H + c.numHeads;
  const routerLayer = E * H + E;
  const normsLayer = 2 * H;
  const expertWeights = 2 * I * H + H * I;
  const expertBiases = 2 * I + H;
  const perExpert = expertWeights + expertBiases;
  const embedding = c.vocabSize * H;
  const lmHead = c.vocabSize * H;

  const params = {
    total: 0,
    activePerToken: 0,
    experts: L * E * perExpert,
    perExpert,
    attention: L * attnLayer,
    router: L * routerLayer,
    norms: L * normsLayer + H,
    embedding,
    lmHead,
  };
  params.total = params.experts + params.attention + params.router + params.norms + embedding + lmHead;
  params.activePerToken = L * c.expertsPerToken * perExpert + params.attention + params.router + params.norms + lmHead;

  // MXFP4: 16 bytes of nibbles plus 1 scale byte per 32 values = 4.25 bits a value.
  const expertWeightBytes = c.expertFormat === 'mxfp4' ? (expertWeights / 32) * 17 : expertWeights * 2;
  const perExpertBytes = expertWeightBytes + expertBiases * 2;
  const denseLayerBytes = (attnLayer + routerLayer + normsLayer) * 2;
  const bytes = {
    experts: L * E * perExpertBytes,
    perExpert: perExpertBytes,
    attentionRouterNorms: L * denseLayerBytes + H * 2,
    embedding: embedding * 2,
    lmHead: lmHead * 2,
    total: 0,
  };
  bytes.total = bytes.experts + bytes.attentionRouterNorms + bytes.embedding + bytes.lmHead;

  const decode = {
    experts: L * c.expertsPerToken * perExpertBytes,
    attentionRouter: L * denseLayerBytes,
    lmHead: lmHead * 2,
    other: H * 2 + H * 2,
    total: 0,
  };
  decode.total = decode.experts + decode.attentionRouter + decode.lmHead + decode.other;

  const fullLayers = c.layerSliding.filter((s) => !s).length;
  const kvPerLayerToken = kv * 2 * 2;
  return {
    params,
    bytes,
    decodeBytesPerToken: decode,
    kvBytesPerContextToken: fullLayers * kvPerLayerToken,
    kvBytesSlidingPerSeq: (L - fullLayers) * c.slidingWindow * kvPerLayerToken,
  };
}

/** Expected number of distinct experts one MoE layer reads when B tokens each pick k of E uniformly. */
export function expectedExpertsTouched(c: ModelConfig, batch: number): number {
  return c.numExperts * (1 - Math.pow(1 - c.expertsPerToken / c.numExperts, batch));
}

/** Minimum bytes one decode step of `batch` sequences reads (union of experts; everything else shared). */
export function decodeBytesPerStep(c: ModelConfig, batch: number): number {
  const s = modelSizes(c);
  const d = s.decodeBytesPerToken;
  return d.total - d.experts + c.numLayers * expectedExpertsTouched(c, batch) * s.bytes.perExpert;
}
