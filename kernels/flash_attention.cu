// Flash-style causal attention in fp32 (FlashAttention-2's algorithm; CPU twin and the math:
// src/backend/cpu/kernels/flash.rs). Never materialises the [T, T] scores: the forward keeps per row a
// running max m, sum l and output accumulator, and saves only lse = m + ln l [B, NH, T]; the
// backward recomputes P_ij = exp(scale q_i.k_j - lse_i).
//
// Layouts: qkv [B, T, 3C] (q | k | v, head h at channels h*hd ..), out and dout [B, T, C],
// dqkv [B, T, 3C]. Grid: (ceil(T / FA_ROWS), B*NH). A block handles FA_ROWS rows (query rows in
// the forward and dq, key rows in dk/dv); `tpr` consecutive threads share a row, thread r of the
// group owning channels r, r + tpr, ... (at most FA_CH each, so hd <= 16 * tpr <= 128). Tiles of
// FA_TILE key (or query) rows are staged in shared memory. Dot products are summed over the
// group with warp shuffles that every thread executes (masking happens after them).

#define FA_ROWS 64
#define FA_TILE 32
#define FA_CH 16
#define FA_HD_MAX 128
// Most threads per block (FA_ROWS rows of at most 8 threads). Declared to the compiler so it
// keeps every tiled kernel within the registers a 512-thread block may use (65,536 per SM):
// without it ptxas gives flash_attn_backward_dkv 135 registers for sm_90, and a 512-thread
// launch (head size 65..128) fails with "too many resources requested for launch".
#define FA_THREADS_MAX (FA_ROWS * 8)

// Sum of x over the tpr threads of a group (tpr a power of two <= 8). Every thread of the
// warp must call it.
__device__ __forceinline__ float fa_group_sum(float x, int tpr) {
    for (int o = tpr >> 1; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Loads FA_TILE rows (from row0) of part `part` (0 q, 1 k, 2 v) of head h into dst; rows past
// T are zero. `rowlen` is the row stride of src in floats.
__device__ __forceinline__ void fa_load_tile(float (*dst)[FA_HD_MAX], const float* src,
                                             int row0, int T, int hd, long rowlen) {
    for (int e = threadIdx.x; e < FA_TILE * hd; e += blockDim.x) {
        int rr = e / hd, c = e % hd;
        int row = row0 + rr;
        dst[rr][c] = row < T ? src[(long)row * rowlen + c] : 0.0f;
    }
}

// Forward: out [B, T, C] and lse [B, NH, T] from qkv.
extern "C" __global__ void __launch_bounds__(FA_THREADS_MAX) flash_attn_forward(const float* qkv, float* out, float* lse, int T,
                                              int C, int NH, int tpr, float scale) {
    __shared__ float ks[FA_TILE][FA_HD_MAX];
    __shared__ float vs[FA_TILE][FA_HD_MAX];
    const int hd = C / NH;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int r = threadIdx.x % tpr;
    const int i = blockIdx.x * FA_ROWS + threadIdx.x / tpr;
    const bool valid = i < T;
    const long row3 = 3L * C;
    const float* base = qkv + (long)b * T * row3 + (long)h * hd;
    float q[FA_CH], acc[FA_CH];
#pragma unroll
    for (int u = 0; u < FA_CH; u++) {
        int c = r + tpr * u;
        q[u] = (valid && c < hd) ? base[(long)i * row3 + c] : 0.0f;
        acc[u] = 0.0f;
    }
    float m = __int_as_float(0xff800000), l = 0.0f;  // -inf
    const int last = min(T - 1, (int)blockIdx.x * FA_ROWS + FA_ROWS - 1);
    for (int j0 = 0; j0 <= last; j0 += FA_TILE) {
        __syncthreads();
        fa_load_tile(ks, base + C, j0, T, hd, row3);
        fa_load_tile(vs, base + 2 * C, j0, T, hd, row3);
        __syncthreads();
        for (int jj = 0; jj < FA_TILE; jj++) {
            float part = 0.0f;
#pragma unroll
            for (int u = 0; u < FA_CH; u++) {
                int c = r + tpr * u;
                if (c < hd) part += q[u] * ks[jj][c];
            }
            float s = fa_group_sum(part, tpr) * scale;
            if (valid && j0 + jj <= i) {
                if (s > m) {
                    float corr = expf(m - s);
                    l *= corr;
#pragma unroll
                    for (int u = 0; u < FA_CH; u++) acc[u] *= corr;
                    m = s;
                }
                float p = expf(s - m);
                l += p;
#pragma unroll
                for (int u = 0; u < FA_CH; u++) {
                    int c = r + tpr * u;
                    if (c < hd) acc[u] += p * vs[jj][c];
                }
            }
        }
    }
    if (!valid) return;
    float* o = out + ((long)b * T + i) * C + (long)h * hd;
#pragma unroll
    for (int u = 0; u < FA_CH; u++) {
        int c = r + tpr * u;
        if (c < hd) o[c] = acc[u] / l;
    }
    if (r == 0) lse[(long)bh * T + i] = m + logf(l);
}

// D_i = dout_i . out_i per (b, h, i): dd [B, NH, T]. One thread per row.
extern "C" __global__ void flash_attn_backward_dot(const float* dout, const float* out,
                                                   float* dd, int B, int T, int C, int NH) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * NH * T) return;
    const int hd = C / NH;
    const int i = idx % T;
    const long bh = idx / T;
    const long b = bh / NH, h = bh % NH;
    const long o = (b * T + i) * C + h * hd;
    float s = 0.0f;
    for (int c = 0; c < hd; c++) s += dout[o + c] * out[o + c];
    dd[idx] = s;
}

// dq_i = scale * sum_{j<=i} P_ij (dout_i . v_j - D_i) k_j, written to the q part of dqkv.
extern "C" __global__ void __launch_bounds__(FA_THREADS_MAX) flash_attn_backward_dq(const float* qkv, const float* dout,
                                                  const float* lse, const float* dd,
                                                  float* dqkv, int T, int C, int NH, int tpr,
                                                  float scale) {
    __shared__ float ks[FA_TILE][FA_HD_MAX];
    __shared__ float vs[FA_TILE][FA_HD_MAX];
    const int hd = C / NH;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int r = threadIdx.x % tpr;
    const int i = blockIdx.x * FA_ROWS + threadIdx.x / tpr;
    const bool valid = i < T;
    const long row3 = 3L * C;
    const float* base = qkv + (long)b * T * row3 + (long)h * hd;
    const float* dy = dout + ((long)b * T + (valid ? i : 0)) * C + (long)h * hd;
    float q[FA_CH], g[FA_CH], acc[FA_CH];
#pragma unroll
    for (int u = 0; u < FA_CH; u++) {
        int c = r + tpr * u;
        bool in = valid && c < hd;
        q[u] = in ? base[(long)i * row3 + c] : 0.0f;
        g[u] = in ? dy[c] : 0.0f;
        acc[u] = 0.0f;
    }
    const float L = valid ? lse[(long)bh * T + i] : 0.0f;
    const float D = valid ? dd[(long)bh * T + i] : 0.0f;
    const int last = min(T - 1, (int)blockIdx.x * FA_ROWS + FA_ROWS - 1);
    for (int j0 = 0; j0 <= last; j0 += FA_TILE) {
        __syncthreads();
        fa_load_tile(ks, base + C, j0, T, hd, row3);
        fa_load_tile(vs, base + 2 * C, j0, T, hd, row3);
        __syncthreads();
        for (int jj = 0; jj < FA_TILE; jj++) {
            float ps = 0.0f, pd = 0.0f;
#pragma unroll
            for (int u = 0; u < FA_CH; u++) {
                int c = r + tpr * u;
                if (c < hd) {
                    ps += q[u] * ks[jj][c];
                    pd += g[u] * vs[jj][c];
                }
            }
            float s = fa_group_sum(ps, tpr) * scale;
            float dp = fa_group_sum(pd, tpr);
            if (valid && j0 + jj <= i) {
                float p = expf(s - L);
                float ds = p * (dp - D);
#pragma unroll
                for (int u = 0; u < FA_CH; u++) {
                    int c = r + tpr * u;
                    if (c < hd) acc[u] += ds * ks[jj][c];
                }
            }
        }
    }
    if (!valid) return;
    float* o = dqkv + ((long)b * T + i) * row3 + (long)h * hd;
#pragma unroll
    for (int u = 0; u < FA_CH; u++) {
        int c = r + tpr * u;
        if (c < hd) o[c] = acc[u] * scale;
    }
}

// dk_j = scale * sum_{i>=j} dS_ij q_i and dv_j = sum_{i>=j} P_ij dout_i, written to the k and v
// parts of dqkv. A block's rows are key rows; query tiles run from the block's first key row.
extern "C" __global__ void __launch_bounds__(FA_THREADS_MAX) flash_attn_backward_dkv(const float* qkv, const float* dout,
                                                   const float* lse, const float* dd,
                                                   float* dqkv, int T, int C, int NH, int tpr,
                                                   float scale) {
    __shared__ float qs[FA_TILE][FA_HD_MAX];
    __shared__ float gs[FA_TILE][FA_HD_MAX];
    __shared__ float ls[FA_TILE];
    __shared__ float ds_[FA_TILE];
    const int hd = C / NH;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int r = threadIdx.x % tpr;
    const int first = blockIdx.x * FA_ROWS;
    const int j = first + threadIdx.x / tpr;
    const bool valid = j < T;
    const long row3 = 3L * C;
    const float* base = qkv + (long)b * T * row3 + (long)h * hd;
    const float* dyb = dout + (long)b * T * C + (long)h * hd;
    float k[FA_CH], v[FA_CH], dk[FA_CH], dv[FA_CH];
#pragma unroll
    for (int u = 0; u < FA_CH; u++) {
        int c = r + tpr * u;
        bool in = valid && c < hd;
        k[u] = in ? base[(long)j * row3 + C + c] : 0.0f;
        v[u] = in ? base[(long)j * row3 + 2 * C + c] : 0.0f;
        dk[u] = 0.0f;
        dv[u] = 0.0f;
    }
    for (int i0 = first; i0 < T; i0 += FA_TILE) {
        __syncthreads();
        fa_load_tile(qs, base, i0, T, hd, row3);
        fa_load_tile(gs, dyb, i0, T, hd, C);
        for (int e = threadIdx.x; e < FA_TILE; e += blockDim.x) {
            int i = i0 + e;
            ls[e] = i < T ? lse[(long)bh * T + i] : 0.0f;
            ds_[e] = i < T ? dd[(long)bh * T + i] : 0.0f;
        }
        __syncthreads();
        for (int ii = 0; ii < FA_TILE; ii++) {
            float ps = 0.0f, pd = 0.0f;
#pragma unroll
            for (int u = 0; u < FA_CH; u++) {
                int c = r + tpr * u;
                if (c < hd) {
                    ps += qs[ii][c] * k[u];
                    pd += gs[ii][c] * v[u];
                }
            }
            float s = fa_group_sum(ps, tpr) * scale;
            float dp = fa_group_sum(pd, tpr);
            int i = i0 + ii;
            if (valid && i >= j && i < T) {
                float p = expf(s - ls[ii]);
                float dsv = p * (dp - ds_[ii]);
#pragma unroll
                for (int u = 0; u < FA_CH; u++) {
                    int c = r + tpr * u;
                    if (c < hd) {
                        dk[u] += dsv * qs[ii][c];
                        dv[u] += p * gs[ii][c];
                    }
                }
            }
        }
    }
    if (!valid) return;
    float* o = dqkv + ((long)b * T + j) * row3 + (long)h * hd;
#pragma unroll
    for (int u = 0; u < FA_CH; u++) {
        int c = r + tpr * u;
        if (c < hd) {
            o[C + c] = dk[u] * scale;
            o[2 * C + c] = dv[u];
        }
    }
}
