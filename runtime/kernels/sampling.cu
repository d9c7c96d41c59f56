// Fused logits processor + sampler for the on-device decode loop: one thread block per batch row.
//
// Reads the row's logits in place (fp16 or fp32, any row of a [B*S, V] buffer), applies the CTRL repetition
// penalty (seen bitmap), suppresses stop tokens before min_new_tokens, then either takes the argmax (greedy; ties
// -> lowest id, as numpy.argmax) or samples: temperature, top-k (exact radix select, ties at the boundary kept),
// top-p (exact radix select on probability mass), inverse-CDF draw in vocabulary order with a counter-based
// Philox4x32-10 uniform (seed, step, row). Thread 0 then advances the loop state: the chosen id goes straight into
// the next step's bound input_ids, the token history, seqlens_k += 1, the finished flag and the seen bitmap.
// NumPy twin: paddle2ort/runtime/kernels/reference.py (same algorithm, same uniforms).
// No system headers: NVRTC compiles it as is (fp16 is read as raw bits and converted with one PTX instruction).

#include "common.cuh"

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
  return process_logit(row, seen_row, stop_ids, p.penalty, p.suppress_stop, p.n_stop, i);
}

template <typename T>
__device__ void sample_row(const T* logits, const int* rows, unsigned char* seen, const int* stop_ids, Params p,
                           long long* next_ids, int* tokens_out, int* seqlens, unsigned char* finished) {
  __shared__ float red_v[WARPS];
  __shared__ int red_i[WARPS];
  __shared__ float hist[WARPS * 256];             // radix_select: one histogram a warp
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
  const bool plain = (seen_row == nullptr || p.penalty == 1.0f) && !p.suppress_stop;
  if (plain && (reinterpret_cast<unsigned long long>(row) & 15ull) == 0) {
    // raw logits, 16-byte aligned row: 16-byte loads (8 fp16 / 4 fp32 a load) keep enough bytes in flight for
    // one block to stream a 152k-entry row; the tail past the last full vector is read one by one
    const int per = 16 / (int)sizeof(T), nvec = p.vocab / per;
    for (int j = threadIdx.x; j < nvec; j += THREADS) {
      T v[16 / sizeof(T)];
      *reinterpret_cast<uint4*>(v) = reinterpret_cast<const uint4*>(row)[j];
      for (int e = 0; e < per; ++e) {
        float x = load(v, e) * inv_t;
        const int i = j * per + e;
        if (x > best || (x == best && i < best_i)) { best = x; best_i = i; }
      }
    }
    for (int i = nvec * per + threadIdx.x; i < p.vocab; i += THREADS) {
      float x = load(row, i) * inv_t;
      if (x > best || (x == best && i < best_i)) { best = x; best_i = i; }
    }
  } else {
    for (int i = threadIdx.x; i < p.vocab; i += THREADS) {
      float x = processed(row, seen_row, stop_ids, p, i) * inv_t;
      if (x > best || (x == best && i < best_i)) { best = x; best_i = i; }
    }
  }
  block_argmax(best, best_i, red_v, red_i, &s_val, &s_idx);
  int token = s_idx;
  if (p.do_sample) {
    const float m = s_val;
    auto value = [&](int i) { return processed(row, seen_row, stop_ids, p, i) * inv_t; };
    // 2. top-k threshold (count), 3. top-p threshold (mass among the top-k), 4. inverse-CDF draw
    unsigned int lower = 0;
    if (p.top_k > 0 && p.top_k < p.vocab)
      lower = radix_select(p.vocab, value, m, 0u, false, (float)p.top_k, hist, &s_prefix, &s_above);
    if (p.top_p < 1.0f) {
      float z = 0.f;
      for (int i = threadIdx.x; i < p.vocab; i += THREADS) {
        float x = processed(row, seen_row, stop_ids, p, i) * inv_t;
        if (order_key(x) >= lower && x > -P2O_INF) z += __expf(x - m);
      }
      z = block_sum(z, red_v);
      lower = radix_select(p.vocab, value, m, lower, true, p.top_p * z, hist, &s_prefix, &s_above);
    }
    // contiguous chunk per thread so a block scan gives prefix sums in vocabulary order
    const int chunk = (p.vocab + THREADS - 1) / THREADS;
    const int lo = threadIdx.x * chunk, hi = min(lo + chunk, p.vocab);
    float local = 0.f;
    for (int i = lo; i < hi; ++i) {
      float x = processed(row, seen_row, stop_ids, p, i) * inv_t;
      if (order_key(x) >= lower && x > -P2O_INF) local += __expf(x - m);
    }
    block_inclusive_scan(local, scan);
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
