// The decoder step of LLaMA-family models (RMSNorm, rotary, GQA, SwiGLU) in five kernels a layer, for
// runtime/kernels/engine.py. Compiled per model geometry with NVRTC: HD (head size), GQA (query heads per K/V
// head), CHUNK (positions per flash-decoding split) come in as -D options, so every loop over them unrolls.
// NumPy twins: kernels/engine_reference.py (same arguments, same arithmetic order where it matters).
//
// Activations (residual stream, attention output, SwiGLU output) are float32 [B, *]; weights are row-major per
// output ([N, K]: one output's K inputs contiguous) in one of four formats:
//   F16 (float16), F32 (float32: the LM head of a float32-head bundle),
//   Q8 / Q4 (MatMulNBits layout: uint8 [N, K/block, block*bits/8], 4-bit element 2j in the low nibble of byte j;
//            per block a float16 pair {scale, zero point}: w = (q - zp) * scale, integer or float zero points).
// A warp computes two output rows over the whole K (16-byte loads per lane, UNROLL chunks in flight) for up to
// BT batch rows (grid.y tiles the batch). No system headers, so NVRTC compiles it as is.
#ifndef HD
#define HD 64
#endif
#ifndef GQA
#define GQA 1
#endif
#ifndef CHUNK
#define CHUNK 256
#endif
#ifndef FMTS
#define FMTS 15           // bit f: the GEMVs of format f (F16 .. Q4 below); the engine compiles one format a module
#endif
#ifndef WITH_ATTN
#define WITH_ATTN 1       // embed_rows and attn_split (the module that depends on GQA and CHUNK)
#endif
#ifndef PIPE
#define PIPE 0            // 1: the engine's pipeline=True (see PDL_WAIT below and prefetch_all)
#endif
#ifndef PF_BYTES
#define PF_BYTES (24 << 20)   // PIPE: a product up to this many weight bytes is prefetched whole (two fit in L2)
#endif
#ifndef COHERENT
#define COHERENT 0        // 1: the persistent step kernel (WITH_STEP), which reads activations it wrote itself
#endif
#ifndef WITH_STEP
#define WITH_STEP 0
#endif
#define BT 8              // batch rows a GEMV block computes (weights are read once per BT rows)
#define GW 4              // warps per GEMV block
#define UNROLL 4          // 16-byte chunks of each row a lane loads before using any
#define ATT_THREADS 128
#define NEG_INF __int_as_float(0xff800000)

// Programmatic dependent launch (engine pdl=True, sm_90+: kernels/pdl.py). Every kernel calls PDL_WAIT before its
// first read of anything an earlier kernel writes and before any write of its own (it returns once the previous
// kernel has completed and its memory is visible; only static data, the weights, is touched before), and PDL_LAUNCH
// once its main loads are issued (the next kernel of the step may then be scheduled, prefetch its weights and wait).
// Without the launch attribute, or below sm_90, both are no-ops.
// PIPE (engine pipeline=True): PDL_WAIT also lets the next kernel launch at once, so it is scheduled while this one
// computes and prefetches all of its weights (gemv2/gemv3 prefetch_all, up to PF_BYTES a product): the weights of
// kernel n+1 stream from memory into L2 while kernel n runs on its own, prefetched the same way. One kernel ahead,
// never more: the trigger comes after this kernel's wait, i.e. once the kernel before it has completed.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#if PIPE
#define PDL_WAIT() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#endif
#define PREFETCH_L2(p) asm volatile("prefetch.global.L2 [%0];" ::"l"(p))
#else
#define PDL_LAUNCH()
#define PDL_WAIT()
#define PREFETCH_L2(p)
#endif

#define F16 0
#define F32 1
#define Q8 2
#define Q4 3

#define M_RESID 0         // out[b, r] += y            (o-proj, down-proj: the residual add)
#define M_LOGITS 1        // out[b, r] = y             (LM head)
#define M_SWIGLU 2        // out[b, j] = silu(y_gate[j]) * y_up[j]: rows j and I + j of the packed gate|up weight
#define M_QKV 3           // packed q|k|v (+ bias): q rotated -> out, k rotated / v -> the cache at seqlens[b]

__device__ __forceinline__ float h2f(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short f2h(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

template <int FMT> struct Fmt;
template <> struct Fmt<F16> { static constexpr int EPL = 8; };
template <> struct Fmt<F32> { static constexpr int EPL = 4; };
template <> struct Fmt<Q8> { static constexpr int EPL = 16; };
template <> struct Fmt<Q4> { static constexpr int EPL = 32; };

// the 16 bytes holding elements k .. k + EPL - 1 of row r
template <int FMT>
__device__ __forceinline__ const unsigned char* raw_ptr(const unsigned char* w, long long r, int k, int row_bytes) {
  return w + r * row_bytes + (FMT == F16 ? 2LL * k : FMT == F32 ? 4LL * k : FMT == Q8 ? (long long)k : k / 2);
}
template <int FMT>
__device__ __forceinline__ uint4 load_raw(const unsigned char* w, long long r, int k, int row_bytes) {
  return __ldg(reinterpret_cast<const uint4*>(raw_ptr<FMT>(w, r, k, row_bytes)));
}

// element e of a raw 16-byte chunk, dequantized with the chunk's block {scale, zero point}
template <int FMT>
__device__ __forceinline__ float elem(const uint4& raw, int e, float scale, float zp) {
  const unsigned int* u = reinterpret_cast<const unsigned int*>(&raw);
  if (FMT == F16) return h2f((unsigned short)(u[e >> 1] >> ((e & 1) * 16)));
  if (FMT == F32) return __uint_as_float(u[e]);
  if (FMT == Q8) return ((float)((u[e >> 2] >> ((e & 3) * 8)) & 0xffu) - zp) * scale;
  return ((float)((u[e >> 3] >> ((e & 7) * 4)) & 0xfu) - zp) * scale;
}

__device__ __forceinline__ void block_pair(const unsigned int* sz, long long r, int k, int kb, int qblock,
                                           float* scale, float* zp) {
  unsigned int p = __ldg(sz + r * kb + k / qblock);
  *scale = h2f((unsigned short)(p & 0xffffu));
  *zp = h2f((unsigned short)(p >> 16));
}

// PIPE: whether a GEMV prefetches all of its weights before its wait (not the LM head, whose rows fill the GPU and
// whose weights would not fit L2 beside the layer's), else the first steps'
__device__ __forceinline__ bool prefetch_all(int mode, long long bytes) {
  return PIPE && mode != M_LOGITS && bytes <= PF_BYTES;
}

// Activations and the K/V cache: in the persistent step kernel (COHERENT) the step itself writes them between its
// phases, so they are read from L2 (ld.global.cg), never through the non-coherent read-only path or a stale L1
// line; the kernel-a-phase step keeps its loads as they were.
__device__ __forceinline__ float4 ld_act4(const float* p) {
#if COHERENT
  return __ldcg(reinterpret_cast<const float4*>(p));
#else
  return __ldg(reinterpret_cast<const float4*>(p));
#endif
}
__device__ __forceinline__ float4 ld_q4(const float* p) {
#if COHERENT
  return __ldcg(reinterpret_cast<const float4*>(p));
#else
  return *reinterpret_cast<const float4*>(p);
#endif
}
__device__ __forceinline__ uint4 ld_kv(const uint4* p) {
#if COHERENT
  return __ldcg(p);
#else
  return __ldg(p);
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The epilogue of every GEMV (v1 and v2): row results y[R] of batch row bb into `out` (MODE: residual add, logits,
// SwiGLU of gate/up pairs, or q|k|v with bias + rotary, k/v into the float16 cache at the row's position).
template <int MODE, int R>
__device__ __forceinline__ void store_rows(float* y, const long long* rows, int bb, float* out, int ldo, int inter,
                                           const unsigned short* __restrict__ bias, unsigned short* kc,
                                           unsigned short* vc, const float* __restrict__ cos_t,
                                           const float* __restrict__ sin_t, const int* __restrict__ seqlens, int nh,
                                           int kvh, int cap) {
  constexpr int P = R / 2;
  if (MODE == M_RESID) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      float* o = out + (long long)bb * ldo + rows[j];
      if (COHERENT) *o = __ldcg(o) + y[j];
      else *o += y[j];
    }
  } else if (MODE == M_LOGITS) {
#pragma unroll
    for (int j = 0; j < R; ++j) out[(long long)bb * ldo + rows[j]] = y[j];
  } else if (MODE == M_SWIGLU) {
#pragma unroll
    for (int j = 0; j < P; ++j) out[(long long)bb * inter + rows[j]] = y[j] / (1.f + __expf(-y[j])) * y[P + j];
  } else {
    const int pos = seqlens[bb];
#pragma unroll
    for (int j = 0; j < P; ++j) {
      float y0 = y[j], y1 = y[P + j];
      if (bias != nullptr) { y0 += h2f(bias[rows[j]]); y1 += h2f(bias[rows[P + j]]); }
      const int head = (int)(rows[j] / HD), d = (int)(rows[j] % HD);
      if (head < nh + kvh) {
        const float c = cos_t[(long long)pos * (HD / 2) + d], s = sin_t[(long long)pos * (HD / 2) + d];
        const float a = y0 * c - y1 * s, e = y1 * c + y0 * s;
        y0 = a; y1 = e;
      }
      if (head < nh) {
        float* q = out + (long long)bb * nh * HD + head * HD;
        q[d] = y0; q[d + HD / 2] = y1;
      } else {
        const int kh = head < nh + kvh ? head - nh : head - nh - kvh;
        unsigned short* cache = (head < nh + kvh ? kc : vc) + (((long long)bb * kvh + kh) * cap + pos) * HD;
        cache[d] = f2h(y0); cache[d + HD / 2] = f2h(y1);
      }
    }
  }
}

// The R weight rows warp task t owns (v1 and v2): SwiGLU P gate rows and their up rows; QKV P rotary pairs
// (d, d + HD/2) of one head; the other modes R consecutive rows.
template <int MODE, int R>
__device__ __forceinline__ void task_rows(int t, int inter, long long* rows) {
  constexpr int P = R / 2;
#pragma unroll
  for (int j = 0; j < P; ++j) {
    if (MODE == M_SWIGLU) { rows[j] = (long long)P * t + j; rows[P + j] = (long long)inter + P * t + j; }
    else if (MODE == M_QKV) {
      rows[j] = (long long)(t / (HD / 2 / P)) * HD + (t % (HD / 2 / P)) * P + j;
      rows[P + j] = rows[j] + HD / 2;
    } else { rows[j] = (long long)R * t + j; rows[P + j] = (long long)R * t + P + j; }
  }
}

// The one argument list of every GEMV (v1, v2, v3; engine.py launch_gemv passes it): the device functions' (with
// __restrict__), the entries', and the call from an entry to its device function.
#define GEMV_PARAMS                                                                                                 \
  const unsigned char* __restrict__ w, const unsigned int* __restrict__ sz, int kb, int qblock, int row_bytes,     \
      const float* __restrict__ x, const unsigned short* __restrict__ gamma, float eps, int K, int tasks, int B,   \
      float* out, int ldo, int inter, const unsigned short* __restrict__ bias, unsigned short* kc,                  \
      unsigned short* vc, const float* __restrict__ cos_t, const float* __restrict__ sin_t,                         \
      const int* __restrict__ seqlens, int nh, int kvh, int cap
#define GEMV_ENTRY_PARAMS                                                                                           \
  const unsigned char* w, const unsigned int* sz, int kb, int qblock, int row_bytes, const float* x,                \
      const unsigned short* gamma, float eps, int K, int tasks, int B, float* out, int ldo, int inter,              \
      const unsigned short* bias, unsigned short* kc, unsigned short* vc, const float* cos_t, const float* sin_t,   \
      const int* seqlens, int nh, int kvh, int cap
#define GEMV_ARGS \
  w, sz, kb, qblock, row_bytes, x, gamma, eps, K, tasks, B, out, ldo, inter, bias, kc, vc, cos_t, sin_t, seqlens, nh, \
      kvh, cap

// One GEMV over the packed weight W [N, K] for batch rows [blockIdx.y * BT, ...): y[b, r] = sum_k x'[b, k] W[r, k]
// where x' = x (gamma == nullptr) or RMSNorm(x) * gamma (the norm's 1/rms applied to the dot product).
// Warp task t (0 .. tasks-1) owns R rows (R/2 gate|up or rotary pairs), chosen by MODE (see the M_* defines).
// Extra per-mode arguments:
//   M_QKV:    bias (float16 [N] or null), q_out [B, NH*HD], kc / vc this layer's cache [B, KVH, C, HD],
//             cos / sin float32 [max_pos, HD/2], seqlens [B] (the new token's position), nh, kvh, cap
//   M_SWIGLU: inter (I)
//   others:   ldo (out's row stride)
template <int FMT, int MODE, int R>
__device__ void gemv(GEMV_PARAMS) {
  constexpr int EPL = Fmt<FMT>::EPL;
  constexpr int STEP = 32 * EPL;
  constexpr int U = UNROLL * 2 / R;             // chunks a row in flight: 2 rows x 4 or 4 rows x 2
  constexpr int P = R / 2;                       // SwiGLU: gate/up pairs; QKV: rotary pairs (d, d + HD/2)
  __shared__ float rstd[BT];
  PDL_WAIT();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int b0 = blockIdx.y * BT;
  const int nb = min(BT, B - b0);
  if (gamma != nullptr) {                      // RMSNorm statistics of this block's batch rows
    for (int b = warp; b < nb; b += GW) {
      const float* xb = x + (long long)(b0 + b) * K;
      float s = 0.f;
      for (int k = lane; k < K; k += 32) s += xb[k] * xb[k];
      s = warp_sum(s);
      if (lane == 0) rstd[b] = rsqrtf(s / K + eps);
    }
    __syncthreads();
  }
  const int t = blockIdx.x * GW + warp;
  if (t >= tasks) return;
  long long rows[R];
  task_rows<MODE, R>(t, inter, rows);
  float acc[R][BT];
#pragma unroll
  for (int j = 0; j < R; ++j)
#pragma unroll
    for (int b = 0; b < BT; ++b) acc[j][b] = 0.f;
  for (int kbase = 0; kbase < K; kbase += U * STEP) {
    uint4 raw[R][U];                             // every row's U chunks in flight before any math
    float sc[R][U], zp[R][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = kbase + u * STEP + lane * EPL;
#pragma unroll
      for (int j = 0; j < R; ++j) {
        raw[j][u] = make_uint4(0, 0, 0, 0);
        sc[j][u] = 1.f;
        zp[j][u] = 0.f;
        if (k < K) {
          raw[j][u] = load_raw<FMT>(w, rows[j], k, row_bytes);
          if (FMT == Q8 || FMT == Q4) block_pair(sz, rows[j], k, kb, qblock, &sc[j][u], &zp[j][u]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = kbase + u * STEP + lane * EPL;
      if (k >= K) continue;
#pragma unroll
      for (int c = 0; c < EPL; c += 4) {
        float wv[R][4], g[4] = {1.f, 1.f, 1.f, 1.f};
        if (gamma != nullptr) {
          const uint2 gr = __ldg(reinterpret_cast<const uint2*>(gamma + k + c));
          g[0] = h2f((unsigned short)(gr.x & 0xffffu)); g[1] = h2f((unsigned short)(gr.x >> 16));
          g[2] = h2f((unsigned short)(gr.y & 0xffffu)); g[3] = h2f((unsigned short)(gr.y >> 16));
        }
#pragma unroll
        for (int j = 0; j < R; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) wv[j][e] = elem<FMT>(raw[j][u], c + e, sc[j][u], zp[j][u]);
#pragma unroll
        for (int b = 0; b < BT; ++b) {
          if (b < nb) {
            const float4 xv = __ldg(reinterpret_cast<const float4*>(x + (long long)(b0 + b) * K + k + c));
            const float xs[4] = {xv.x * g[0], xv.y * g[1], xv.z * g[2], xv.w * g[3]};
#pragma unroll
            for (int j = 0; j < R; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[j][b] += wv[j][e] * xs[e];
          }
        }
      }
    }
  }
  PDL_LAUNCH();                                  // the weights are read: the next kernel may start
#pragma unroll
  for (int b = 0; b < BT; ++b) {
    if (b >= nb) break;
    float y[R];
#pragma unroll
    for (int j = 0; j < R; ++j) y[j] = warp_sum(acc[j][b]);
    if (lane != 0) continue;
    const int bb = b0 + b;
    if (gamma != nullptr)
#pragma unroll
      for (int j = 0; j < R; ++j) y[j] *= rstd[b];
    store_rows<MODE, R>(y, rows, bb, out, ldo, inter, bias, kc, vc, cos_t, sin_t, seqlens, nh, kvh, cap);
  }
}

#define GEMV_ENTRY(NAME, FMT, MODE, R)                                                                           \
  extern "C" __global__ void __launch_bounds__(GW * 32) NAME(GEMV_ENTRY_PARAMS) { \
    gemv<FMT, MODE, R>(GEMV_ARGS);                                               \
  }
// two rows a warp (gemv_*) for small batches, four (gemv_*_r4: x read once for 4 rows) for larger ones
#define GEMV_ALL(FMTNAME, FMT)                              \
  GEMV_ENTRY(gemv_resid_##FMTNAME, FMT, M_RESID, 2)         \
  GEMV_ENTRY(gemv_logits_##FMTNAME, FMT, M_LOGITS, 2)       \
  GEMV_ENTRY(gemv_swiglu_##FMTNAME, FMT, M_SWIGLU, 2)       \
  GEMV_ENTRY(gemv_qkv_##FMTNAME, FMT, M_QKV, 2)             \
  GEMV_ENTRY(gemv_resid_##FMTNAME##_r4, FMT, M_RESID, 4)    \
  GEMV_ENTRY(gemv_logits_##FMTNAME##_r4, FMT, M_LOGITS, 4)  \
  GEMV_ENTRY(gemv_swiglu_##FMTNAME##_r4, FMT, M_SWIGLU, 4)  \
  GEMV_ENTRY(gemv_qkv_##FMTNAME##_r4, FMT, M_QKV, 4)
// ---------------------------------------------------------------------------------------------------------------
// GEMV v2 (the engine's default; gemv above stays as the fallback, engine gemv="v1"). Same arguments, same twins.
//  - KS warps of a block split K of the same rows (deterministic: a fixed-order sum through shared memory), so the
//    small-N products (o-proj, down-proj) of batch 1 run 4x the warps instead of a few blocks an SM;
//  - the RMSNorm statistics come out of the main loop (each lane squares the x it loads anyway): no prologue pass
//    over x and no barrier before the first weight load;
//  - int8/int4: q_e as a float by the 2^23 trick (no I2F); at batch 1 the block's {scale, zero point} factored
//    out of the 16-byte chunk (a chunk lies in one block): sum_e (q_e - zp) s x_e = s (sum_e q_e x_e - zp sum_e x_e);
//  - NB batch rows a block (1: batch 1 keeps its registers for loads in flight; 8: weights read once per 8 rows).
template <int FMT>
__device__ __forceinline__ float qcode(const uint4& raw, int e) {
  const unsigned int* u = reinterpret_cast<const unsigned int*>(&raw);
  const unsigned int v = FMT == Q8 ? (u[e >> 2] >> ((e & 3) * 8)) & 0xffu : (u[e >> 3] >> ((e & 7) * 4)) & 0xfu;
  return __uint_as_float(v | 0x4b000000u) - 8388608.f;
}

// grid (ceil(tasks / (GW / KS)), ceil(B / NB)), block GW warps; warp w works on task blockIdx.x * GW/KS + w/KS and
// on the chunks w%KS, w%KS + KS, ... of K (a chunk: 32 lanes x 16 bytes)
template <int FMT, int MODE, int R, int KS, int NB>
__device__ void gemv2(GEMV_PARAMS) {
  constexpr int EPL = Fmt<FMT>::EPL;
  constexpr int STEP = 32 * EPL;
  constexpr int U = UNROLL * 2 / R;
  constexpr int P = R / 2;
  constexpr bool QUANT = FMT == Q8 || FMT == Q4;
  constexpr bool FACTOR = QUANT && NB == 1;      // NB 8: dequantize each element once for 8 rows (fewer registers)
  __shared__ float red[KS > 1 ? GW : 1][R + 1][NB];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ks = warp % KS;
  const int t = blockIdx.x * (GW / KS) + warp / KS;
  const bool live = t < tasks;
  const int b0 = blockIdx.y * NB;
  const int nb = min(NB, B - b0);
  const bool norm = gamma != nullptr;
  const int nchunks = (K + STEP - 1) / STEP;
  long long rows[R];
  task_rows<MODE, R>(t, inter, rows);
  if (live) {                                    // the first chunks' weights into L2 while the previous kernel ends
    const int lim = prefetch_all(MODE, (long long)tasks * R * row_bytes) ? nchunks : min(nchunks, ks + U * KS);
    for (int ci = ks; ci < lim; ci += KS) {      // (PIPE: all of them, while the previous kernel runs)
      const int k = ci * STEP + lane * EPL;
      if (k < K)
#pragma unroll
        for (int j = 0; j < R; ++j)
          PREFETCH_L2(raw_ptr<FMT>(w, rows[j], k, row_bytes));
    }
  }
  PDL_WAIT();
  float acc[R][NB], ss[NB];
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    ss[b] = 0.f;
#pragma unroll
    for (int j = 0; j < R; ++j) acc[j][b] = 0.f;
  }
  if (live) {
    for (int c0 = ks; c0 < nchunks; c0 += KS * U) {
      uint4 raw[R][U];
      float sc[R][U], zp[R][U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int ci = c0 + u * KS;
        const int k = ci * STEP + lane * EPL;
#pragma unroll
        for (int j = 0; j < R; ++j) {
          raw[j][u] = make_uint4(0, 0, 0, 0);
          sc[j][u] = 1.f;
          zp[j][u] = 0.f;
          if (ci < nchunks && k < K) {
            raw[j][u] = load_raw<FMT>(w, rows[j], k, row_bytes);
            if (QUANT) block_pair(sz, rows[j], k, kb, qblock, &sc[j][u], &zp[j][u]);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int ci = c0 + u * KS;
        const int k = ci * STEP + lane * EPL;
        if (ci >= nchunks || k >= K) continue;
        float dq[R][NB], sx[NB];                     // FACTOR: this chunk's sum q x per row, sum x
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          sx[b] = 0.f;
#pragma unroll
          for (int j = 0; j < R; ++j) dq[j][b] = 0.f;
        }
#pragma unroll
        for (int c = 0; c < EPL; c += 4) {
          float wv[R][4], g[4] = {1.f, 1.f, 1.f, 1.f};
          if (norm) {
            const uint2 gr = __ldg(reinterpret_cast<const uint2*>(gamma + k + c));
            g[0] = h2f((unsigned short)(gr.x & 0xffffu)); g[1] = h2f((unsigned short)(gr.x >> 16));
            g[2] = h2f((unsigned short)(gr.y & 0xffffu)); g[3] = h2f((unsigned short)(gr.y >> 16));
          }
#pragma unroll
          for (int j = 0; j < R; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              wv[j][e] = FACTOR ? qcode<FMT>(raw[j][u], c + e)
                       : QUANT ? (qcode<FMT>(raw[j][u], c + e) - zp[j][u]) * sc[j][u]
                               : elem<FMT>(raw[j][u], c + e, 1.f, 0.f);
#pragma unroll
          for (int b = 0; b < NB; ++b) {
            if (b < nb) {
              const float4 xv = __ldg(reinterpret_cast<const float4*>(x + (long long)(b0 + b) * K + k + c));
              if (norm) ss[b] += xv.x * xv.x + xv.y * xv.y + xv.z * xv.z + xv.w * xv.w;
              const float xs[4] = {xv.x * g[0], xv.y * g[1], xv.z * g[2], xv.w * g[3]};
              if (FACTOR) sx[b] += (xs[0] + xs[1]) + (xs[2] + xs[3]);
#pragma unroll
              for (int j = 0; j < R; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                  if (FACTOR) dq[j][b] += wv[j][e] * xs[e];
                  else acc[j][b] += wv[j][e] * xs[e];
                }
            }
          }
        }
        if (FACTOR) {
#pragma unroll
          for (int j = 0; j < R; ++j)
#pragma unroll
            for (int b = 0; b < NB; ++b) acc[j][b] += sc[j][u] * (dq[j][b] - zp[j][u] * sx[b]);
        }
      }
    }
  }
  PDL_LAUNCH();                                  // the weights are read: the next kernel may start
  // sums over the lanes, then over the KS warps of the task (fixed order)
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    if (norm) ss[b] = warp_sum(ss[b]);
#pragma unroll
    for (int j = 0; j < R; ++j) acc[j][b] = warp_sum(acc[j][b]);
  }
  if (KS > 1) {
    if (lane == 0) {
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        red[warp][R][b] = ss[b];
#pragma unroll
        for (int j = 0; j < R; ++j) red[warp][j][b] = acc[j][b];
      }
    }
    __syncthreads();
    if (ks != 0) return;
#pragma unroll
    for (int o = 1; o < KS; ++o)
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        ss[b] += red[warp + o][R][b];
#pragma unroll
        for (int j = 0; j < R; ++j) acc[j][b] += red[warp + o][j][b];
      }
  }
  if (!live || lane != 0) return;
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    if (b >= nb) break;
    const float r = norm ? rsqrtf(ss[b] / K + eps) : 1.f;
    float y[R];
#pragma unroll
    for (int j = 0; j < R; ++j) y[j] = acc[j][b] * r;
    store_rows<MODE, R>(y, rows, b0 + b, out, ldo, inter, bias, kc, vc, cos_t, sin_t, seqlens, nh, kvh, cap);
  }
}

#define GEMV2_ENTRY(FMTNAME, FMT, MODENAME, MODE, R, KS, NB)                                                     \
  extern "C" __global__ void __launch_bounds__(GW * 32)                             \
      gemv2_##MODENAME##_##FMTNAME##_r##R##_k##KS##_b##NB(GEMV_ENTRY_PARAMS) {       \
    gemv2<FMT, MODE, R, KS, NB>(GEMV_ARGS);                                          \
  }
// the (rows a warp, K-split warps, batch rows a block) the engine picks from (engine.py gemv_plan)
#define GEMV2_MODE(FMTNAME, FMT, MODENAME, MODE)         \
  GEMV2_ENTRY(FMTNAME, FMT, MODENAME, MODE, 2, 1, 1)     \
  GEMV2_ENTRY(FMTNAME, FMT, MODENAME, MODE, 2, 4, 1)     \
  GEMV2_ENTRY(FMTNAME, FMT, MODENAME, MODE, 4, 1, 1)     \
  GEMV2_ENTRY(FMTNAME, FMT, MODENAME, MODE, 4, 4, 1)     \
  GEMV2_ENTRY(FMTNAME, FMT, MODENAME, MODE, 4, 1, 8)     \
  GEMV2_ENTRY(FMTNAME, FMT, MODENAME, MODE, 4, 4, 8)
#define GEMV2_ALL(FMTNAME, FMT)                   \
  GEMV2_MODE(FMTNAME, FMT, resid, M_RESID)        \
  GEMV2_MODE(FMTNAME, FMT, logits, M_LOGITS)      \
  GEMV2_MODE(FMTNAME, FMT, swiglu, M_SWIGLU)      \
  GEMV2_MODE(FMTNAME, FMT, qkv, M_QKV)

// ------------------------------------------------------------------------------------------------------------
// v3: tensor-core GEMV (W16A16, W8A16, W4A16; float32 accumulation), mma.sync m16n8k16, sm_80+. A warp task is 16
// weight rows (rows g and g + 8 of lane group g = lane / 4 form a pair: gate|up, a rotary pair, or rows 16t + g and
// 16t + 8 + g) times 8 batch rows (grid.y tiles the batch; at batch 1 seven columns are zero, the cost is the weight
// read either way). Lane (g, q = lane % 4) loads 16 bytes of rows g and g + 8 at k = step * 4 EPL + q EPL and the
// same EPL activations of batch row g: a permutation of k inside the mma fragments (the dot product does not care)
// that gives every lane 16 contiguous bytes a row. The activations enter as float16: xh = half(x * gamma * A16)
// (A16 = 2^-6 keeps x * gamma, before the norm's 1/rms, inside float16's range; y is scaled back), int8/int4
// weights dequantized to float16 as float32 (q - zp) * scale rounded once (the twin's rule: engine_reference
// gemv_* with a16=True; on float16 pairs where the zero point is an integer, see QBlock). KS warps of a block split
// K (block: max(GW, KS) warps); U steps a warp in flight.
#define A16 0.015625f
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define HAS_MMA 1
#else
#define HAS_MMA 0
#endif

__device__ __forceinline__ unsigned pack_h2(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ void mma_16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                          unsigned b1) {
#if HAS_MMA
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

__device__ __forceinline__ unsigned hsub2(unsigned a, unsigned b) {
  unsigned r;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
__device__ __forceinline__ unsigned hmul2(unsigned a, unsigned b) {
  unsigned r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// A block's {scale, zero point} for the tensor cores: float32 values and, for an integer zero point in [0, 1024),
// the float16 pairs {1024 + zp, 1024 + zp} and {scale, scale}: then (q - zp) * scale is computed on float16 pairs,
// 1024 + q from the code's bits (0x6400 | q), the difference exact, the product rounded once: the same float16 as
// float32 (q - zp) * scale rounded (the twin's rule), in 3 instructions a pair instead of 9.
struct QBlock {
  float s, z;
  unsigned sh, zh;
  bool zi;
};
__device__ __forceinline__ QBlock qblock_of(const unsigned int* sz, long long r, int k, int kb, int qblock) {
  const unsigned p = __ldg(sz + r * kb + k / qblock);
  QBlock b;
  b.s = h2f((unsigned short)(p & 0xffffu));
  b.z = h2f((unsigned short)(p >> 16));
  b.zi = b.z == rintf(b.z) && b.z >= 0.f && b.z < 1024.f;
  b.sh = (p & 0xffffu) * 0x10001u;
  b.zh = (0x6400u | (unsigned)(b.zi ? b.z : 0.f)) * 0x10001u;
  return b;
}

// elements 4m + 2h, 4m + 2h + 1 of a raw 16-byte chunk as a float16 pair (low: the first); H2: the block's zero
// point is an integer (QBlock.zi), decoded on float16 pairs, else in float32. The caller picks H2 for a whole warp
// step (a vote), so the two paths do not run predicated side by side (with a per-pair branch, run19-h200 timed v3
// int8/int4 ~1.5x slower than run17-h200's float32 decode).
template <int FMT, bool H2>
__device__ __forceinline__ unsigned wpair(const uint4& raw, int m, int h, const QBlock& b) {
  const unsigned int* u = reinterpret_cast<const unsigned int*>(&raw);
  if (FMT == F16) return u[2 * m + h];
  if (H2) {
    unsigned q2;                                 // {1024 + q_e, 1024 + q_e+1} as float16 bits
    if (FMT == Q8) {
      q2 = __byte_perm(u[m], 0x64646464u, h ? 0x4342u : 0x4140u);
    } else {
      const unsigned v = (u[m >> 1] >> (16 * (m & 1) + 8 * h)) & 0xffu;   // nibbles e (low), e + 1
      q2 = ((v | (v << 12)) & 0x000f000fu) | 0x64006400u;
    }
    return hmul2(hsub2(q2, b.zh), b.sh);
  }
  const int e = 4 * m + 2 * h;
  return pack_h2((qcode<FMT>(raw, e) - b.z) * b.s, (qcode<FMT>(raw, e + 1) - b.z) * b.s);
}

template <int FMT> struct V3;
template <> struct V3<F16> { static constexpr int U = 4; };
template <> struct V3<Q8> { static constexpr int U = 4; };
template <> struct V3<Q4> { static constexpr int U = 2; };

// Block (bx, by) of W warps: W / KS tasks. Its K steps are slice `slice` of `ksl` (1: all of K); with ksl > 1
// the ksl blocks of a task write their partial sums to gpart and the last to finish (a counter a task and batch
// tile in gcnt, left zero) adds them in slice order and stores (the step kernel's split-K across blocks: the same
// sums in a fixed order whichever block ends last). red: shared [W][32][5] where KS > 1.
template <int FMT, int MODE, int KS, int W>
__device__ void gemv3(GEMV_PARAMS, int bx, int by, float (*red)[32][5], int slice, int ksl, float* gpart,
                      int* gcnt) {
  constexpr int EPL = Fmt<FMT>::EPL;
  constexpr int KSTEP = 4 * EPL;                 // k of one warp step (two rows x 16 bytes a lane)
  constexpr int M = EPL / 4;                     // mma k16 tiles a step
  constexpr int U = V3<FMT>::U;
  constexpr bool QUANT = FMT == Q8 || FMT == Q4;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int ks = warp % KS;
  const int t = bx * (W / KS) + warp / KS;
  const bool live = t < tasks;
  const int b0 = by * 8;
  const int nb = min(8, B - b0);
  const bool norm = gamma != nullptr;
  const int per = ((K + KSTEP - 1) / KSTEP + ksl - 1) / ksl;
  const int sbeg = slice * per;
  const int nsteps = min((K + KSTEP - 1) / KSTEP, sbeg + per);   // this slice's steps: [sbeg, nsteps)
  long long r0, r1;
  if (MODE == M_SWIGLU) { r0 = 8LL * t + g; r1 = (long long)inter + 8LL * t + g; }
  else if (MODE == M_QKV) { r0 = (long long)(t / (HD / 16)) * HD + (t % (HD / 16)) * 8 + g; r1 = r0 + HD / 2; }
  else { r0 = 16LL * t + g; r1 = r0 + 8; }
  if (live) {                                    // the first steps' weights into L2 while the previous kernel ends
    const bool all = prefetch_all(MODE, (long long)tasks * 16 * row_bytes);
    const int lim = all ? nsteps : min(nsteps, sbeg + ks + U * KS);
    for (int s = sbeg + ks; s < lim; s += KS) {  // (PIPE: all of them and their blocks' {scale, zero point})
      const int k = s * KSTEP + q * EPL;
      if (k < K) {
        PREFETCH_L2(raw_ptr<FMT>(w, r0, k, row_bytes));
        PREFETCH_L2(raw_ptr<FMT>(w, r1, k, row_bytes));
        if (QUANT && all) {
          PREFETCH_L2(sz + r0 * kb + k / qblock);
          PREFETCH_L2(sz + r1 * kb + k / qblock);
        }
      }
    }
  }
  PDL_WAIT();
  float c[4] = {0.f, 0.f, 0.f, 0.f}, ss = 0.f;
  if (live) {
    const float* xb = x + (long long)(b0 + g) * K;
    for (int s0 = sbeg + ks; s0 < nsteps; s0 += KS * U) {
      uint4 ra[U], rb[U];
      QBlock qa[U], qb[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int k = (s0 + u * KS) * KSTEP + q * EPL;
        ra[u] = rb[u] = make_uint4(0, 0, 0, 0);
        qa[u] = qb[u] = QBlock{0.f, 0.f, 0u, 0x64006400u, true};   // a lane past K: zero weights (and activations)
        if (s0 + u * KS < nsteps && k < K) {
          ra[u] = load_raw<FMT>(w, r0, k, row_bytes);
          rb[u] = load_raw<FMT>(w, r1, k, row_bytes);
          if (QUANT) {
            qa[u] = qblock_of(sz, r0, k, kb, qblock);
            qb[u] = qblock_of(sz, r1, k, kb, qblock);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (s0 + u * KS >= nsteps) break;        // warp-uniform: every lane runs each mma
        const int k = (s0 + u * KS) * KSTEP + q * EPL;
        float xs[EPL];
#pragma unroll
        for (int e = 0; e < EPL; ++e) xs[e] = 0.f;
        if (g < nb && k < K) {
#pragma unroll
          for (int e = 0; e < EPL; e += 4) {
            const float4 v = ld_act4(xb + k + e);
            xs[e] = v.x; xs[e + 1] = v.y; xs[e + 2] = v.z; xs[e + 3] = v.w;
          }
          if (norm) {
#pragma unroll
            for (int e = 0; e < EPL; e += 4) {
              const uint2 gr = __ldg(reinterpret_cast<const uint2*>(gamma + k + e));
              ss += xs[e] * xs[e] + xs[e + 1] * xs[e + 1] + xs[e + 2] * xs[e + 2] + xs[e + 3] * xs[e + 3];
              xs[e] *= h2f((unsigned short)(gr.x & 0xffffu)); xs[e + 1] *= h2f((unsigned short)(gr.x >> 16));
              xs[e + 2] *= h2f((unsigned short)(gr.y & 0xffffu)); xs[e + 3] *= h2f((unsigned short)(gr.y >> 16));
            }
          }
        }
        unsigned bx[M][2];
#pragma unroll
        for (int m = 0; m < M; ++m) {
          bx[m][0] = pack_h2(xs[4 * m] * A16, xs[4 * m + 1] * A16);
          bx[m][1] = pack_h2(xs[4 * m + 2] * A16, xs[4 * m + 3] * A16);
        }
        if (!QUANT || __all_sync(0xffffffffu, qa[u].zi && qb[u].zi)) {   // every block of the step: integer zp
#pragma unroll
          for (int m = 0; m < M; ++m)
            mma_16816(c, wpair<FMT, true>(ra[u], m, 0, qa[u]), wpair<FMT, true>(rb[u], m, 0, qb[u]),
                      wpair<FMT, true>(ra[u], m, 1, qa[u]), wpair<FMT, true>(rb[u], m, 1, qb[u]), bx[m][0], bx[m][1]);
        } else {
#pragma unroll
          for (int m = 0; m < M; ++m)
            mma_16816(c, wpair<FMT, false>(ra[u], m, 0, qa[u]), wpair<FMT, false>(rb[u], m, 0, qb[u]),
                      wpair<FMT, false>(ra[u], m, 1, qa[u]), wpair<FMT, false>(rb[u], m, 1, qb[u]), bx[m][0],
                      bx[m][1]);
        }
      }
    }
  }
  PDL_LAUNCH();
  ss += __shfl_xor_sync(0xffffffffu, ss, 1);     // batch row g's sum of squares, in each lane of group g
  ss += __shfl_xor_sync(0xffffffffu, ss, 2);
  if (KS > 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][lane][i] = c[i];
    red[warp][lane][4] = ss;
    __syncthreads();
    if (ks != 0) return;
#pragma unroll
    for (int o = 1; o < KS; ++o) {
#pragma unroll
      for (int i = 0; i < 4; ++i) c[i] += red[warp + o][lane][i];
      ss += red[warp + o][lane][4];
    }
  }
  if (!live) return;
  if (ksl > 1) {                                 // split-K across blocks: the last block of the task adds them up
    const long long slot = (long long)by * tasks + t;
    float* mine = gpart + ((slot * ksl + slice) * 32 + lane) * 5;
#pragma unroll
    for (int i = 0; i < 4; ++i) mine[i] = c[i];
    mine[4] = ss;
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(gcnt + slot, 1) == ksl - 1;
    if (!__shfl_sync(0xffffffffu, last, 0)) return;
    __threadfence();
    ss = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) c[i] = 0.f;
    for (int s = 0; s < ksl; ++s) {
      const float* p = gpart + ((slot * ksl + s) * 32 + lane) * 5;
#pragma unroll
      for (int i = 0; i < 4; ++i) c[i] += __ldcg(p + i);
      ss += __ldcg(p + 4);
    }
    if (lane == 0) gcnt[slot] = 0;
  }
  // c[j], c[2 + j]: rows r0, r1 of batch row 2q + j; its sum of squares is in lane (2q + j) * 4
  const float ssj[2] = {__shfl_sync(0xffffffffu, ss, 8 * q), __shfl_sync(0xffffffffu, ss, 8 * q + 4)};
  const long long rows[2] = {r0, r1};
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int n = 2 * q + j;
    if (n >= nb) break;
    const float r = (norm ? rsqrtf(ssj[j] / K + eps) : 1.f) * (1.f / A16);
    float y[2] = {c[j] * r, c[2 + j] * r};
    store_rows<MODE, 2>(y, rows, b0 + n, out, ldo, inter, bias, kc, vc, cos_t, sin_t, seqlens, nh, kvh, cap);
  }
}

#define V3W(KS) ((KS) > GW ? (KS) : GW)          // warps a v3 block: GW, or KS where more warps split K
#define GEMV3_ENTRY(FMTNAME, FMT, MODENAME, MODE, KS)                                                             \
  extern "C" __global__ void __launch_bounds__(V3W(KS) * 32)                                                     \
      gemv3_##MODENAME##_##FMTNAME##_k##KS(GEMV_ENTRY_PARAMS) {                                                  \
    __shared__ float red[KS > 1 ? V3W(KS) : 1][32][5];                                                           \
    gemv3<FMT, MODE, KS, V3W(KS)>(GEMV_ARGS, blockIdx.x, blockIdx.y, red, 0, 1, nullptr, nullptr);               \
  }
// K split across blocks as well (gemv3s_*): grid.z = the slices a task (ksl); a task's blocks write their partial
// sums to gpart and the last to finish adds them in slice order (gemv3 above: deterministic whichever ends last),
// its counter in gcnt (a slot a task and batch tile, zero before and after). For products with few row tasks
// (a 0.5B layer's o / down / QKV: 56-72 tasks of 16 rows) the K split over warps alone leaves most SMs idle or a
// warp several dependent rounds of loads (int4: 7 steps of 128 inputs for K = 896).
#define GEMV3S_ENTRY(FMTNAME, FMT, MODENAME, MODE, KS)                                                            \
  extern "C" __global__ void __launch_bounds__(V3W(KS) * 32)                                                     \
      gemv3s_##MODENAME##_##FMTNAME##_k##KS(GEMV_ENTRY_PARAMS, float* gpart, int* gcnt) {                        \
    __shared__ float red[KS > 1 ? V3W(KS) : 1][32][5];                                                           \
    gemv3<FMT, MODE, KS, V3W(KS)>(GEMV_ARGS, blockIdx.x, blockIdx.y, red, blockIdx.z, gridDim.z, gpart, gcnt);   \
  }
// the K-split warps the engine picks from (engine.py gemv_plan, V3_SPLITS; V3S_SPLITS with block slices)
#define GEMV3_MODE(FMTNAME, FMT, MODENAME, MODE)                                                           \
  GEMV3_ENTRY(FMTNAME, FMT, MODENAME, MODE, 1) GEMV3_ENTRY(FMTNAME, FMT, MODENAME, MODE, 2)                \
  GEMV3_ENTRY(FMTNAME, FMT, MODENAME, MODE, 4) GEMV3_ENTRY(FMTNAME, FMT, MODENAME, MODE, 8)                \
  GEMV3_ENTRY(FMTNAME, FMT, MODENAME, MODE, 16)
#define GEMV3S_MODE(FMTNAME, FMT, MODENAME, MODE)                                                          \
  GEMV3S_ENTRY(FMTNAME, FMT, MODENAME, MODE, 4) GEMV3S_ENTRY(FMTNAME, FMT, MODENAME, MODE, 8)              \
  GEMV3S_ENTRY(FMTNAME, FMT, MODENAME, MODE, 16)
#define GEMV3_ALL(FMTNAME, FMT)                   \
  GEMV3_MODE(FMTNAME, FMT, resid, M_RESID)        \
  GEMV3_MODE(FMTNAME, FMT, logits, M_LOGITS)      \
  GEMV3_MODE(FMTNAME, FMT, swiglu, M_SWIGLU)      \
  GEMV3_MODE(FMTNAME, FMT, qkv, M_QKV)            \
  GEMV3S_MODE(FMTNAME, FMT, resid, M_RESID)       \
  GEMV3S_MODE(FMTNAME, FMT, swiglu, M_SWIGLU)     \
  GEMV3S_MODE(FMTNAME, FMT, qkv, M_QKV)

#if FMTS & (1 << F16)
GEMV_ALL(f16, F16)
GEMV2_ALL(f16, F16)
GEMV3_ALL(f16, F16)
#endif
#if FMTS & (1 << F32)
GEMV_ALL(f32, F32)
GEMV2_ALL(f32, F32)
#endif
#if FMTS & (1 << Q8)
GEMV_ALL(q8, Q8)
GEMV2_ALL(q8, Q8)
GEMV3_ALL(q8, Q8)
#endif
#if FMTS & (1 << Q4)
GEMV_ALL(q4, Q4)
GEMV2_ALL(q4, Q4)
GEMV3_ALL(q4, Q4)
#endif

#if WITH_ATTN
// resid[b, :] = float(embed[ids[b], :]); grid (B), any block size
extern "C" __global__ void embed_rows(const unsigned short* __restrict__ table, const long long* __restrict__ ids,
                                      float* resid, int H) {
  PDL_LAUNCH();
  PDL_WAIT();
  const long long row = ids[blockIdx.x];
  for (int k = threadIdx.x; k < H; k += blockDim.x) resid[(long long)blockIdx.x * H + k] = h2f(table[row * H + k]);
}

// Split s of row b's K/V head kh: -> n, its positions (<= 0: past the row's context); len the row's context, t0 the
// split's first position, base the head's first cache row. seqlens is written before the step (the sampler) and the
// cache rows below the new one by earlier steps: the split's K and V rows go into L2 (the block's threads in turn)
// before PDL_WAIT, while the QKV kernel writes the new one.
__device__ __forceinline__ int split_rows(const unsigned short* kc, const unsigned short* vc, const int* seqlens,
                                          int b, int kh, int kvh, int cap, int s, int& len, int& t0,
                                          long long& base) {
  len = seqlens[b] + 1;
  t0 = s * CHUNK;
  base = ((long long)b * kvh + kh) * cap;
  const int n = min(len, t0 + CHUNK) - t0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
#pragma unroll
    for (int c = 0; c < HD * 2; c += 128) {
      PREFETCH_L2(reinterpret_cast<const unsigned char*>(kc + (base + t0 + i) * HD) + c);
      PREFETCH_L2(reinterpret_cast<const unsigned char*>(vc + (base + t0 + i) * HD) + c);
    }
  PDL_WAIT();
  return n;
}

// The last split block of a (row b, heads [head0, head0 + nheads)) to finish merges the splits (threadFenceReduction
// pattern; its counter slot resets itself for the next layer and step): out [B, NH*HD] = sum_s e^(m_s - M) o_s /
// sum_s e^(m_s - M) l_s. Called by every thread of a split block after its partials are written.
__device__ __forceinline__ void split_merge(const float* part_o, const float* part_ml, float* out, int* slot, int b,
                                            int head0, int nheads, int nh, int nsplit, int used) {
  const int tid = threadIdx.x;
  __shared__ int is_last;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const int done = atomicAdd(slot, 1);
    is_last = done == used - 1;
    if (is_last) *slot = 0;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  for (int i = tid; i < nheads * HD; i += blockDim.x) {
    const int h = head0 + i / HD, d = i % HD;
    const float* ml = part_ml + ((long long)b * nh + h) * nsplit * 2;
    const float* o = part_o + ((long long)b * nh + h) * nsplit * HD;
    float m = NEG_INF;
#pragma unroll 4
    for (int t = 0; t < used; ++t) m = fmaxf(m, __ldcg(ml + 2 * t));
    float num = 0.f, den = 0.f;
#pragma unroll 4
    for (int t = 0; t < used; ++t) {
      const float f = __expf(__ldcg(ml + 2 * t) - m);
      num += f * __ldcg(o + t * HD + d);
      den += f * __ldcg(ml + 2 * t + 1);
    }
    out[((long long)b * nh + h) * HD + d] = num / den;
  }
}

// Flash-decoding, split K: block (split s, K/V head kh, batch row b) attends the GQA query heads of kh over
// positions [s*CHUNK, min((s+1)*CHUNK, seqlens[b]+1)) and writes each head's unnormalized partial output with its
// max and sum (part_o [B, NH, S, HD], part_ml [B, NH, S, 2]); the last block of (b, kh) merges the splits:
// out [B, NH*HD] = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s (twins: attn_split, attn_combine). A context of
// one split (len <= CHUNK) skips the partials and the merge: out = o / l, what the merge computes for it.
#define ATTN_V1_FITS (4 * (GQA * HD + GQA * CHUNK + (ATT_THREADS / 32) * GQA * HD) <= 48 * 1024)
#if ATTN_V1_FITS
extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_split(
    const float* __restrict__ q, const unsigned short* __restrict__ kc, const unsigned short* __restrict__ vc,
    const int* __restrict__ seqlens, float* part_o, float* part_ml, float* out, int* counter, int kvh, int cap,
    int nsplit, float scale) {
  constexpr int G = GQA, W = ATT_THREADS / 32;
  __shared__ float qs[G][HD];
  __shared__ float ps[G][CHUNK];
  __shared__ float red[W][G][HD];
  __shared__ float ls[G];
  const int s = blockIdx.x, kh = blockIdx.y, b = blockIdx.z, nh = kvh * G;
  int len, t0;
  long long base;
  const int n = split_rows(kc, vc, seqlens, b, kh, kvh, cap, s, len, t0, base);
  if (n <= 0) return;                                   // the merge reads only the splits below len
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* qb = q + ((long long)b * nh + kh * G) * HD;
  for (int i = tid; i < G * HD; i += ATT_THREADS) qs[i / HD][i % HD] = qb[i] * scale;
  __syncthreads();
  for (int i = tid; i < n; i += ATT_THREADS) {          // scores: one position a thread, all G heads
    const uint4* kr = reinterpret_cast<const uint4*>(kc + (base + t0 + i) * HD);
    float sc[G];
#pragma unroll
    for (int h = 0; h < G; ++h) sc[h] = 0.f;
#pragma unroll
    for (int c = 0; c < HD / 8; ++c) {
      const uint4 raw = __ldg(kr + c);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float kf = elem<F16>(raw, e, 1.f, 0.f);
#pragma unroll
        for (int h = 0; h < G; ++h) sc[h] += qs[h][c * 8 + e] * kf;
      }
    }
#pragma unroll
    for (int h = 0; h < G; ++h) ps[h][i] = sc[h];
  }
  __syncthreads();
  for (int h = warp; h < G; h += W) {                   // per head: max, exp, sum over the chunk
    float m = NEG_INF;
    for (int i = lane; i < n; i += 32) m = fmaxf(m, ps[h][i]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.f;
    for (int i = lane; i < n; i += 32) { const float p = __expf(ps[h][i] - m); ps[h][i] = p; l += p; }
    l = warp_sum(l);
    if (lane == 0) {
      float* ml = part_ml + (((long long)b * nh + kh * G + h) * nsplit + s) * 2;
      ml[0] = m; ml[1] = l;
      ls[h] = l;
    }
  }
  __syncthreads();
  PDL_LAUNCH();                                  // K is read, V next: the next kernel may start
  // P @ V: a K/V row is HD/8 lanes of 8 dims (16-byte loads); a warp takes 32/(HD/8) rows at once
  constexpr int LPR = HD / 8, RPW = 32 / LPR;
  float acc[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[h][e] = 0.f;
  const int sub = lane % LPR;
#pragma unroll 4
  for (int i = warp * RPW + lane / LPR; i < n; i += W * RPW) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(vc + (base + t0 + i) * HD) + sub);
    float vf[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) vf[e] = elem<F16>(raw, e, 1.f, 0.f);
#pragma unroll
    for (int h = 0; h < G; ++h) {
      const float p = ps[h][i];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[h][e] += p * vf[e];
    }
  }
#pragma unroll
  for (int h = 0; h < G; ++h)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float v = acc[h][e];
      for (int o = LPR; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane < LPR) red[warp][h][lane * 8 + e] = v;
    }
  __syncthreads();
  const int used = (len + CHUNK - 1) / CHUNK;
  for (int i = tid; i < G * HD; i += ATT_THREADS) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) v += red[w][i / HD][i % HD];
    if (used == 1)                                      // one split: the merge below is e^0 = 1 times o and l
      out[((long long)b * nh + kh * G + i / HD) * HD + i % HD] = v / ls[i / HD];
    else
      part_o[(((long long)b * nh + kh * G + i / HD) * nsplit + s) * HD + i % HD] = v;
  }
  if (used == 1) return;
  split_merge(part_o, part_ml, out, counter + b * kvh + kh, b, kh * G, G, nh, nsplit, used);
}
#endif  // ATTN_V1_FITS (engine.attention_fits)

// Attention v2 (the engine's default where ATTN_V2_FITS): the same splits, partials and merge as attn_split, in one
// pass, with more blocks: block (split s, K/V head kh x head slice hs, row b) of ATT2_THREADS threads attends the
// ATT_HPB query heads hs*HPB .. of kh's GQA group (ATT_HS slices of at most 4 heads: fewer serial heads a thread).
// A lane group (HD/8 lanes, 8 dims each, 16-byte K and V loads) takes positions g, g + NG, ... of the split with an
// online softmax per head (running max m, sum l, unnormalized output); q stays in registers, the next position's K
// and V are loaded before the current one is used; the NG groups merge once through shared memory, each group's
// weight e^(m_g - M) computed once. attn_split's three phases (scores to shared memory, softmax by warps, P @ V with
// a cross-lane reduction) each paid a round of latency. Twin: reference.attn_online. The split counter has a slot
// per (row, K/V head, slice): counter [B, KVH * HS] (the engine allocates [B, NH]).
#define ATT2_THREADS 256
#define ATT_LPR (HD / 8)
#define ATT_NG ((ATT2_THREADS / 32) * (32 / ATT_LPR))
#define ATT_HS ((GQA + 3) / 4)
#define ATT_HPB ((GQA + ATT_HS - 1) / ATT_HS)
#define ATTN_V2_FITS (HD % 8 == 0 && 32 % ATT_LPR == 0)
#if ATTN_V2_FITS
struct AttnShared {                                    // each group's unnormalized output, max and sum
  float so[ATT_NG][ATT_HPB][HD];
  float sm[ATT_NG][ATT_HPB], sl[ATT_NG][ATT_HPB], sf[ATT_NG][ATT_HPB], smx[ATT_HPB];
};
#define ATTN_PARAMS                                                                                               \
  const float* __restrict__ q, const unsigned short* __restrict__ kc, const unsigned short* __restrict__ vc,      \
      const int* __restrict__ seqlens, float* part_o, float* part_ml, float* out, int* counter, int kvh, int cap, \
      int nsplit, float scale
// block (split s, K/V head x head slice y, row b) of ATT2_THREADS threads
__device__ void attn_online_block(ATTN_PARAMS, int s, int y, int b, AttnShared& sh) {
  constexpr int G = GQA, HPB = ATT_HPB, HS = ATT_HS, LPR = ATT_LPR, RPW = 32 / LPR, NG = ATT_NG, ROW = HD / 8;
  float (&so)[NG][HPB][HD] = sh.so;
  float (&sm)[NG][HPB] = sh.sm;
  float (&sl)[NG][HPB] = sh.sl;
  float (&sf)[NG][HPB] = sh.sf;
  float (&smx)[HPB] = sh.smx;
  const int kh = y / HS, hs = y % HS, nh = kvh * G;
  const int h0 = kh * G + hs * HPB, nhb = min(HPB, G - hs * HPB);   // this block's first head, its head count
  int len, t0;
  long long base;
  const int n = split_rows(kc, vc, seqlens, b, kh, kvh, cap, s, len, t0, base);
  if (n <= 0) return;                                   // the merge reads only the splits below len
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int sub = lane % LPR, grp = warp * RPW + lane / LPR;
  float qr[HPB][8], m[HPB], l[HPB], acc[HPB][8];
  const float* qb = q + ((long long)b * nh + h0) * HD + sub * 8;
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f), c = a;
    if (h < nhb) {
      a = ld_q4(qb + h * HD);
      c = ld_q4(qb + h * HD + 4);
    }
    qr[h][0] = a.x * scale; qr[h][1] = a.y * scale; qr[h][2] = a.z * scale; qr[h][3] = a.w * scale;
    qr[h][4] = c.x * scale; qr[h][5] = c.y * scale; qr[h][6] = c.z * scale; qr[h][7] = c.w * scale;
    m[h] = NEG_INF; l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[h][e] = 0.f;
  }
  const uint4* kr = reinterpret_cast<const uint4*>(kc + (base + t0) * HD) + sub;
  const uint4* vr = reinterpret_cast<const uint4*>(vc + (base + t0) * HD) + sub;
  int i = warp * RPW + lane / LPR;                      // a warp's groups step together (full-mask shuffles)
  uint4 kn = make_uint4(0, 0, 0, 0), vn = kn;
  if (i < n) { kn = ld_kv(kr + (long long)i * ROW); vn = ld_kv(vr + (long long)i * ROW); }
  for (int i0 = warp * RPW; i0 < n; i0 += NG, i += NG) {
    const uint4 kraw = kn, vraw = vn;
    const bool ok = i < n;
    if (i + NG < n) { kn = ld_kv(kr + (long long)(i + NG) * ROW); vn = ld_kv(vr + (long long)(i + NG) * ROW); }
    float kf[8], vf[8], sc[HPB];
#pragma unroll
    for (int e = 0; e < 8; ++e) { kf[e] = elem<F16>(kraw, e, 1.f, 0.f); vf[e] = elem<F16>(vraw, e, 1.f, 0.f); }
#pragma unroll
    for (int h = 0; h < HPB; ++h) {
      float d = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) d += qr[h][e] * kf[e];
      sc[h] = d;
    }
#pragma unroll
    for (int o = 1; o < LPR; o <<= 1)
#pragma unroll
      for (int h = 0; h < HPB; ++h) sc[h] += __shfl_xor_sync(0xffffffffu, sc[h], o);
    if (ok) {
#pragma unroll
      for (int h = 0; h < HPB; ++h) {
        const float mn = fmaxf(m[h], sc[h]);
        const float c = __expf(m[h] - mn), p = __expf(sc[h] - mn);
        l[h] = l[h] * c + p;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[h][e] = acc[h][e] * c + p * vf[e];
        m[h] = mn;
      }
    }
  }
  PDL_LAUNCH();                                  // K and V are read: the next kernel may start
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
#pragma unroll
    for (int e = 0; e < 8; ++e) so[grp][h][sub * 8 + e] = acc[h][e];
    if (sub == 0) { sm[grp][h] = m[h]; sl[grp][h] = l[h]; }
  }
  __syncthreads();
  for (int j = tid; j < NG * HPB; j += ATT2_THREADS) {  // each group's weight e^(m_g - M), M the heads' largest m
    const int g = j / HPB, h = j % HPB;
    float mx = NEG_INF;
#pragma unroll
    for (int o = 0; o < NG; ++o) mx = fmaxf(mx, sm[o][h]);
    sf[g][h] = __expf(sm[g][h] - mx);                  // a group without positions: e^-inf = 0
    if (g == 0) smx[h] = mx;
  }
  __syncthreads();
  const int used = (len + CHUNK - 1) / CHUNK;
  for (int j = tid; j < nhb * HD; j += ATT2_THREADS) {
    const int h = j / HD, d = j % HD;
    float num = 0.f, den = 0.f;
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      num += sf[g][h] * so[g][h][d];
      den += sf[g][h] * sl[g][h];
    }
    const long long row = (long long)b * nh + h0 + h;
    if (used == 1) {                                    // one split: the merge below is e^0 = 1 times o and l
      out[row * HD + d] = num / den;
    } else {
      part_o[(row * nsplit + s) * HD + d] = num;
      if (d == 0) { part_ml[(row * nsplit + s) * 2] = smx[h]; part_ml[(row * nsplit + s) * 2 + 1] = den; }
    }
  }
  if (used == 1) return;
  split_merge(part_o, part_ml, out, counter + (b * kvh + kh) * HS + hs, b, h0, nhb, nh, nsplit, used);
}
extern "C" __global__ void __launch_bounds__(ATT2_THREADS) attn_online(ATTN_PARAMS) {
  __shared__ AttnShared sh;
  attn_online_block(q, kc, vc, seqlens, part_o, part_ml, out, counter, kvh, cap, nsplit, scale, blockIdx.x,
                    blockIdx.y, blockIdx.z, sh);
}
#endif  // ATTN_V2_FITS
#endif  // WITH_ATTN

// ------------------------------------------------------------------------------------------------------------
// The persistent step (engine step="persistent"): every layer of a decode step in one kernel of one block an SM
// (all resident: launched cooperatively), the five phases of a layer (norm + QKV + rotary + append; attention;
// o-proj + residual; norm + gate|up + SwiGLU; down + residual) separated by grid barriers instead of kernel
// boundaries, the embedding gather first; the LM head stays its own kernel. Each phase runs the kernel-a-phase
// step's device code (gemv3 with W = 8 warps a block, attn_online_block) over "virtual blocks" strided across the
// grid, so it computes what those kernels compute; a GEMV may also split K across ksl blocks (partials added in a
// fixed order by the last block, gemv3). Before a barrier every thread prefetches its share of a later product's
// weights into L2 (they do not depend on the step): o-proj after QKV, gate|up after attention, down after o-proj,
// the next layer's QKV after gate|up, so the weight stream continues across barriers.
// -D options: STEP_FMT (the layers' weight format), KS_QKV / KS_O / KS_GU / KS_DN (K-split warps of each
// product's virtual block, 1..8), COHERENT=1 (activations read from L2, see ld_act4).
#if WITH_STEP && WITH_ATTN && ATTN_V2_FITS
#ifndef STEP_FMT
#define STEP_FMT F16
#endif
#ifndef KS_QKV
#define KS_QKV 8
#endif
#ifndef KS_O
#define KS_O 8
#endif
#ifndef KS_GU
#define KS_GU 2
#endif
#ifndef KS_DN
#define KS_DN 8
#endif
#define STEP_WARPS 8
#if STEP_WARPS * 32 != ATT2_THREADS
#error "the persistent step runs attn_online_block: its block must have ATT2_THREADS threads"
#endif

struct StepLayer {               // one layer, as persistent.py table() writes it (8-byte fields)
  const unsigned char* w[4];     // qkv, o, gate|up, down
  const unsigned int* sz[4];     // their {scale, zero point} blocks (null: float16)
  const unsigned short* ln1;
  const unsigned short* ln2;
  const unsigned short* bias;    // q|k|v bias or null
  unsigned short* kc;            // this layer's K and V cache [B, KVH, C, HD]
  unsigned short* vc;
};

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every block of the grid waits here until all have arrived (cooperative groups' grid barrier): one atomic add a
// block on bar[0], the first block adding 2^31 - (blocks - 1) and the others 1, so the adds of one barrier flip the
// top bit once and leave the rest as it was (no reset, any number of barriers and launches); each block's thread 0
// then polls the bit. A release fence before the add, an acquire load when polling, __syncthreads around.
__device__ __forceinline__ void grid_sync(unsigned* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
    __threadfence();
    const unsigned old = atomicAdd(bar, add);
    while (((old ^ ld_acquire(bar)) & 0x80000000u) == 0) {
    }
    __threadfence();
  }
  __syncthreads();
}

// this thread's share of `bytes` at p into L2 (128-byte lines strided over the grid)
__device__ __forceinline__ void prefetch_share(const void* p, long long bytes) {
  if (p == nullptr) return;
  const char* c = static_cast<const char*>(p);
  const long long stride = (long long)gridDim.x * blockDim.x * 128;
  for (long long o = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 128; o < bytes; o += stride)
    PREFETCH_L2(c + o);
}

// product i's weights and {scale, zero point} blocks (N rows of rb bytes, kb blocks a row), prefetch_share each
__device__ __forceinline__ void prefetch_product(const StepLayer& L, int i, int n, int rb, int kb) {
  prefetch_share(L.w[i], (long long)n * rb);
  prefetch_share(L.sz[i], (long long)n * kb * 4);
}

template <int FMT, int MODE, int KS>
__device__ __forceinline__ void step_gemv(GEMV_PARAMS, int ksl, float (*red)[32][5], float* gpart, int* gcnt) {
  constexpr int TPB = STEP_WARPS / KS;           // tasks a virtual block
  const int groups = (tasks + TPB - 1) / TPB, nvb = groups * ksl * ((B + 7) / 8);
  for (int vb = blockIdx.x; vb < nvb; vb += gridDim.x) {
    const int rest = vb / ksl;
    gemv3<FMT, MODE, KS, STEP_WARPS>(GEMV_ARGS, rest % groups, rest / groups, red, vb % ksl, ksl, gpart, gcnt);
    __syncthreads();                             // red is the next virtual block's
  }
}

// The barrier's cost (bench_engine barrier): `phases` rounds of a phase's least work (every thread reads n floats of
// w and writes one float) separated by grid_sync; phase_probe is one round as a kernel, launched back to back (with
// programmatic dependent launch) for the kernel-a-phase step's boundary.
__device__ __forceinline__ void probe_round(float* x, const float* __restrict__ w, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float a = __ldcg(x + i % 1024);
  for (int k = i; k < n; k += gridDim.x * blockDim.x) a += __ldg(w + k);
  x[1024 + (i * 7) % 1024] = a;
}
extern "C" __global__ void __launch_bounds__(STEP_WARPS * 32, 1) barrier_probe(float* x, const float* w, int n,
                                                                              unsigned* bar, int phases) {
  for (int p = 0; p < phases; ++p) {
    probe_round(x, w, n);
    grid_sync(bar);
  }
}
extern "C" __global__ void __launch_bounds__(STEP_WARPS * 32) phase_probe(float* x, const float* w, int n) {
  PDL_WAIT();
  probe_round(x, w, n);
  PDL_LAUNCH();
}

// dims: per product (qkv, o, gate|up, down) {N, K, blocks a row (kb), row bytes, K slices (ksl)}
extern "C" __global__ void __launch_bounds__(STEP_WARPS * 32, 1) step_layers(
    const StepLayer* __restrict__ layers, int nlayers, const int* __restrict__ dims, int qblock,
    const unsigned short* __restrict__ embed, const long long* __restrict__ ids, const float* __restrict__ cos_t,
    const float* __restrict__ sin_t, const int* __restrict__ seqlens, float* resid, float* q, float* attn,
    float* act, float* part_o, float* part_ml, int* counter, float* gpart, int* gcnt, unsigned* bar, int B, int H,
    int inter, int nh, int kvh, int cap, int nsplit, float eps, float scale) {
  __shared__ float red[STEP_WARPS][32][5];
  __shared__ AttnShared ash;
  int n[4], kk[4], kb[4], rb[4], ksl[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    n[i] = dims[5 * i]; kk[i] = dims[5 * i + 1]; kb[i] = dims[5 * i + 2]; rb[i] = dims[5 * i + 3];
    ksl[i] = dims[5 * i + 4];
  }
  prefetch_share(layers[0].w[0], (long long)n[0] * rb[0]);
  PDL_WAIT();
  for (int b = blockIdx.x; b < B; b += gridDim.x) {
    const long long row = ids[b];
    for (int k = threadIdx.x; k < H; k += blockDim.x) resid[(long long)b * H + k] = h2f(embed[row * H + k]);
  }
  grid_sync(bar);
  const int natt = nsplit * kvh * ATT_HS * B;
  for (int l = 0; l < nlayers; ++l) {
    const StepLayer L = layers[l];
    step_gemv<STEP_FMT, M_QKV, KS_QKV>(L.w[0], L.sz[0], kb[0], qblock, rb[0], resid, L.ln1, eps, kk[0], n[0] / 16,
                                       B, q, 0, 0, L.bias, L.kc, L.vc, cos_t, sin_t, seqlens, nh, kvh, cap, ksl[0],
                                       red, gpart, gcnt);
    prefetch_product(L, 1, n[1], rb[1], kb[1]);
    grid_sync(bar);
    for (int vb = blockIdx.x; vb < natt; vb += gridDim.x) {
      attn_online_block(q, L.kc, L.vc, seqlens, part_o, part_ml, attn, counter, kvh, cap, nsplit, scale,
                        vb % nsplit, (vb / nsplit) % (kvh * ATT_HS), vb / (nsplit * kvh * ATT_HS), ash);
      __syncthreads();
    }
    prefetch_product(L, 2, n[2], rb[2], kb[2]);
    grid_sync(bar);
    step_gemv<STEP_FMT, M_RESID, KS_O>(L.w[1], L.sz[1], kb[1], qblock, rb[1], attn, nullptr, eps, kk[1], n[1] / 16,
                                       B, resid, H, 0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nh,
                                       kvh, cap, ksl[1], red, gpart, gcnt);
    prefetch_product(L, 3, n[3], rb[3], kb[3]);
    grid_sync(bar);
    step_gemv<STEP_FMT, M_SWIGLU, KS_GU>(L.w[2], L.sz[2], kb[2], qblock, rb[2], resid, L.ln2, eps, kk[2],
                                         n[2] / 16, B, act, 0, inter, nullptr, nullptr, nullptr, nullptr, nullptr,
                                         nullptr, nh, kvh, cap, ksl[2], red, gpart, gcnt);
    if (l + 1 < nlayers) prefetch_product(layers[l + 1], 0, n[0], rb[0], kb[0]);
    grid_sync(bar);
    step_gemv<STEP_FMT, M_RESID, KS_DN>(L.w[3], L.sz[3], kb[3], qblock, rb[3], act, nullptr, eps, kk[3], n[3] / 16,
                                        B, resid, H, 0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nh,
                                        kvh, cap, ksl[3], red, gpart, gcnt);
    grid_sync(bar);
  }
}
#endif  // WITH_STEP
