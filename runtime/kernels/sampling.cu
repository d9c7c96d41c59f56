// Fused logits processor + sampler for the on-device decode loop: one thread block per batch row.
//
// Reads the row's logits in place (fp16 or fp32, any row of a [B*S, V] buffer), applies the CTRL repetition
// penalty (seen bitmap), suppresses stop tokens before min_new_tokens, then either takes the argmax (greedy; ties
// -> lowest id, as numpy.argmax) or samples: temperature, top-k (exact radix select, ties at the boundary kept),
// top-p (exact radix select on probability mass), inverse-CDF draw in vocabulary order with a counter-based
// Philox4x32-10 uniform (seed, step, row). Thread 0 then advances the loop state: the chosen id goes straight into
// the next step's bound input_ids, the token history, seqlens_k += 1, the finished flag and the seen bitmap.
// NumPy twin: paddle2ort/runtime/kernels/reference.py (same algorithm, same uniforms).
// No headers: NVRTC compiles it as is (fp16 is read as raw bits and converted with one PTX instruction).

#define THREADS 1024
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

__device__ __forceinline__ void mulhilo(unsigned int a, unsigned int b, unsigned int* hi, unsigned int* lo) {
  unsigned long long p = (unsigned long long)a * (unsigned long long)b;
  *hi = (unsigned int)(p >> 32);
  *lo = (unsigned int)p;
}

// Philox4x32-10 (Salmon et al. 2011), counter (step, row, 0, 0), key (seed lo, seed hi) -> uniform [0, 1) with
// 24 random bits (exact in float32 and float64, so the NumPy twin draws the very same number).
__device__ float philox_uniform(unsigned long long seed, unsigned int step, unsigned int row) {
  unsigned int c0 = step, c1 = row, c2 = 0, c3 = 0;
  unsigned int k0 = (unsigned int)seed, k1 = (unsigned int)(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    unsigned int hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo(0xCD9E8D57u, c2, &hi1, &lo1);
    unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  return (float)(c0 >> 8) * (1.0f / 16777216.0f);
}

struct Params {
  int vocab;
  long long row_stride;       // elements between consecutive logits rows
  float temperature;
  int top_k;                  // 0: off
  float top_p;                // 1: off
  float penalty;              // 1: off
  int do_sample;
  int suppress_stop;          // 1 while step < min_new_tokens
  int n_stop;
  int step;
  int max_new;
  int pad_id;
  unsigned long long seed;
};

template <typename T>
__device__ __forceinline__ float processed(const T* row, const unsigned char* seen_row, const int* stop_ids,
                                           const Params& p, int i) {
  float x = load(row, i);
  if (seen_row != nullptr && p.penalty != 1.0f && seen_row[i]) x = x > 0.f ? x / p.penalty : x * p.penalty;
  if (p.suppress_stop)
    for (int s = 0; s < p.n_stop; ++s)
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

// Largest key tau with W(x : key(x) >= tau, key(x) >= lower) >= target, where W counts (mass == false) or sums
// exp(x - m) (mass == true). Four MSB-first passes over 8-bit digits with a shared histogram.
template <typename T>
__device__ unsigned int radix_select(const T* row, const unsigned char* seen_row, const int* stop_ids, const Params& p,
                                     float inv_t, float m, unsigned int lower, bool mass, float target,
                                     float* hist, unsigned int* shared_prefix, float* shared_above) {
  unsigned int prefix = 0, prefix_mask = 0;
  if (threadIdx.x == 0) *shared_above = 0.f;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += THREADS) hist[d] = 0.f;
    __syncthreads();
    for (int i = threadIdx.x; i < p.vocab; i += THREADS) {
      float x = processed(row, seen_row, stop_ids, p, i) * inv_t;
      unsigned int k = order_key(x);
      if (k >= lower && (k & prefix_mask) == prefix && x > -P2O_INF)
        atomicAdd(&hist[(k >> shift) & 255u], mass ? __expf(x - m) : 1.f);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float above = *shared_above;
      int chosen = -1;
      for (int d = 255; d >= 0; --d) {
        if (above + hist[d] >= target) { chosen = d; break; }
        above += hist[d];
      }
      if (chosen < 0) {               // rounding left the target unreachable: take the lowest non-empty bucket
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

template <typename T>
__device__ void sample_row(const T* logits, const int* rows, unsigned char* seen, const int* stop_ids, Params p,
                           long long* next_ids, int* tokens_out, int* seqlens, unsigned char* finished) {
  __shared__ float red_v[WARPS];
  __shared__ int red_i[WARPS];
  __shared__ float hist[256];
  __shared__ float scan[THREADS];
  __shared__ unsigned int s_prefix;
  __shared__ float s_above, s_val;
  __shared__ int s_idx, s_last;
  const int b = blockIdx.x;
  const long long r = rows != nullptr ? rows[b] : b;
  const T* row = logits + r * p.row_stride;
  const unsigned char* seen_row = seen != nullptr ? seen + (long long)b * p.vocab : nullptr;

  // 1. max (the argmax for greedy)
  float best = -P2O_INF;
  int best_i = 0x7fffffff;
  const float inv_t = p.do_sample ? 1.0f / p.temperature : 1.0f;
  for (int i = threadIdx.x; i < p.vocab; i += THREADS) {
    float x = processed(row, seen_row, stop_ids, p, i) * inv_t;
    if (x > best || (x == best && i < best_i)) { best = x; best_i = i; }
  }
  block_argmax(best, best_i, red_v, red_i, &s_val, &s_idx);
  int token = s_idx;
  if (p.do_sample) {
    const float m = s_val;
    // 2. top-k threshold (count), 3. top-p threshold (mass among the top-k), 4. inverse-CDF draw
    unsigned int lower = 0;
    if (p.top_k > 0 && p.top_k < p.vocab)
      lower = radix_select(row, seen_row, stop_ids, p, inv_t, m, 0u, false, (float)p.top_k, hist, &s_prefix,
                           &s_above);
    if (p.top_p < 1.0f) {
      float z = 0.f;
      for (int i = threadIdx.x; i < p.vocab; i += THREADS) {
        float x = processed(row, seen_row, stop_ids, p, i) * inv_t;
        if (order_key(x) >= lower && x > -P2O_INF) z += __expf(x - m);
      }
      z = block_sum(z, red_v);
      lower = radix_select(row, seen_row, stop_ids, p, inv_t, m, lower, true, p.top_p * z, hist, &s_prefix, &s_above);
    }
    // contiguous chunk per thread so a block scan gives prefix sums in vocabulary order
    const int chunk = (p.vocab + THREADS - 1) / THREADS;
    const int lo = threadIdx.x * chunk, hi = min(lo + chunk, p.vocab);
    float local = 0.f;
    for (int i = lo; i < hi; ++i) {
      float x = processed(row, seen_row, stop_ids, p, i) * inv_t;
      if (order_key(x) >= lower && x > -P2O_INF) local += __expf(x - m);
    }
    scan[threadIdx.x] = local;
    __syncthreads();
    for (int off = 1; off < THREADS; off <<= 1) {     // Hillis-Steele inclusive scan
      float add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0.f;
      __syncthreads();
      scan[threadIdx.x] += add;
      __syncthreads();
    }
    const float total = scan[THREADS - 1];
    const float target = philox_uniform(p.seed, (unsigned int)p.step, (unsigned int)b) * total;
    const float before = scan[threadIdx.x] - local;
    if (threadIdx.x == 0) { s_idx = -1; s_last = -1; }
    __syncthreads();
    if (local > 0.f) {
      int pick = -1, last = -1;
      float acc = before;
      const bool mine = before <= target && target < scan[threadIdx.x];
      for (int i = lo; i < hi; ++i) {
        float x = processed(row, seen_row, stop_ids, p, i) * inv_t;
        if (order_key(x) >= lower && x > -P2O_INF) {
          last = i;
          acc += __expf(x - m);
          if (mine && pick < 0 && acc > target) pick = i;
        }
      }
      if (mine) atomicMax(&s_idx, pick >= 0 ? pick : last);
      atomicMax(&s_last, last);          // rounding past the end of the mass: the last kept token
    }
    __syncthreads();
    token = s_idx >= 0 ? s_idx : s_last;
  }
  // 5. advance the loop state
  if (threadIdx.x == 0) {
    const bool was_done = finished != nullptr && finished[b];
    if (was_done) token = p.pad_id;
    next_ids[b] = token;
    if (tokens_out != nullptr) tokens_out[(long long)b * p.max_new + p.step] = token;
    if (seqlens != nullptr) seqlens[b] += 1;
    if (!was_done) {
      if (seen != nullptr) seen[(long long)b * p.vocab + token] = 1;
      if (finished != nullptr && !p.suppress_stop)
        for (int s = 0; s < p.n_stop; ++s)
          if (stop_ids[s] == token) finished[b] = 1;
    }
  }
}

#define SAMPLER_ARGS                                                                                       \
  const int* rows, unsigned char* seen, const int* stop_ids, long long* next_ids, int* tokens_out, int* seqlens,   \
      unsigned char* finished, int vocab, long long row_stride, float temperature, int top_k, float top_p,         \
      float penalty, int do_sample, int suppress_stop, int n_stop, int step, int max_new, int pad_id,              \
      unsigned long long seed

__device__ __forceinline__ Params make_params(int vocab, long long row_stride, float temperature, int top_k,
                                              float top_p, float penalty, int do_sample, int suppress_stop,
                                              int n_stop, int step, int max_new, int pad_id, unsigned long long seed) {
  Params p;
  p.vocab = vocab; p.row_stride = row_stride; p.temperature = temperature; p.top_k = top_k; p.top_p = top_p;
  p.penalty = penalty; p.do_sample = do_sample; p.suppress_stop = suppress_stop; p.n_stop = n_stop; p.step = step;
  p.max_new = max_new; p.pad_id = pad_id; p.seed = seed;
  return p;
}

#define MAKE_PARAMS make_params(vocab, row_stride, temperature, top_k, top_p, penalty, do_sample, suppress_stop, \
                                n_stop, step, max_new, pad_id, seed)

extern "C" __global__ void __launch_bounds__(THREADS) sample_rows_f32(const float* logits, SAMPLER_ARGS) {
  sample_row<float>(logits, rows, seen, stop_ids, MAKE_PARAMS, next_ids, tokens_out, seqlens, finished);
}

extern "C" __global__ void __launch_bounds__(THREADS) sample_rows_f16(const unsigned short* logits, SAMPLER_ARGS) {
  sample_row<unsigned short>(logits, rows, seen, stop_ids, MAKE_PARAMS, next_ids, tokens_out, seqlens, finished);
}
