// Fused inner-product score + top-k on the CPU (jmlr.kernels.topk, backend "cpu").
//
// Three kernels share one running top-k state (a candidate buffer with a threshold):
//   * stream: each thread streams its share of the doc rows ONCE through all B queries with AVX-512 FMA
//             (docs stored as fp32, bf16, fp16 or int8 with per-row scales, converted to fp32 in registers).
//             Memory-bound regime (small B).
//   * gemm:   each thread runs a single-threaded MKL sgemm (at::mm) on a doc block sized so that the
//             (B, block) scores stay in its L2, then filters each query's row against its current k-th best
//             before anything is kept. Compute-bound regime (large B), exact fp32.
// Threads take doc chunks from an atomic counter (no barrier until the final merge).
//   * amx:    bf16 (or int8 / fp16 converted to bf16 in L1) docs x bf16 queries on AMX tiles, with fp32
//             accumulation; used for reduced-precision candidate generation, followed by an fp32 rerank
//             done in Python via rerank().
// Every AVX-512 / AMX function carries a target attribute so that the file compiles with baseline flags
// and the caller checks cpu_features() before choosing a kernel.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <immintrin.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

namespace jmlr_topk {

#define JMLR_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define JMLR_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

// ------------------------------------------------------------------------------------------------
// CPU features
// ------------------------------------------------------------------------------------------------
static bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

static bool cpuid_amx_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  const bool avx512_bf16 = (a >> 5) & 1u;
  return amx_bf16 && amx_tile && avx512_bf16;
}

// Linux gates AMX tile data behind a per-process permission request (arch_prctl ARCH_REQ_XCOMP_PERM).
static bool request_amx() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int ARCH_REQ_XCOMP_PERM = 0x1023;
  constexpr int XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
  return false;
#endif
}

static bool amx_usable() {
  static const bool ok = has_avx512() && cpuid_amx_bf16() && request_amx();
  return ok;
}

// ------------------------------------------------------------------------------------------------
// Running top-k: candidates that beat the current k-th best are appended; when the buffer is full, an
// nth_element keeps the k best and the k-th best becomes the new threshold. The order is total
// (score desc, index asc), so results do not depend on the order rows arrive in (threads take doc chunks
// dynamically) and ties prefer the smaller index.
// ------------------------------------------------------------------------------------------------
struct Cand {
  float s;
  int64_t i;
};
static inline bool better(const Cand& a, const Cand& b) { return a.s > b.s || (a.s == b.s && a.i < b.i); }

struct TopK {
  int64_t k = 0, cap = 0, n = 0;
  float thr = kNegInf;
  int64_t thr_i = std::numeric_limits<int64_t>::max();
  std::vector<Cand> buf;
  void init(int64_t k_) {
    k = k_;
    cap = k + std::max<int64_t>(64, std::min<int64_t>(k, 65536));
    buf.resize(cap);
    n = 0;
    thr = kNegInf;
    thr_i = std::numeric_limits<int64_t>::max();
  }
  // would (v, i) enter the current k best? (false for NaN)
  inline bool admits(float v, int64_t i) const { return v > thr || (v == thr && i < thr_i); }
  inline void push(float s, int64_t i) {
    buf[n].s = s;
    buf[n].i = i;
    if (++n == cap) compact();
  }
  void compact() {
    std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.begin() + n, better);
    thr = buf[k - 1].s;
    thr_i = buf[k - 1].i;
    n = k;
  }
};

// Merge the states of all threads for each query into (B, k) outputs, best first.
static void merge_states(std::vector<std::vector<TopK>>& per_thread, int64_t B, int64_t k, float* out_s,
                         int64_t* out_i) {
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<Cand> all;
    for (int64_t b = b0; b < b1; ++b) {
      all.clear();
      for (auto& states : per_thread) {
        TopK& st = states[b];
        all.insert(all.end(), st.buf.begin(), st.buf.begin() + st.n);
      }
      const int64_t m = std::min<int64_t>(k, (int64_t)all.size());
      std::partial_sort(all.begin(), all.begin() + m, all.end(), better);
      for (int64_t j = 0; j < k; ++j) {
        out_s[b * k + j] = j < m ? all[j].s : kNegInf;
        out_i[b * k + j] = j < m ? all[j].i : -1;
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Storage types and AVX-512 loads (16 lanes converted to fp32)
// ------------------------------------------------------------------------------------------------
struct bf16_t { uint16_t v; };
struct f16_t { uint16_t v; };

template <typename T> struct Ld;
template <> struct Ld<float> {
  JMLR_AVX512 static inline __m512 full(const float* p) { return _mm512_loadu_ps(p); }
  JMLR_AVX512 static inline __m512 part(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static inline float scalar(const float* p) { return *p; }
};
template <> struct Ld<bf16_t> {
  JMLR_AVX512 static inline __m512 widen(__m256i x) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
  }
  JMLR_AVX512 static inline __m512 full(const bf16_t* p) { return widen(_mm256_loadu_si256((const __m256i*)p)); }
  JMLR_AVX512 static inline __m512 part(const bf16_t* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
  static inline float scalar(const bf16_t* p) {
    uint32_t u = (uint32_t)p->v << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
template <> struct Ld<f16_t> {
  JMLR_AVX512 static inline __m512 full(const f16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
  JMLR_AVX512 static inline __m512 part(const f16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
  static inline float scalar(const f16_t* p) { return (float)c10::Half(p->v, c10::Half::from_bits()); }
};
template <> struct Ld<int8_t> {
  JMLR_AVX512 static inline __m512 full(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
  }
  JMLR_AVX512 static inline __m512 part(const int8_t* p, __mmask16 m) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
  }
  static inline float scalar(const int8_t* p) { return (float)*p; }
};

// ------------------------------------------------------------------------------------------------
// Stream kernel: an R-doc x Q-query tile of dot products, accumulated in R*Q zmm registers.
// ------------------------------------------------------------------------------------------------
template <typename T, int R, int Q>
JMLR_AVX512 static inline void dot_tile(const T* D, int64_t ldd, const float* Qm, int64_t ldq, int64_t d,
                                        float* out /* (Q, R) */) {
  __m512 acc[R][Q];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) acc[r][q] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= d; j += 16) {
    __m512 dv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) dv[r] = Ld<T>::full(D + r * ldd + j);
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) {
      const __m512 qv = _mm512_loadu_ps(Qm + q * ldq + j);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r][q] = _mm512_fmadd_ps(dv[r], qv, acc[r][q]);
    }
  }
  if (j < d) {
    const __mmask16 m = (__mmask16)((1u << (d - j)) - 1u);
    __m512 dv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) dv[r] = Ld<T>::part(D + r * ldd + j, m);
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) {
      const __m512 qv = _mm512_maskz_loadu_ps(m, Qm + q * ldq + j);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r][q] = _mm512_fmadd_ps(dv[r], qv, acc[r][q]);
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) out[q * R + r] = _mm512_reduce_add_ps(acc[r][q]);
}

template <int R>
static inline void filter_tile(const float* out, int Qt, int64_t n, int64_t qb, const float* scales, TopK* states,
                               bool& nan_seen) {
  for (int q = 0; q < Qt; ++q) {
    TopK& st = states[qb + q];
    for (int r = 0; r < R; ++r) {
      float v = out[q * R + r];
      if (scales) v *= scales[n + r];
      if (!std::isfinite(v))
        nan_seen = true;
      else if (st.admits(v, n + r))
        st.push(v, n + r);
    }
  }
}

// The doc rows [n0, n1) of one thread through all B queries; doc tiles of 8 rows stay in L1 while
// every query tile passes over them.
template <typename T>
JMLR_AVX512 static void stream_range(const T* D, int64_t ldd, int64_t d, int64_t n0, int64_t n1, const float* Qm,
                                     int64_t B, const float* scales, TopK* states, bool& nan_seen) {
  float out[32];
  int64_t n = n0;
  if (B == 1 && !std::is_same<T, float>::value) {
    // one query over reduced storage: each row start to end with 4 independent accumulators, a single
    // sequential stream (measured 20-30% faster than the 8-row tile for bf16/fp16/int8; for fp32 the
    // 8-row tile is as fast as MKL's sgemv)
    TopK& st = states[0];
    for (; n < n1; ++n) {
      const T* row = D + n * ldd;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
      int64_t j = 0;
      for (; j + 64 <= d; j += 64) {
        a0 = _mm512_fmadd_ps(Ld<T>::full(row + j), _mm512_loadu_ps(Qm + j), a0);
        a1 = _mm512_fmadd_ps(Ld<T>::full(row + j + 16), _mm512_loadu_ps(Qm + j + 16), a1);
        a2 = _mm512_fmadd_ps(Ld<T>::full(row + j + 32), _mm512_loadu_ps(Qm + j + 32), a2);
        a3 = _mm512_fmadd_ps(Ld<T>::full(row + j + 48), _mm512_loadu_ps(Qm + j + 48), a3);
      }
      for (; j + 16 <= d; j += 16) a0 = _mm512_fmadd_ps(Ld<T>::full(row + j), _mm512_loadu_ps(Qm + j), a0);
      if (j < d) {
        const __mmask16 m = (__mmask16)((1u << (d - j)) - 1u);
        a1 = _mm512_fmadd_ps(Ld<T>::part(row + j, m), _mm512_maskz_loadu_ps(m, Qm + j), a1);
      }
      float v = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
      if (scales) v *= scales[n];
      if (!std::isfinite(v))
        nan_seen = true;
      else if (st.admits(v, n))
        st.push(v, n);
    }
    return;
  }
  for (; n + 8 <= n1; n += 8) {
    const T* Dn = D + n * ldd;
    int64_t qb = 0;
    for (; qb + 4 <= B; qb += 4) {
      dot_tile<T, 4, 4>(Dn, ldd, Qm + qb * d, d, d, out);
      filter_tile<4>(out, 4, n, qb, scales, states, nan_seen);
      dot_tile<T, 4, 4>(Dn + 4 * ldd, ldd, Qm + qb * d, d, d, out);
      filter_tile<4>(out, 4, n + 4, qb, scales, states, nan_seen);
    }
    switch (B - qb) {
      case 3:
        dot_tile<T, 4, 3>(Dn, ldd, Qm + qb * d, d, d, out);
        filter_tile<4>(out, 3, n, qb, scales, states, nan_seen);
        dot_tile<T, 4, 3>(Dn + 4 * ldd, ldd, Qm + qb * d, d, d, out);
        filter_tile<4>(out, 3, n + 4, qb, scales, states, nan_seen);
        break;
      case 2:
        dot_tile<T, 8, 2>(Dn, ldd, Qm + qb * d, d, d, out);
        filter_tile<8>(out, 2, n, qb, scales, states, nan_seen);
        break;
      case 1:
        dot_tile<T, 8, 1>(Dn, ldd, Qm + qb * d, d, d, out);
        filter_tile<8>(out, 1, n, qb, scales, states, nan_seen);
        break;
      default:
        break;
    }
  }
  for (; n < n1; ++n) {
    const T* Dn = D + n * ldd;
    for (int64_t qb = 0; qb < B; ++qb) {
      dot_tile<T, 1, 1>(Dn, ldd, Qm + qb * d, d, d, out);
      filter_tile<1>(out, 1, n, qb, scales, states, nan_seen);
    }
  }
}

// Portable scalar version for CPUs without AVX-512 (the Python dispatch prefers the gemm kernel there).
template <typename T>
static void stream_range_scalar(const T* D, int64_t ldd, int64_t d, int64_t n0, int64_t n1, const float* Qm,
                                int64_t B, const float* scales, TopK* states, bool& nan_seen) {
  std::vector<float> row(d);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t j = 0; j < d; ++j) row[j] = Ld<T>::scalar(D + n * ldd + j);
    for (int64_t b = 0; b < B; ++b) {
      const float* q = Qm + b * d;
      float acc = 0.f;
      for (int64_t j = 0; j < d; ++j) acc += q[j] * row[j];
      float v = scales ? acc * scales[n] : acc;
      if (!std::isfinite(v))
        nan_seen = true;
      else if (states[b].admits(v, n))
        states[b].push(v, n);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// AMX kernel: C(16 docs x 16 queries) += A(16 docs x 32 dims, bf16) * B(32 dims x 16 queries, VNNI bf16).
// Queries are packed once; docs are read in place (bf16, d % 32 == 0) or converted per 32-row block into
// an L1 buffer (int8 -> bf16 is exact, fp16 -> bf16 rounds; the rerank restores exactness).
// Tiles: 0..3 accumulators (doc half h, query group g) = h*2+g, 4..5 doc halves, 6..7 query groups.
// ------------------------------------------------------------------------------------------------
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

JMLR_AMX static void amx_configure() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

static inline uint16_t f32_to_bf16_bits(float f) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

// Convert 16 fp32 lanes to bf16 (round to nearest even) and store 16 x uint16.
JMLR_AMX static inline void store_bf16(uint16_t* dst, __m512 v) {
  _mm256_storeu_si256((__m256i*)dst, (__m256i)_mm512_cvtneps_pbh(v));
}
JMLR_AMX static inline void store_bf16_mask(uint16_t* dst, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(dst, m, (__m256i)_mm512_cvtneps_pbh(v));
}

// Pack queries (B, d) fp32 into (G, KC, 16 rows, 16 queries, 2) bf16, zero padded.
JMLR_AMX static std::vector<uint16_t> pack_queries(const float* Qm, int64_t B, int64_t d, int64_t G, int64_t KC) {
  std::vector<uint16_t> P((size_t)G * KC * 512, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t g = b / 16, jq = b % 16;
    for (int64_t j = 0; j < d; ++j) {
      const int64_t kc = j / 32, r = (j % 32) / 2, e = j % 2;
      P[((g * KC + kc) * 16 + r) * 32 + jq * 2 + e] = f32_to_bf16_bits(Qm[b * d + j]);
    }
  }
  return P;
}

template <typename T>
JMLR_AMX static inline void to_bf16_rows(const T* src, int64_t ldd, int64_t d, int64_t rows, uint16_t* dst,
                                         int64_t dpad) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * ldd;
    uint16_t* o = dst + r * dpad;
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) store_bf16(o + j, Ld<T>::full(s + j));
    if (j < d) {
      const __mmask16 m = (__mmask16)((1u << (d - j)) - 1u);
      store_bf16_mask(o + j, Ld<T>::part(s + j, m), m);
    }
    for (int64_t jj = d; jj < dpad; ++jj) o[jj] = 0;
  }
}

// Filter a stored accumulator tile (16 docs x 16 queries of group g) into the states.
JMLR_AMX static inline void amx_filter(const float* C, int64_t n, int64_t g, int64_t B, const float* scales,
                                       TopK* states, float* thr, __mmask16& nanm) {
  __m512 tv = _mm512_loadu_ps(thr + g * 16);
  for (int r = 0; r < 16; ++r) {
    __m512 v = _mm512_loadu_ps(C + r * 16);
    if (scales) v = _mm512_mul_ps(v, _mm512_set1_ps(scales[n + r]));
    nanm |= _mm512_fpclass_ps_mask(v, 0x99);  // NaN or +-Inf
    __mmask16 m = _mm512_cmp_ps_mask(v, tv, _CMP_GE_OQ);
    if (m) {
      alignas(64) float vs[16];
      _mm512_store_ps(vs, v);
      while (m) {
        const int q = __builtin_ctz(m);
        m &= m - 1;
        const int64_t b = g * 16 + q;
        TopK& st = states[b];
        if (st.admits(vs[q], n + r)) {
          st.push(vs[q], n + r);
          thr[b] = st.thr;
        }
      }
      tv = _mm512_loadu_ps(thr + g * 16);
    }
  }
}

template <typename T>
JMLR_AMX static void amx_range(const T* D, int64_t ldd, int64_t d, int64_t n0, int64_t n1, const uint16_t* P,
                               int64_t B, int64_t G, int64_t KC, const float* scales, TopK* states, float* thr,
                               bool& nan_seen) {
  constexpr bool direct = std::is_same<T, bf16_t>::value;
  const int64_t dpad = KC * 32;
  const bool in_place = direct && dpad == d;
  std::vector<uint16_t> abuf(in_place ? 0 : (size_t)32 * dpad);
  alignas(64) float C[4][256];
  __mmask16 nanm = 0;
  amx_configure();
  int64_t n = n0;
  for (; n + 32 <= n1; n += 32) {
    const uint16_t* A;
    int64_t lda;
    if (in_place) {
      A = (const uint16_t*)(D + n * ldd);
      lda = ldd * 2;
    } else {
      to_bf16_rows<T>(D + n * ldd, ldd, d, 32, abuf.data(), dpad);
      A = abuf.data();
      lda = dpad * 2;
    }
    for (int64_t g = 0; g < G; g += 2) {
      const bool two = g + 1 < G;
      _tile_zero(0);
      _tile_zero(2);
      if (two) {
        _tile_zero(1);
        _tile_zero(3);
      }
      for (int64_t kc = 0; kc < KC; ++kc) {
        const char* a0 = (const char*)A + kc * 64;
        _tile_loadd(4, a0, lda);
        _tile_loadd(5, a0 + 16 * lda, lda);
        _tile_loadd(6, P + (g * KC + kc) * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        if (two) {
          _tile_loadd(7, P + ((g + 1) * KC + kc) * 512, 64);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, C[0], 64);
      _tile_stored(2, C[2], 64);
      amx_filter(C[0], n, g, B, scales, states, thr, nanm);
      amx_filter(C[2], n + 16, g, B, scales, states, thr, nanm);
      if (two) {
        _tile_stored(1, C[1], 64);
        _tile_stored(3, C[3], 64);
        amx_filter(C[1], n, g + 1, B, scales, states, thr, nanm);
        amx_filter(C[3], n + 16, g + 1, B, scales, states, thr, nanm);
      }
    }
  }
  _tile_release();
  if (nanm) nan_seen = true;
}

// ------------------------------------------------------------------------------------------------
// Tile kernel (compute-bound, B >= ~8, exact fp32): queries in the LANES. Queries are packed once as
// Qt (d, Bp) (Bp = B rounded up to 16, zero padded); a tile of R = 12 doc rows x 32 queries keeps 24 zmm
// accumulators, and each step j broadcasts doc element D[r][j] against 2 query vectors Qt[j, c0:c0+32]:
// 24 FMAs per 2 vector loads + 12 broadcasts, no horizontal reductions and no doc transposition. Each doc
// tile is read from memory once (fp32 in place; reduced storage converted to fp32 into a 12-row L1 buffer)
// and reused from L1 by every 32-query block. The scores of a doc row come out as vectors of 16 queries,
// filtered against a vector of the 16 running thresholds.
// ------------------------------------------------------------------------------------------------
constexpr int kTileR = 12;

// pf: the next doc tile (kTileR rows of pf_ld elements, pf_row_bytes each) to pull into cache while this one
// computes: one cache line per step j, so the memory stream overlaps the FMAs. nullptr: no prefetch.
template <int R, int V>
JMLR_AVX512 static inline void bcast_tile(const float* Dr, int64_t ld, const float* Qt, int64_t Bp, int64_t d,
                                          float* out /* (R, V*16) */, const char* pf = nullptr,
                                          int64_t pf_ld_bytes = 0, int64_t pf_row_bytes = 0) {
  __m512 acc[R][V];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  const int64_t pf_lines = pf ? kTileR * ((pf_row_bytes + 63) / 64) : 0;
  for (int64_t j = 0; j < d; ++j) {
    if (j < pf_lines) _mm_prefetch(pf + (j % kTileR) * pf_ld_bytes + (j / kTileR) * 64, _MM_HINT_T0);
    const float* qj = Qt + j * Bp;
    __m512 qv[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) qv[v] = _mm512_loadu_ps(qj + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(Dr[r * ld + j]);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(b, qv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(out + r * V * 16 + v * 16, acc[r][v]);
}

// Filter R rows x (V*16) query scores starting at query column c0 into the states.
JMLR_AVX512 static inline void bcast_filter(const float* out, int rows, int V, int64_t n, int64_t c0, int64_t B,
                                            const float* scales, TopK* states, float* thr, __mmask16& nanm) {
  for (int r = 0; r < rows; ++r) {
    const __m512 sc = scales ? _mm512_set1_ps(scales[n + r]) : _mm512_set1_ps(1.f);
    for (int v = 0; v < V; ++v) {
      __m512 x = _mm512_loadu_ps(out + r * V * 16 + v * 16);
      if (scales) x = _mm512_mul_ps(x, sc);
      const int64_t cb = c0 + 16 * v;
      nanm |= _mm512_fpclass_ps_mask(x, 0x99);  // NaN or +-Inf
      __mmask16 m = _mm512_cmp_ps_mask(x, _mm512_loadu_ps(thr + cb), _CMP_GE_OQ);
      if (m) {
        alignas(64) float xs[16];
        _mm512_store_ps(xs, x);
        while (m) {
          const int t = __builtin_ctz(m);
          m &= m - 1;
          const int64_t b = cb + t;
          if (b < B && states[b].admits(xs[t], n + r)) {
            states[b].push(xs[t], n + r);
            thr[b] = states[b].thr;
          }
        }
      }
    }
  }
}

template <int R>
JMLR_AVX512 static inline void bcast_rows(const float* Dr, int64_t ld, int rows, int64_t n, const float* Qt,
                                          int64_t B, int64_t Bp, int64_t d, const float* scales, TopK* states,
                                          float* thr, __mmask16& nanm, const char* pf, int64_t pf_ld_bytes,
                                          int64_t pf_row_bytes) {
  alignas(64) float out[R * 32];
  int64_t c0 = 0;
  for (; c0 + 32 <= Bp; c0 += 32) {
    bcast_tile<R, 2>(Dr, ld, Qt + c0, Bp, d, out, c0 == 0 ? pf : nullptr, pf_ld_bytes, pf_row_bytes);
    bcast_filter(out, rows, 2, n, c0, B, scales, states, thr, nanm);
  }
  if (c0 < Bp) {
    bcast_tile<R, 1>(Dr, ld, Qt + c0, Bp, d, out, c0 == 0 ? pf : nullptr, pf_ld_bytes, pf_row_bytes);
    bcast_filter(out, rows, 1, n, c0, B, scales, states, thr, nanm);
  }
}

template <typename T>
JMLR_AVX512 static void bcast_range(const T* D, int64_t ldd, int64_t d, int64_t n0, int64_t n1, const float* Qt,
                                    int64_t B, int64_t Bp, const float* scales, TopK* states, float* thr,
                                    bool& nan_seen) {
  constexpr bool in_place = std::is_same<T, float>::value;
  std::vector<float> buf(in_place ? 0 : (size_t)kTileR * d);
  __mmask16 nanm = 0;
  int64_t n = n0;
  for (; n < n1; n += kTileR) {
    const int rows = (int)std::min<int64_t>(kTileR, n1 - n);
    const float* Dr;
    int64_t ld;
    if constexpr (in_place) {
      Dr = (const float*)(D + n * ldd);
      ld = ldd;
    } else {
      for (int r = 0; r < rows; ++r) {
        const T* src = D + (n + r) * ldd;
        float* dst = buf.data() + r * d;
        int64_t j = 0;
        for (; j + 16 <= d; j += 16) _mm512_storeu_ps(dst + j, Ld<T>::full(src + j));
        if (j < d) {
          const __mmask16 m = (__mmask16)((1u << (d - j)) - 1u);
          _mm512_mask_storeu_ps(dst + j, m, Ld<T>::part(src + j, m));
        }
      }
      Dr = buf.data();
      ld = d;
    }
    // the next tile of the source rows (kTileR rows, all inside [n0, n1) or not prefetched)
    const char* pf = n + 2 * kTileR <= n1 ? (const char*)(D + (n + kTileR) * ldd) : nullptr;
    if (rows == kTileR) {
      bcast_rows<kTileR>(Dr, ld, rows, n, Qt, B, Bp, d, scales, states, thr, nanm, pf, ldd * (int64_t)sizeof(T),
                         d * (int64_t)sizeof(T));
    } else {
      for (int r = 0; r < rows; ++r)
        bcast_rows<1>(Dr + r * ld, ld, 1, n + r, Qt, B, Bp, d, scales, states, thr, nanm, nullptr, 0, 0);
    }
  }
  if (nanm) nan_seen = true;
}

// Filter one query's row of a gemm score block against its running threshold; returns true on NaN.
JMLR_AVX512 static bool gemm_filter_row_avx512(const float* row, int64_t nb, int64_t n0, const float* S, TopK& st) {
  __mmask16 nanm = 0;
  for (int64_t j = 0; j < nb; j += 16) {
    const __mmask16 lm = j + 16 <= nb ? (__mmask16)0xFFFF : (__mmask16)((1u << (nb - j)) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(lm, row + j);
    if (S) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(lm, S + n0 + j));
    nanm |= _mm512_mask_fpclass_ps_mask(lm, v, 0x99);  // NaN or +-Inf
    __mmask16 m = _mm512_mask_cmp_ps_mask(lm, v, _mm512_set1_ps(st.thr), _CMP_GE_OQ);
    if (m) {
      alignas(64) float vs[16];
      _mm512_store_ps(vs, v);
      while (m) {
        const int t = __builtin_ctz(m);
        m &= m - 1;
        if (st.admits(vs[t], n0 + j + t)) st.push(vs[t], n0 + j + t);
      }
    }
  }
  return nanm != 0;
}

// ------------------------------------------------------------------------------------------------
// Drivers
// ------------------------------------------------------------------------------------------------
enum Kernel { STREAM = 0, GEMM = 1, AMX = 2, TILE = 3 };

template <typename F>
static void dispatch_storage(const at::Tensor& docs, F&& f) {
  switch (docs.scalar_type()) {
    case at::kFloat: f((const float*)docs.data_ptr()); break;
    case at::kBFloat16: f((const bf16_t*)docs.data_ptr()); break;
    case at::kHalf: f((const f16_t*)docs.data_ptr()); break;
    case at::kChar: f((const int8_t*)docs.data_ptr()); break;
    default: TORCH_CHECK(false, "docs dtype must be float32, bfloat16, float16 or int8, got ", docs.scalar_type());
  }
}

static void check_inputs(const at::Tensor& q, const at::Tensor& docs, const c10::optional<at::Tensor>& scales,
                         int64_t k) {
  TORCH_CHECK(q.dim() == 2 && docs.dim() == 2, "queries and docs must be 2-D");
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.is_contiguous(), "queries must be contiguous float32");
  TORCH_CHECK(q.size(1) == docs.size(1), "dimension mismatch: queries d=", q.size(1), ", docs d=", docs.size(1));
  TORCH_CHECK(docs.stride(1) == 1, "docs rows must be contiguous (stride(1) == 1)");
  TORCH_CHECK(k >= 1 && k <= docs.size(0), "k must be in [1, N]");
  if (scales.has_value()) {
    TORCH_CHECK(scales->scalar_type() == at::kFloat && scales->is_contiguous() && scales->numel() == docs.size(0),
                "scales must be a contiguous float32 (N,) tensor");
  }
}

// Dynamic schedule without barriers: T workers (one per torch thread) take chunks of `chunk` doc rows from
// an atomic counter until none is left; each worker owns its top-k states, merged once at the end. On a
// shared machine a descheduled thread then delays only its current chunk, not every block.
template <typename F>
static void run_chunks(int64_t N, int64_t chunk, int64_t T, F&& f /* f(worker, n0, n1) */) {
  const int64_t n_chunks = (N + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  if (T == 1) {  // no parallel region at all (small problems, or one thread)
    for (int64_t c = 0; c < n_chunks; ++c) f(0, c * chunk, std::min(N, (c + 1) * chunk));
    return;
  }
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1)) {
        f(t, c * chunk, std::min(N, (c + 1) * chunk));
      }
    }
  });
}

std::vector<at::Tensor> topk_cpu(const at::Tensor& q, const at::Tensor& docs, const c10::optional<at::Tensor>& scales,
                                 int64_t k, int64_t kernel, int64_t block) {
  check_inputs(q, docs, scales, k);
  const int64_t B = q.size(0), d = q.size(1), N = docs.size(0), ldd = docs.stride(0);
  const float* Qm = q.data_ptr<float>();
  const float* S = scales.has_value() ? scales->data_ptr<float>() : nullptr;
  auto out_s = at::empty({B, k}, q.options());
  auto out_i = at::empty({B, k}, q.options().dtype(at::kLong));
  std::atomic<bool> nan_seen{false};
  const bool avx = has_avx512();
  const bool use_amx = kernel == AMX;
  TORCH_CHECK(!use_amx || amx_usable(), "AMX-BF16 is not available on this CPU/OS");
  // one worker per torch thread, but a single one for small problems (a parallel region costs more than it
  // saves below ~1M multiply-adds, and much more when other processes hold the cores)
  const int64_t work = N * d * std::max<int64_t>(B, 1);
  const int64_t T = work < (int64_t(1) << 21) ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (N + 255) / 256));
  std::vector<std::vector<TopK>> states(T, std::vector<TopK>(B));
  for (auto& ts : states)
    for (auto& st : ts) st.init(k);

  if (kernel == GEMM) {
    // per worker: an sgemm (single-threaded inside the parallel region) on `block` doc rows into a private
    // (B, block) buffer sized for L2, then each query's row is filtered against its running k-th best
    if (block <= 0) block = std::max<int64_t>(256, std::min<int64_t>(8192, (262144 / std::max<int64_t>(B, 1))));
    block = std::max<int64_t>(16, std::min(block, N));
    const bool convert = docs.scalar_type() != at::kFloat;
    std::vector<at::Tensor> sbuf(T), cbuf(T);
    for (int64_t t = 0; t < T; ++t) {
      sbuf[t] = at::empty({B, block}, q.options());
      if (convert) cbuf[t] = at::empty({block, d}, q.options());
    }
    run_chunks(N, block, T, [&](int64_t t, int64_t n0, int64_t n1) {
      const int64_t nb = n1 - n0;
      at::Tensor blk = docs.narrow(0, n0, nb);
      if (convert) {
        at::Tensor c = cbuf[t].narrow(0, 0, nb);
        c.copy_(blk);
        blk = c;
      }
      at::Tensor sc = nb == block ? sbuf[t] : sbuf[t].narrow(1, 0, nb);
      at::mm_out(sc, q, blk.t());  // (B, nb)
      const float* sp = sc.data_ptr<float>();
      const int64_t lds = sc.stride(0);
      bool local_nan = false;
      for (int64_t b = 0; b < B; ++b) {
        TopK& st = states[t][b];
        const float* row = sp + b * lds;
        if (avx) {
          if (gemm_filter_row_avx512(row, nb, n0, S, st)) local_nan = true;
        } else {
          for (int64_t j = 0; j < nb; ++j) {
            const float v = S ? row[j] * S[n0 + j] : row[j];
            if (!std::isfinite(v))
              local_nan = true;
            else if (st.admits(v, n0 + j))
              st.push(v, n0 + j);
          }
        }
      }
      if (local_nan) nan_seen = true;
    });
  } else {
    const int64_t G = (B + 15) / 16, KC = (d + 31) / 32, Bp = G * 16;
    const bool use_tile = kernel == TILE;
    TORCH_CHECK(!use_tile || avx, "the tile kernel needs AVX-512");
    std::vector<uint16_t> P;
    if (use_amx) P = pack_queries(Qm, B, d, G, KC);
    std::vector<float> Qt;
    if (use_tile) {  // (d, Bp), zero padded
      Qt.assign((size_t)d * Bp, 0.f);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < d; ++j) Qt[j * Bp + b] = Qm[b * d + j];
    }
    std::vector<std::vector<float>> thr(T);
    if (use_amx || use_tile)
      for (auto& tv : thr) {
        tv.assign(Bp, kPosInf);
        for (int64_t b = 0; b < B; ++b) tv[b] = kNegInf;
      }
    if (block <= 0) block = 8160;  // a multiple of 32 (AMX tiles) and of 12 (tile kernel)
    block = std::max<int64_t>(96, block / 96 * 96);
    run_chunks(N, block, T, [&](int64_t t, int64_t n0, int64_t n1) {
      bool local_nan = false;
      TopK* st = states[t].data();
      dispatch_storage(docs, [&](auto* D) {
        using T_ = std::remove_const_t<std::remove_pointer_t<decltype(D)>>;
        if (use_tile) {
          bcast_range<T_>(D, ldd, d, n0, n1, Qt.data(), B, Bp, S, st, thr[t].data(), local_nan);
        } else if (use_amx) {
          const int64_t n_amx = n0 + (n1 - n0) / 32 * 32;
          amx_range<T_>(D, ldd, d, n0, n_amx, P.data(), B, G, KC, S, st, thr[t].data(), local_nan);
          if (n_amx < n1) stream_range<T_>(D, ldd, d, n_amx, n1, Qm, B, S, st, local_nan);
        } else if (avx) {
          stream_range<T_>(D, ldd, d, n0, n1, Qm, B, S, st, local_nan);
        } else {
          stream_range_scalar<T_>(D, ldd, d, n0, n1, Qm, B, S, st, local_nan);
        }
      });
      if (local_nan) nan_seen = true;
    });
  }
  merge_states(states, B, k, out_s.data_ptr<float>(), out_i.data_ptr<int64_t>());
  return {out_s, out_i, at::full({1}, nan_seen.load(), q.options().dtype(at::kBool))};
}

// Exact fp32 rescoring of candidate rows: scores[b, j] = q[b] . docs[cand[b, j]] (* scales), then the k
// best by (score desc, index asc). Negative candidate ids (padding) are skipped.
std::vector<at::Tensor> rerank_cpu(const at::Tensor& q, const at::Tensor& docs, const c10::optional<at::Tensor>& scales,
                                   const at::Tensor& cand, int64_t k) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.is_contiguous() && q.dim() == 2, "queries must be contiguous float32");
  TORCH_CHECK(docs.dim() == 2 && docs.stride(1) == 1 && docs.size(1) == q.size(1), "docs must be (N, d), rows contiguous");
  TORCH_CHECK(cand.scalar_type() == at::kLong && cand.dim() == 2 && cand.size(0) == q.size(0) && cand.is_contiguous(),
              "candidates must be a contiguous (B, k') int64 tensor");
  const int64_t B = q.size(0), d = q.size(1), K = cand.size(1), ldd = docs.stride(0), N = docs.size(0);
  TORCH_CHECK(k >= 1 && k <= K, "k must be in [1, k']");
  const float* Qm = q.data_ptr<float>();
  const float* S = scales.has_value() ? scales->data_ptr<float>() : nullptr;
  const int64_t* C = cand.data_ptr<int64_t>();
  auto out_s = at::empty({B, k}, q.options());
  auto out_i = at::empty({B, k}, q.options().dtype(at::kLong));
  float* os = out_s.data_ptr<float>();
  int64_t* oi = out_i.data_ptr<int64_t>();
  const bool avx = has_avx512();
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<Cand> all(K);
    float out[1];
    for (int64_t b = b0; b < b1; ++b) {
      int64_t m = 0;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t i = C[b * K + j];
        if (i < 0 || i >= N) continue;
        float v = 0.f;
        dispatch_storage(docs, [&](auto* D) {
          using T_ = std::remove_const_t<std::remove_pointer_t<decltype(D)>>;
          if (avx) {
            dot_tile<T_, 1, 1>(D + i * ldd, ldd, Qm + b * d, d, d, out);
            v = out[0];
          } else {
            for (int64_t t = 0; t < d; ++t) v += Qm[b * d + t] * Ld<T_>::scalar(D + i * ldd + t);
          }
        });
        all[m].s = S ? v * S[i] : v;
        all[m].i = i;
        ++m;
      }
      const int64_t mm = std::min(k, m);
      std::partial_sort(all.begin(), all.begin() + mm, all.begin() + m, better);
      for (int64_t j = 0; j < k; ++j) {
        os[b * k + j] = j < mm ? all[j].s : kNegInf;
        oi[b * k + j] = j < mm ? all[j].i : -1;
      }
    }
  });
  return {out_s, out_i};
}

std::map<std::string, bool> cpu_features() {
  return {{"avx512", has_avx512()}, {"amx_bf16", amx_usable()}};
}

}  // namespace jmlr_topk

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "jmlr fused score + top-k CPU kernels";
  m.def("topk", &jmlr_topk::topk_cpu, "fused score + top-k (kernel: 0 stream, 1 gemm, 2 amx, 3 tile)", py::arg("queries"),
        py::arg("docs"), py::arg("scales"), py::arg("k"), py::arg("kernel"), py::arg("block"));
  m.def("rerank", &jmlr_topk::rerank_cpu, "exact rescoring of candidate rows", py::arg("queries"), py::arg("docs"),
        py::arg("scales"), py::arg("candidates"), py::arg("k"));
  m.def("cpu_features", &jmlr_topk::cpu_features);
}
