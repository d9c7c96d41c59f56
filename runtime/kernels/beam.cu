// Beam-search top-k for the on-device decode loop: one thread block per prompt (its K beam rows).
//
// For beam row r of the group: x = logits after the repetition penalty, lse_r = logsumexp(x); the candidate (r, t)
// scores beam_scores[r] + x_t - lse_r (float32), -inf for a stop token while suppressed (after the
// log-softmax, as runtime.generation.beam_search and HF's logits processors do). The block
// returns the 2K best of the K * V candidates, best first, ties to the lower flat index r * V + t (the order of a
// stable sort), as out_scores [G, 2K] / out_index [G, 2K]; -inf candidates (a beam still at -inf, a suppressed
// stop token) are never chosen, and unfilled slots read (-inf, -1). Selection is exact: a radix select finds the
// 2K-th key, entries above it are taken, entries equal to it in index order (a block scan over contiguous chunks).
// NumPy twin: paddle2ort/runtime/kernels/reference.py `beam_topk`.

#include "common.cuh"

#define MAX_BEAMS 32

template <typename T>
__device__ void beam_group(const T* logits, const int* rows, const unsigned char* seen, const int* stop_ids,
                           const float* beam_scores, float* out_scores, int* out_index, int vocab,
                           long long row_stride, int beams, float penalty, int suppress_stop, int n_stop) {
  __shared__ float red_v[WARPS];
  __shared__ int red_i[WARPS];
  __shared__ float hist[256];
  __shared__ int scan[THREADS];
  __shared__ unsigned int s_prefix;
  __shared__ float s_above, s_val;
  __shared__ int s_idx, s_count;
  __shared__ const T* row_ptr[MAX_BEAMS];
  __shared__ const unsigned char* seen_ptr[MAX_BEAMS];
  __shared__ float score[MAX_BEAMS], lse[MAX_BEAMS];
  __shared__ float sel_score[2 * MAX_BEAMS];
  __shared__ int sel_index[2 * MAX_BEAMS];
  const int g = blockIdx.x, want = 2 * beams;
  if (threadIdx.x < beams) {
    const int row = g * beams + threadIdx.x;
    row_ptr[threadIdx.x] = logits + (long long)(rows != nullptr ? rows[row] : row) * row_stride;
    seen_ptr[threadIdx.x] = seen != nullptr ? seen + (long long)row * vocab : nullptr;
    score[threadIdx.x] = beam_scores[row];
  }
  if (threadIdx.x == 0) s_count = 0;
  __syncthreads();

  // 1. log-sum-exp of every live beam row (penalized logits; stop suppression comes after the log-softmax)
  for (int r = 0; r < beams; ++r) {
    if (score[r] == -P2O_INF) continue;                      // uniform across the block: no divergent barrier
    float m = -P2O_INF;
    for (int i = threadIdx.x; i < vocab; i += THREADS)
      m = fmaxf(m, process_logit(row_ptr[r], seen_ptr[r], stop_ids, penalty, 0, n_stop, i));
    block_argmax(m, 0, red_v, red_i, &s_val, &s_idx);
    m = s_val;
    float z = 0.f;
    for (int i = threadIdx.x; i < vocab; i += THREADS)
      z += __expf(process_logit(row_ptr[r], seen_ptr[r], stop_ids, penalty, 0, n_stop, i) - m);
    z = block_sum(z, red_v);
    if (threadIdx.x == 0) lse[r] = m + __logf(z);
    __syncthreads();
  }
  const int n = beams * vocab;
  auto value = [&](int j) {
    const int r = j / vocab, t = j - r * vocab;
    if (score[r] == -P2O_INF) return -P2O_INF;
    const float x = process_logit(row_ptr[r], seen_ptr[r], stop_ids, penalty, suppress_stop, n_stop, t);
    return (score[r] + x) - lse[r];
  };

  // 2. the 2K-th largest key, 3. everything above it
  const unsigned int tau = radix_select(n, value, 0.f, 0u, false, (float)want, hist, &s_prefix, &s_above);
  for (int j = threadIdx.x; j < n; j += THREADS) {
    const float x = value(j);
    if (x > -P2O_INF && order_key(x) > tau) {
      const int slot = atomicAdd(&s_count, 1);
      if (slot < want) { sel_score[slot] = x; sel_index[slot] = j; }
    }
  }
  __syncthreads();
  const int above = min(s_count, want);

  // 4. entries equal to the threshold, lowest flat index first: contiguous chunks + a block scan give the order
  const int chunk = (n + THREADS - 1) / THREADS;
  const int lo = threadIdx.x * chunk, hi = min(lo + chunk, n);
  int local = 0;
  for (int j = lo; j < hi; ++j) {
    const float x = value(j);
    local += (x > -P2O_INF && order_key(x) == tau);
  }
  int rank = block_inclusive_scan(local, scan) - local;
  for (int j = lo; j < hi && above + rank < want; ++j) {
    const float x = value(j);
    if (x > -P2O_INF && order_key(x) == tau) {
      sel_score[above + rank] = x;
      sel_index[above + rank] = j;
      ++rank;
    }
  }
  __syncthreads();

  // 5. order (score desc, index asc) and write; slots nobody filled read (-inf, -1)
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
      out_scores[(long long)g * want + a] = a < filled ? sel_score[a] : -P2O_INF;
      out_index[(long long)g * want + a] = a < filled ? sel_index[a] : -1;
    }
  }
}

#define BEAM_ARGS                                                                                              \
  const int *rows, const unsigned char *seen, const int *stop_ids, const float *beam_scores, float *out_scores, \
      int *out_index, int vocab, long long row_stride, int beams, float penalty, int suppress_stop, int n_stop

extern "C" __global__ void __launch_bounds__(THREADS) beam_topk_f32(const float* logits, BEAM_ARGS) {
  beam_group<float>(logits, rows, seen, stop_ids, beam_scores, out_scores, out_index, vocab, row_stride, beams,
                    penalty, suppress_stop, n_stop);
}

extern "C" __global__ void __launch_bounds__(THREADS) beam_topk_f16(const unsigned short* logits, BEAM_ARGS) {
  beam_group<unsigned short>(logits, rows, seen, stop_ids, beam_scores, out_scores, out_index, vocab, row_stride,
                             beams, penalty, suppress_stop, n_stop);
}
