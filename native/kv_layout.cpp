// kv_layout (kv_layout.h).
#include "kv_layout.h"

#include <algorithm>

namespace hm {

KvLayout kv_layout(const ModelConfig& cfg, bool window_kv) {
  KvLayout k;
  k.slot_of_layer.resize(cfg.num_layers);
  const bool sliding = window_kv && cfg.sliding_window > 0 &&
                       std::any_of(cfg.layer_sliding.begin(), cfg.layer_sliding.end(), [](uint8_t s) { return s != 0; });
  if (!sliding) {
    for (int l = 0; l < cfg.num_layers; l++) k.slot_of_layer[l] = l;
    k.slots = cfg.num_layers;
    return k;
  }
  int n[2] = {0, 0};  // layers so far of each kind: [0] full, [1] sliding
  for (int l = 0; l < cfg.num_layers; l++) k.slot_of_layer[l] = n[cfg.layer_sliding[l] ? 1 : 0]++;
  k.slots = std::max(n[0], n[1]);
  k.window = cfg.sliding_window;
  return k;
}

}  // namespace hm
