// Transformer-encoder kernels (BERT / ERNIE / MiniLM layers) for runtime/kernels/encoder.py: the parts of a layer
// that are not GEMMs. The GEMMs run through cuBLASLt with their epilogues fused (cublaslt.py: bias, bias + GELU,
// bias + residual), so a layer is QKV GEMM -> attention -> O GEMM (+ residual) -> layer_norm -> FFN-up GEMM (GELU)
// -> FFN-down GEMM (+ residual) -> layer_norm. Activations are float16 row-major [T, *], T = batch x seq tokens;
// statistics and softmax in float32. NumPy twins: encoder.py (*_reference). No system headers (NVRTC compiles it
// as is); HD (head size) comes in as a -D option.
#ifndef HD
#define HD 64
#endif
#ifndef KB
#define KB 64               // keys a block loads per step (a -D option: 32, 64 or 128; 128 only for HD <= 64, shared)
#endif
#ifndef AW
#define AW 4                // warps per attention block, 16 queries each (a -D option: 4 or 8)
#endif
#ifndef MINB
#define MINB 1              // attention blocks an SM asked of __launch_bounds__ (caps a thread's registers)
#endif
#ifndef KV_STAGES
#define KV_STAGES 1         // 2: the next key step's K/V loads (cp.async) overlap this step's math (HD <= 64, KB 64)
#endif
#define LN_VPL 4            // layer_norm: up to 4 x 8 float16 a lane (hidden size <= 1024)
#define P2O_NEG_INF __int_as_float(0xff800000)

typedef unsigned short half_t;

__device__ __forceinline__ float h2f(half_t h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ half_t f2h(float f) {
  half_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
__device__ __forceinline__ unsigned pack2(float lo, float hi) {      // lo in the low half
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ float lane_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}
// Four 8x8 float16 tiles of shared memory, transposed: lanes 8i..8i+7 give the row addresses of tile i, and each
// lane gets, of every tile, the elements (rows 2t, 2t + 1; column g): an mma B fragment read from a row-major
// [k][n] array (rows = k).
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// 16 bytes global -> shared without passing through registers; src_bytes 0 fills the 16 bytes with zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, unsigned src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta, a warp a row (hidden size H, a multiple of 8, <= 1024).
// The row stays in registers: two passes over them (mean, then the centred variance), as the twin computes it.
__device__ void norm_row(const uint4* xv, const uint4* gv, const uint4* bv, uint4* yv, int nv, float eps) {
  const int lane = threadIdx.x & 31;
  float v[LN_VPL][8];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < LN_VPL; ++i) {
    const int j = lane + 32 * i;
    if (j < nv) {
      const uint4 u = xv[j];
      const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[i][e] = h2f((half_t)(w[e >> 1] >> ((e & 1) * 16)));
        s += v[i][e];
      }
    }
  }
  const float n = 8.f * nv;
  const float mean = lane_sum(s) / n;
  float q = 0.f;
#pragma unroll
  for (int i = 0; i < LN_VPL; ++i)
    if (lane + 32 * i < nv)
#pragma unroll
      for (int e = 0; e < 8; ++e) q += (v[i][e] - mean) * (v[i][e] - mean);
  const float rstd = rsqrtf(lane_sum(q) / n + eps);
#pragma unroll
  for (int i = 0; i < LN_VPL; ++i) {
    const int j = lane + 32 * i;
    if (j < nv) {
      const uint4 gu = gv[j], bu = bv[j];
      const unsigned g[4] = {gu.x, gu.y, gu.z, gu.w}, b[4] = {bu.x, bu.y, bu.z, bu.w};
      unsigned o[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const float y0 = (v[i][2 * p] - mean) * rstd * h2f((half_t)(g[p] & 0xffffu)) + h2f((half_t)(b[p] & 0xffffu));
        const float y1 = (v[i][2 * p + 1] - mean) * rstd * h2f((half_t)(g[p] >> 16)) + h2f((half_t)(b[p] >> 16));
        o[p] = pack2(y0, y1);
      }
      yv[j] = make_uint4(o[0], o[1], o[2], o[3]);
    }
  }
}

extern "C" __global__ void layer_norm_f16(const half_t* __restrict__ x, const half_t* __restrict__ gamma,
                                          const half_t* __restrict__ beta, half_t* __restrict__ y, int rows, int H,
                                          float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const long long off = (long long)row * H;
  norm_row((const uint4*)(x + off), (const uint4*)gamma, (const uint4*)beta, (uint4*)(y + off), H / 8, eps);
}

// Embeddings + LayerNorm (onnxruntime's EmbedLayerNormalization): row t = (b, p) of ids [B, S] gets
// word[ids[t]] + position[p] + type[types[t]] (types may be null: type 0), then layer_norm. A warp a row; the sum is
// added in float32, rounded to float16 into `sum` (scratch [T, H]) and normalized from there, as the twin does.
extern "C" __global__ void embed_layer_norm_f16(const long long* __restrict__ ids, const long long* __restrict__ types,
                                                const half_t* __restrict__ word, const half_t* __restrict__ pos,
                                                const half_t* __restrict__ type_emb, const half_t* __restrict__ gamma,
                                                const half_t* __restrict__ beta, half_t* __restrict__ sum,
                                                half_t* __restrict__ y, int rows, int S, int H, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x & 31, nv = H / 8;
  const long long w = ids[row], p = row % S, t = types != nullptr ? types[row] : 0;
  const uint4* wv = (const uint4*)(word + w * H);
  const uint4* pv = (const uint4*)(pos + p * H);
  const uint4* tv = (const uint4*)(type_emb + t * H);
  uint4* sv = (uint4*)(sum + (long long)row * H);
  for (int j = lane; j < nv; j += 32) {
    const uint4 a = wv[j], b = pv[j], c = tv[j];
    const unsigned av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w}, cv[4] = {c.x, c.y, c.z, c.w};
    unsigned o[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float lo = h2f((half_t)(av[q] & 0xffffu)) + h2f((half_t)(bv[q] & 0xffffu)) + h2f((half_t)(cv[q] & 0xffffu));
      const float hi = h2f((half_t)(av[q] >> 16)) + h2f((half_t)(bv[q] >> 16)) + h2f((half_t)(cv[q] >> 16));
      o[q] = pack2(lo, hi);
    }
    sv[j] = make_uint4(o[0], o[1], o[2], o[3]);
  }
  __syncwarp();
  norm_row(sv, (const uint4*)gamma, (const uint4*)beta, (uint4*)(y + (long long)row * H), nv, eps);
}

// Multi-head attention straight from the packed QKV product (no bias pass, no transpose: the bias rode the GEMM's
// epilogue and the heads are read where the GEMM wrote them). qkv [B*S, 3H] (Q | K | V, head h at h*HD in each),
// lens [B]: keys at positions >= lens[b] are masked (right padding, onnxruntime's 1-D key-length mask_index);
// out [B*S, H]. Grid (B * NH, ceil(S / (16 AW))), AW warps a block, 16 queries a warp; keys in steps of KB through
// shared memory with an online softmax (flash attention, tensor cores: mma.sync m16n8k16, float32 accumulation).
// Fragment layouts (g = lane / 4, t = lane % 4): A row g / g+8, columns 2t, 2t+1 (+8); B rows 2t, 2t+1 (+8),
// column g; C rows g / g+8, columns 2t, 2t+1. The score tile's C fragments are the A fragments of P @ V.
extern "C" __global__ void __launch_bounds__(AW * 32, MINB)
    attention_qkv_f16(const half_t* __restrict__ qkv, const int* __restrict__ lens, half_t* __restrict__ out, int S,
                      int NH, float scale) {
  __shared__ __align__(16) half_t ks[KV_STAGES][KB][HD + 8];
  __shared__ __align__(16) half_t vs[KV_STAGES][KB][HD + 8];
  const int bh = blockIdx.x, b = bh / NH, h = bh % NH, H = NH * HD, ld = 3 * H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int q0 = blockIdx.y * (AW * 16) + warp * 16;
  const int len = min(max(lens[b], 0), S);
  const long long base = (long long)b * S;
  unsigned qa[HD / 16][4];
  {
    const int r0 = min(q0 + g, S - 1), r1 = min(q0 + g + 8, S - 1);
    const half_t* p0 = qkv + (base + r0) * ld + h * HD;
    const half_t* p1 = qkv + (base + r1) * ld + h * HD;
#pragma unroll
    for (int kc = 0; kc < HD / 16; ++kc) {
      qa[kc][0] = *(const unsigned*)(p0 + kc * 16 + 2 * t);
      qa[kc][1] = *(const unsigned*)(p1 + kc * 16 + 2 * t);
      qa[kc][2] = *(const unsigned*)(p0 + kc * 16 + 8 + 2 * t);
      qa[kc][3] = *(const unsigned*)(p1 + kc * 16 + 8 + 2 * t);
    }
  }
  float o[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float m0 = P2O_NEG_INF, m1 = P2O_NEG_INF, l0 = 0.f, l1 = 0.f;      // rows g and g + 8
  // the key step starting at k0 into stage st: 16-byte chunks of the K and V rows, zeros past the sequence
  auto load = [&](int st, int k0) {
    for (int i = threadIdx.x; i < KB * HD / 8; i += AW * 32) {
      const int r = i / (HD / 8), c = (i % (HD / 8)) * 8, key = k0 + r;
      const half_t* src = qkv + (base + min(key, S - 1)) * ld + h * HD + c;
#if KV_STAGES > 1
      const unsigned n = key < S ? 16u : 0u;
      cp_async16(&ks[st][r][c], src + H, n);
      cp_async16(&vs[st][r][c], src + 2 * H, n);
#else
      uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
      if (key < S) {
        kv = *(const uint4*)(src + H);
        vv = *(const uint4*)(src + 2 * H);
      }
      *(uint4*)&ks[st][r][c] = kv;
      *(uint4*)&vs[st][r][c] = vv;
#endif
    }
#if KV_STAGES > 1
    asm volatile("cp.async.commit_group;");
#endif
  };
#if KV_STAGES > 1
  if (len > 0) load(0, 0);
#endif
  for (int k0 = 0, step = 0; k0 < len; k0 += KB, ++step) {
    const int st = KV_STAGES > 1 ? (step & 1) : 0;
#if KV_STAGES > 1
    if (k0 + KB < len) {                 // the next step's loads in flight while this one computes
      load(st ^ 1, k0 + KB);
      asm volatile("cp.async.wait_group 1;");
    } else {
      asm volatile("cp.async.wait_group 0;");
    }
    __syncthreads();
#else
    __syncthreads();
    load(0, k0);
    __syncthreads();
#endif
    float s[KB / 8][4];
#pragma unroll
    for (int n = 0; n < KB / 8; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int kc = 0; kc < HD / 16; ++kc)
        mma16816(s[n], qa[kc], *(const unsigned*)&ks[st][n * 8 + g][kc * 16 + 2 * t],
                 *(const unsigned*)&ks[st][n * 8 + g][kc * 16 + 8 + 2 * t]);
    }
    float mx0 = P2O_NEG_INF, mx1 = P2O_NEG_INF;
#pragma unroll
    for (int n = 0; n < KB / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + n * 8 + 2 * t + (e & 1);
        s[n][e] = key < len ? s[n][e] * scale : P2O_NEG_INF;
        if (e < 2) mx0 = fmaxf(mx0, s[n][e]); else mx1 = fmaxf(mx1, s[n][e]);
      }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);          // finite: key k0 < len is in this step
    const float a0 = __expf(m0 - n0), a1 = __expf(m1 - n1);         // 0 on the first step (m = -inf)
    m0 = n0;
    m1 = n1;
    l0 *= a0;
    l1 *= a1;
#pragma unroll
    for (int d = 0; d < HD / 8; ++d) {
      o[d][0] *= a0; o[d][1] *= a0; o[d][2] *= a1; o[d][3] *= a1;
    }
#pragma unroll
    for (int n = 0; n < KB / 8; ++n) {
      s[n][0] = __expf(s[n][0] - n0); s[n][1] = __expf(s[n][1] - n0);
      s[n][2] = __expf(s[n][2] - n1); s[n][3] = __expf(s[n][3] - n1);
      l0 += s[n][0] + s[n][1];
      l1 += s[n][2] + s[n][3];
    }
#pragma unroll
    for (int kc = 0; kc < KB / 16; ++kc) {
      const unsigned pa[4] = {pack2(s[2 * kc][0], s[2 * kc][1]), pack2(s[2 * kc][2], s[2 * kc][3]),
                              pack2(s[2 * kc + 1][0], s[2 * kc + 1][1]), pack2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
      // V's B fragments for two column tiles at a time: tiles (keys 0-7, d), (keys 8-15, d), (0-7, d + 1),
      // (8-15, d + 1) of this 16-key chunk; lane l addresses row kc*16 + l % 16 of column tile d + l / 16
      const unsigned row = smem_addr(&vs[st][kc * 16 + (lane & 15)][(lane >> 4) * 8]);
#pragma unroll
      for (int d = 0; d < HD / 8; d += 2) {
        unsigned b[4];
        ldsm_x4_trans(b, row + d * 8 * 2);
        mma16816(o[d], pa, b[0], b[1]);
        mma16816(o[d + 1], pa, b[2], b[3]);
      }
    }
#if KV_STAGES > 1
    __syncthreads();                     // every warp is done with stage st before the next prefetch reuses it
#endif
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float i0 = l0 > 0.f ? 1.f / l0 : 0.f, i1 = l1 > 0.f ? 1.f / l1 : 0.f;     // len 0: zeros
  const int r0 = q0 + g, r1 = q0 + g + 8;
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) {
    const int c = h * HD + d * 8 + 2 * t;
    if (r0 < S) *(unsigned*)(out + (base + r0) * H + c) = pack2(o[d][0] * i0, o[d][1] * i0);
    if (r1 < S) *(unsigned*)(out + (base + r1) * H + c) = pack2(o[d][2] * i1, o[d][3] * i1);
  }
}
