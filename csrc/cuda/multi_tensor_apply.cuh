// multi_tensor_apply: one kernel launch applies a functor to chunks of many tensors (apex's launcher).
//
// The host packs up to kMaxTensors tensors and kMaxBlocks chunk descriptors into a struct passed by value
// as the kernel argument (no device allocation, no extra copy); when either table fills up it launches and
// starts a new batch. Block b works on chunk `chunk[b]` (kChunk elements) of tensor `tensor[b]`.
// Functor contract: `__device__ void operator()(const TensorInfo& info, int64_t begin, int64_t end) const`.
// CUDA headers only (no torch): the binding file passes raw pointers and a stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace pyopt::cuda::sgd {

constexpr int kMaxTensors = 36;  // keeps the kernel argument under the classic 4 KiB limit
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 65536;
constexpr int kThreads = 512;

// Per-tensor pointers and flags of one batch; TensorInfo is the functor's per-tensor payload.
template <typename TensorInfo>
struct TensorListMeta {
  TensorInfo info[kMaxTensors];
  int64_t numel[kMaxTensors];
  unsigned char tensor[kMaxBlocks];
  int chunk[kMaxBlocks];
};

template <typename TensorInfo, typename Functor>
__global__ void __launch_bounds__(kThreads) multi_tensor_kernel(TensorListMeta<TensorInfo> meta, Functor f) {
  const int t = meta.tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(meta.chunk[blockIdx.x]) * kChunk;
  const int64_t end = begin + kChunk < meta.numel[t] ? begin + kChunk : meta.numel[t];
  f(meta.info[t], begin, end);
}

// Launch `f` over all chunks of `n` tensors (infos[i] with numels[i] elements) on `stream`.
template <typename TensorInfo, typename Functor>
cudaError_t multi_tensor_apply(const TensorInfo* infos, const int64_t* numels, int64_t n, Functor f,
                               cudaStream_t stream) {
  TensorListMeta<TensorInfo> meta;
  int ntensors = 0, nblocks = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (numels[i] == 0) continue;
    meta.info[ntensors] = infos[i];
    meta.numel[ntensors] = numels[i];
    const int64_t chunks = (numels[i] + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.tensor[nblocks] = static_cast<unsigned char>(ntensors);
      meta.chunk[nblocks] = static_cast<int>(c);
      ++nblocks;
      const bool blocks_full = nblocks == kMaxBlocks;
      const bool last_chunk = c == chunks - 1;
      const bool tensors_full = ntensors + 1 == kMaxTensors && last_chunk;
      if (blocks_full || tensors_full) {
        multi_tensor_kernel<<<nblocks, kThreads, 0, stream>>>(meta, f);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return err;
        nblocks = 0;
        if (last_chunk) {
          ntensors = -1;  // the next tensor starts a fresh table
        } else {          // the rest of this tensor continues in a fresh table, as entry 0
          meta.info[0] = meta.info[ntensors];
          meta.numel[0] = meta.numel[ntensors];
          ntensors = 0;
          continue;
        }
      }
    }
    ++ntensors;
  }
  if (nblocks > 0) {
    multi_tensor_kernel<<<nblocks, kThreads, 0, stream>>>(meta, f);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace pyopt::cuda::sgd
