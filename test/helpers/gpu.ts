// How many CUDA devices this process can use (0 without a driver, a GPU or a CUDA build): the GPU suites skip on 0.
import { loadAddon } from '../../src/native.js';

export function gpuCount(): number {
  try {
    return loadAddon().cudaDevices().count;
  } catch {
    return 0;
  }
}
