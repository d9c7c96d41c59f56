// Block-wide primitives shared by the decode-loop kernels (sampling.cu, beam.cu): one thread block of THREADS
// threads works on one row (or one beam group). No system headers, so NVRTC compiles it as is.
#pragma once

#ifndef THREADS
#define THREADS 1024
#endif
#define P2O_INF __int_as_float(0x7f800000)
#define WARPS (THREADS / 32)

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const unsigned short* p, long long i) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i]));
  return f;
}

// float -> unsigned key with the same order (larger float, larger key)
__device__ __forceinline__ unsigned int order_key(float f) {
  unsigned int b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// logit i of a row after the CTRL repetition penalty (seen bitmap; penalty 1 = off) and, while `suppress`, stop
// tokens set to -inf
template <typename T>
__device__ __forceinline__ float process_logit(const T* row, const unsigned char* seen_row, const int* stop_ids,
                                               float penalty, int suppress, int n_stop, int i) {
  float x = load(row, i);
  if (seen_row != nullptr && penalty != 1.0f && seen_row[i]) x = x > 0.f ? x / penalty : x * penalty;
  if (suppress)
    for (int s = 0; s < n_stop; ++s)
      if (stop_ids[s] == i) x = -P2O_INF;
  return x;
}

__device__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < WARPS ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  return red[0];
}

// argmax with ties to the lowest index
__device__ void block_argmax(float v, int idx, float* red_v, int* red_i, float* out_v, int* out_i) {
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) { red_v[threadIdx.x >> 5] = v; red_i[threadIdx.x >> 5] = idx; }
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < WARPS ? red_v[threadIdx.x] : -P2O_INF;
    idx = threadIdx.x < WARPS ? red_i[threadIdx.x] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, v, o);
      int oi = __shfl_xor_sync(0xffffffffu, idx, o);
      if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    if (threadIdx.x == 0) { *out_v = v; *out_i = idx; }
  }
  __syncthreads();
}

// Largest key tau with W(x : key(x) >= tau, key(x) >= lower) >= target over value(0..n-1), where W counts
// (mass == false) or sums exp(x - m) (mass == true); -inf entries never count. Four MSB-first passes over 8-bit
// digits. Each warp fills its own histogram (whole rows often share their top digits, and one shared histogram
// would serialize every atomic on one bin); counts are aggregated across the lanes holding the same digit first.
// hist: WARPS * 256 floats of shared memory.
template <typename F>
__device__ unsigned int radix_select(int n, F value, float m, unsigned int lower, bool mass, float target,
                                     float* hist, unsigned int* shared_prefix, float* shared_above) {
  unsigned int prefix = 0, prefix_mask = 0;
  float* mine = hist + (threadIdx.x >> 5) * 256;
  const unsigned int lane = threadIdx.x & 31;
  if (threadIdx.x == 0) *shared_above = 0.f;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < WARPS * 256; d += THREADS) hist[d] = 0.f;
    __syncthreads();
    for (int base = 0; base < n; base += THREADS) {            // whole warps in step: match_any needs them
      const int i = base + threadIdx.x;
      float x = -P2O_INF;
      if (i < n) x = value(i);
      const unsigned int k = order_key(x);
      const bool in = i < n && k >= lower && (k & prefix_mask) == prefix && x > -P2O_INF;
      const unsigned int digit = in ? (k >> shift) & 255u : 256u;
      if (mass) {
        if (in) atomicAdd(&mine[digit], __expf(x - m));
      } else {
        const unsigned int peers = __match_any_sync(0xffffffffu, digit);
        if (in && (__ffs(peers) - 1) == (int)lane) atomicAdd(&mine[digit], (float)__popc(peers));
      }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < 256; d += THREADS) {         // fold the warps' histograms into warp 0's
      float t = 0.f;
      for (int w = 0; w < WARPS; ++w) t += hist[w * 256 + d];
      hist[d] = t;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float above = *shared_above;
      int chosen = -1;
      for (int d = 255; d >= 0; --d) {
        if (above + hist[d] >= target) { chosen = d; break; }
        above += hist[d];
      }
      if (chosen < 0) {               // rounding (or too few entries) left the target unreachable: lowest bucket
        above = *shared_above;
        for (int d = 0; d < 256; ++d) if (hist[d] > 0.f) { chosen = d; break; }
        if (chosen < 0) chosen = 0;
        for (int d = 255; d > chosen; --d) above += hist[d];
      }
      *shared_above = above;
      *shared_prefix = prefix | ((unsigned int)chosen << shift);
    }
    __syncthreads();
    prefix = *shared_prefix;
    prefix_mask |= 255u << shift;
    __syncthreads();
  }
  return prefix;
}

// Hillis-Steele inclusive scan of one value per thread over THREADS entries of `scan`; -> this thread's sum.
template <typename V>
__device__ V block_inclusive_scan(V v, V* scan) {
  scan[threadIdx.x] = v;
  __syncthreads();
  for (int off = 1; off < THREADS; off <<= 1) {
    V add = threadIdx.x >= off ? scan[threadIdx.x - off] : (V)0;
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }
  return scan[threadIdx.x];
}
