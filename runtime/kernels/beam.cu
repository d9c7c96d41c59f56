// Beam-search top-k for the on-device decode loop: one thread block per beam row.
//
// Row r (beam k of prompt g): x = logits after the repetition penalty, lse = logsumexp(x) (one online pass); the
// candidate (k, t) scores (beam_scores[r] + x_t) - lse in float32, -inf for a stop token while suppressed (after
// the log-softmax, as runtime.generation.beam_search and HF's logits processors do). The block writes the row's
// 2K best candidates, best first, ties to the lower index, as out_scores / out_index [G*K, 2K] with the flat
// index k * V + t; a dead beam (score -inf) or a short row leaves (-inf, -1). Selection is exact: a radix select
// finds the 2K-th key, entries above it are taken, entries equal to it in index order (block scan over chunks).
// The prompt's 2K best overall are among its rows' 2K best: the host merges K lists of 2K (reference.merge_beams).
// NumPy twin: paddle2ort/runtime/kernels/reference.py `beam_topk`.

#include "common.cuh"

#define MAX_BEAMS 32

template <typename T>
__device__ void beam_row(const T* logits, const int* rows, const unsigned char* seen, const int* stop_ids,
                         const float* beam_scores, float* out_scores, int* out_index, int vocab,
                         long long row_stride, int beams, float penalty, int suppress_stop, int n_stop) {
  __shared__ float red_v[WARPS];
  __shared__ int red_i[WARPS];
  __shared__ float hist[WARPS * 256];             // radix_select: one histogram a warp
  __shared__ int scan[THREADS];
  __shared__ unsigned int s_prefix;
  __shared__ float s_above, s_val;
  __shared__ int s_idx, s_count;
  __shared__ float sel_score[2 * MAX_BEAMS];
  __shared__ int sel_index[2 * MAX_BEAMS];
  const int r = blockIdx.x, want = 2 * beams;
  const long long base = (long long)(r % beams) * vocab;             // flat index of token 0 within the prompt
  const float score = beam_scores[r];
  float* o_s = out_scores + (long long)r * want;
  int* o_i = out_index + (long long)r * want;
  if (score == -P2O_INF) {                                           // a dead beam expands to nothing
    for (int a = threadIdx.x; a < want; a += THREADS) { o_s[a] = -P2O_INF; o_i[a] = -1; }
    return;
  }
  const T* row = logits + (long long)(rows != nullptr ? rows[r] : r) * row_stride;
  const unsigned char* seen_row = seen != nullptr ? seen + (long long)r * vocab : nullptr;

  // 1. logsumexp of the penalized row: per-thread online (max, sum), then one block combine
  float m = -P2O_INF, z = 0.f;
  for (int i = threadIdx.x; i < vocab; i += THREADS) {
    const float x = process_logit(row, seen_row, stop_ids, penalty, 0, n_stop, i);
    if (x > m) { z = z * __expf(m - x) + 1.f; m = x; }
    else if (x > -P2O_INF) z += __expf(x - m);
  }
  block_argmax(m, 0, red_v, red_i, &s_val, &s_idx);
  const float row_max = s_val;
  z = block_sum(m > -P2O_INF ? z * __expf(m - row_max) : 0.f, red_v);
  const float lse = row_max + __logf(z);
  auto value = [&](int i) {
    const float x = process_logit(row, seen_row, stop_ids, penalty, suppress_stop, n_stop, i);
    return x > -P2O_INF ? (score + x) - lse : -P2O_INF;
  };

  // 2. the 2K-th largest key, 3. everything above it
  if (threadIdx.x == 0) s_count = 0;
  const unsigned int tau = radix_select(vocab, value, 0.f, 0u, false, (float)want, hist, &s_prefix, &s_above);
  for (int i = threadIdx.x; i < vocab; i += THREADS) {
    const float x = value(i);
    if (x > -P2O_INF && order_key(x) > tau) {
      const int slot = atomicAdd(&s_count, 1);
      if (slot < want) { sel_score[slot] = x; sel_index[slot] = i; }
    }
  }
  __syncthreads();
  const int above = min(s_count, want);

  // 4. entries equal to the threshold, lowest index first: contiguous chunks + a block scan give the order
  const int chunk = (vocab + THREADS - 1) / THREADS;
  const int lo = threadIdx.x * chunk, hi = min(lo + chunk, vocab);
  int local = 0;
  for (int i = lo; i < hi; ++i) {
    const float x = value(i);
    local += (x > -P2O_INF && order_key(x) == tau);
  }
  int rank = block_inclusive_scan(local, scan) - local;
  for (int i = lo; i < hi && above + rank < want; ++i) {
    const float x = value(i);
    if (x > -P2O_INF && order_key(x) == tau) {
      sel_score[above + rank] = x;
      sel_index[above + rank] = i;
      ++rank;
    }
  }
  __syncthreads();

  // 5. order (score desc, index asc) and write
  if (threadIdx.x == 0) {
    const int filled = min(above + scan[THREADS - 1], want);
    for (int a = 1; a < filled; ++a) {
      const float s = sel_score[a];
      const int i = sel_index[a];
      int b = a - 1;
      while (b >= 0 && (sel_score[b] < s || (sel_score[b] == s && sel_index[b] > i))) {
        sel_score[b + 1] = sel_score[b];
        sel_index[b + 1] = sel_index[b];
        --b;
      }
      sel_score[b + 1] = s;
      sel_index[b + 1] = i;
    }
    for (int a = 0; a < want; ++a) {
      o_s[a] = a < filled ? sel_score[a] : -P2O_INF;
      o_i[a] = a < filled ? (int)(base + sel_index[a]) : -1;
    }
  }
}

#define BEAM_ARGS                                                                                              \
  const int *rows, const unsigned char *seen, const int *stop_ids, const float *beam_scores, float *out_scores, \
      int *out_index, int vocab, long long row_stride, int beams, float penalty, int suppress_stop, int n_stop

extern "C" __global__ void __launch_bounds__(THREADS) beam_topk_f32(const float* logits, BEAM_ARGS) {
  beam_row<float>(logits, rows, seen, stop_ids, beam_scores, out_scores, out_index, vocab, row_stride, beams,
                  penalty, suppress_stop, n_stop);
}

extern "C" __global__ void __launch_bounds__(THREADS) beam_topk_f16(const unsigned short* logits, BEAM_ARGS) {
  beam_row<unsigned short>(logits, rows, seen, stop_ids, beam_scores, out_scores, out_index, vocab, row_stride,
                           beams, penalty, suppress_stop, n_stop);
}
