// Fused inner-product score + per-tile top-k candidates on CUDA (jmlr.kernels.topk, backend "cuda").
//
// Stage 1 (this file): grid = (doc tiles, query groups). A block holds QB queries in shared memory; each of
// its 8 warps takes doc rows in turn, reads a row once with coalesced loads, accumulates QB dot products per
// lane and reduces them with warp shuffles. Lane q keeps a running top-k list (k <= 128) for query q in
// local memory (replace-the-minimum), so nothing of size B x N is written: each warp emits k candidates per
// query per tile. Stage 2 (binding.cpp) merges the (B, tiles * 8 * k) candidates with at::topk.
//
// The launcher has a plain C ABI and takes the stream as a pointer, so this file needs no torch headers
// and compiles alone: nvcc -c -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace jmlr_topk_cuda {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxK = 128;  // largest k per launch; the Python dispatch uses Triton or torch above it

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<int8_t>(int8_t x) { return (float)x; }

template <typename T, int QB>
__global__ void __launch_bounds__(kThreads) tile_topk_kernel(const float* __restrict__ Q, const T* __restrict__ D,
                                                             const float* __restrict__ S, int B, int N, int d,
                                                             int64_t ldd, int docs_per_tile, int k,
                                                             float* __restrict__ out_s, int64_t* __restrict__ out_i,
                                                             int* __restrict__ nan_flag) {
  extern __shared__ float qs[];  // (QB, d)
  const int q0 = blockIdx.y * QB;
  const int nq = min(QB, B - q0);
  for (int t = threadIdx.x; t < QB * d; t += kThreads) {
    const int qq = t / d, j = t % d;
    qs[t] = qq < nq ? Q[(int64_t)(q0 + qq) * d + j] : 0.f;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = (int64_t)blockIdx.x * docs_per_tile;
  const int64_t n1 = min((int64_t)N, n0 + docs_per_tile);

  // lane q (< nq) owns the running list of query q0 + q: unsorted, replace-the-minimum. The list lives in
  // local memory (L1-resident); after the first k rows an insertion is rare, so the scan is off the hot path.
  float ls[kMaxK];
  int64_t li[kMaxK];
  float cur_min = -INFINITY;
  int min_pos = 0;
  int filled = 0;

  for (int64_t n = n0 + warp; n < n1; n += kWarps) {
    const T* row = D + n * ldd;
    float acc[QB];
#pragma unroll
    for (int qq = 0; qq < QB; ++qq) acc[qq] = 0.f;
    for (int j = lane; j < d; j += 32) {
      const float x = to_float<T>(row[j]);
#pragma unroll
      for (int qq = 0; qq < QB; ++qq) acc[qq] = fmaf(qs[qq * d + j], x, acc[qq]);
    }
#pragma unroll
    for (int qq = 0; qq < QB; ++qq) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[qq] += __shfl_xor_sync(0xffffffffu, acc[qq], off);
    }
    float v = 0.f;
#pragma unroll
    for (int qq = 0; qq < QB; ++qq)
      if (lane == qq) v = acc[qq];
    if (S != nullptr) v *= S[n];
    if (lane < nq) {
      if (!isfinite(v)) {  // NaN or +-Inf
        atomicOr(nan_flag, 1);
      } else if (filled < k || v > cur_min) {
        const int pos = filled < k ? filled++ : min_pos;
        ls[pos] = v;
        li[pos] = n;
        if (filled == k) {
          cur_min = INFINITY;
#pragma unroll 1
          for (int t = 0; t < k; ++t)
            if (ls[t] < cur_min) {
              cur_min = ls[t];
              min_pos = t;
            }
        }
      }
    }
  }

  // out layout: (B, tiles, warps, k)
  if (lane < nq) {
    const int64_t tiles = gridDim.x;
    float* os = out_s + (((int64_t)(q0 + lane) * tiles + blockIdx.x) * kWarps + warp) * k;
    int64_t* oi = out_i + (((int64_t)(q0 + lane) * tiles + blockIdx.x) * kWarps + warp) * k;
#pragma unroll 1
    for (int t = 0; t < k; ++t) {
      os[t] = t < filled ? ls[t] : -INFINITY;
      oi[t] = t < filled ? li[t] : -1;
    }
  }
}

template <typename T, int QB>
static cudaError_t launch_qb(const float* Q, const void* D, const float* S, int B, int N, int d, int64_t ldd,
                             int docs_per_tile, int k, float* out_s, int64_t* out_i, int* nan_flag,
                             cudaStream_t stream) {
  const int tiles = (N + docs_per_tile - 1) / docs_per_tile;
  const dim3 grid(tiles, (B + QB - 1) / QB);
  const size_t smem = (size_t)QB * d * sizeof(float);
  const T* Dt = static_cast<const T*>(D);
  if (k > kMaxK) return cudaErrorInvalidValue;
  auto kern = tile_topk_kernel<T, QB>;
  if (smem > 48 * 1024) cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  kern<<<grid, kThreads, smem, stream>>>(Q, Dt, S, B, N, d, ldd, docs_per_tile, k, out_s, out_i, nan_flag);
  return cudaGetLastError();
}

template <typename T>
static cudaError_t launch_t(const float* Q, const void* D, const float* S, int B, int N, int d, int64_t ldd,
                            int docs_per_tile, int k, float* out_s, int64_t* out_i, int* nan_flag,
                            cudaStream_t stream) {
  if (B >= 8 && (size_t)8 * d * sizeof(float) <= 96 * 1024)
    return launch_qb<T, 8>(Q, D, S, B, N, d, ldd, docs_per_tile, k, out_s, out_i, nan_flag, stream);
  if (B >= 4 && (size_t)4 * d * sizeof(float) <= 96 * 1024)
    return launch_qb<T, 4>(Q, D, S, B, N, d, ldd, docs_per_tile, k, out_s, out_i, nan_flag, stream);
  return launch_qb<T, 1>(Q, D, S, B, N, d, ldd, docs_per_tile, k, out_s, out_i, nan_flag, stream);
}

}  // namespace jmlr_topk_cuda

// dtype: 0 float32, 1 bfloat16, 2 float16, 3 int8 (S = per-row scales, may be null otherwise).
// out_s / out_i: (B, tiles, 8, k) with tiles = ceil(N / docs_per_tile). Returns a cudaError_t value.
extern "C" int jmlr_topk_cuda_launch(int dtype, const float* Q, const void* D, const float* S, int B, int N, int d,
                                     int64_t ldd, int docs_per_tile, int k, float* out_s, int64_t* out_i,
                                     int* nan_flag, void* stream) {
  using namespace jmlr_topk_cuda;
  if (k < 1 || k > 128 || B < 1 || N < 1 || d < 1 || docs_per_tile < 1) return (int)cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return (int)launch_t<float>(Q, D, S, B, N, d, ldd, docs_per_tile, k, out_s, out_i, nan_flag, s);
    case 1: return (int)launch_t<__nv_bfloat16>(Q, D, S, B, N, d, ldd, docs_per_tile, k, out_s, out_i, nan_flag, s);
    case 2: return (int)launch_t<__half>(Q, D, S, B, N, d, ldd, docs_per_tile, k, out_s, out_i, nan_flag, s);
    case 3: return (int)launch_t<int8_t>(Q, D, S, B, N, d, ldd, docs_per_tile, k, out_s, out_i, nan_flag, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

extern "C" const char* jmlr_topk_cuda_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }
