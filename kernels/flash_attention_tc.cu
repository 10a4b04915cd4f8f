// Flash attention on tensor cores: bf16 operands with fp32 accumulation (WMMA 16x16x16), the
// algorithm, layouts and saved lse of flash_attention.cu (the math: src/backend/cpu/kernels/flash.rs).
// Used with train.precision = "bf16" for head sizes that are multiples of 16 up to TC_HD (every
// GPT-2 size has 64).
//
// Roundings, as PyTorch's bf16 attention: q, k, v and dout are rounded to bf16 when staged, P
// and dS before their products; scores, softmax statistics, accumulators and outputs are fp32.
//
// A block has 4 warps (128 threads) and TC_ROWS = 64 rows, warp w owning rows 16w .. 16w+15
// (query rows in the forward and dq, key rows in dk/dv); tiles of TC_TILE = 32 key (or query)
// rows are staged in shared memory. Grid: (ceil(T / 64), B*NH). Fragments only go through the
// WMMA calls (their layout is the hardware's); per-row work on scores goes through shared
// memory, each row handled by a pair of lanes (2r, 2r+1), one half of the columns each.

#ifndef FERROTRON_EMU
#include <cuda_bf16.h>
#include <mma.h>
#endif
using namespace nvcuda;

#define TC_ROWS 64
#define TC_TILE 32
#define TC_HD 64
#define TC_LDB (TC_HD + 8)    // bf16 row stride of staged tiles (WMMA: a multiple of 8)
#define TC_LDS (TC_TILE + 4)  // float row stride of a warp's score tile (a multiple of 4)
#define TC_LDP (TC_TILE + 8)  // bf16 row stride of a warp's P / dS tile
#define TC_LDO (TC_HD + 4)    // float row stride of output accumulators and staging

typedef __nv_bfloat16 tc_bf16;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, tc_bf16, wmma::row_major> tc_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, tc_bf16, wmma::row_major> tc_b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, tc_bf16, wmma::col_major> tc_b_col;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> tc_c;

// Bytes of shared memory regions (multiples of 128, so every region starts 128-byte aligned).
#define TC_TILE_B (TC_TILE * TC_LDB * 2)  // a staged [TC_TILE, hd] bf16 tile
#define TC_BLOCK_B (TC_ROWS * TC_LDB * 2) // a staged [TC_ROWS, hd] bf16 tile
#define TC_S_B (4 * 16 * TC_LDS * 4)      // the warps' [16, TC_TILE] float tiles
#define TC_P_B (4 * 16 * TC_LDP * 2)      // the warps' [16, TC_TILE] bf16 tiles
#define TC_O_B (TC_ROWS * TC_LDO * 4)     // [TC_ROWS, hd] float accumulators / staging
#define TC_VEC_B 128                      // TC_TILE floats
// Static shared memory is limited to 48 KB; the dk/dv kernel (the largest) uses 47,360 bytes.
static_assert(2 * TC_TILE_B + 2 * TC_VEC_B + 2 * TC_S_B + 2 * TC_P_B + TC_BLOCK_B <= 48 * 1024,
              "flash_tc_backward_dkv: static shared memory over 48 KB");

// dst[rr][c] (row stride TC_LDB) = bf16(src[row0 + rr][c]) for rr < rows, c < hd; rows past T
// are zero. `rowlen` is src's row stride in floats.
__device__ __forceinline__ void tc_stage(tc_bf16* dst, const float* src, int row0, int rows,
                                         int T, int hd, long rowlen) {
    for (int e = threadIdx.x; e < rows * hd; e += blockDim.x) {
        int rr = e / hd, c = e % hd, row = row0 + rr;
        dst[rr * TC_LDB + c] = __float2bfloat16(row < T ? src[(long)row * rowlen + c] : 0.0f);
    }
}

// The warp's 16 rows of src rows row0 .. row0 + TC_ROWS as hd/16 A fragments, staged as bf16
// through `st` [TC_ROWS, TC_LDB] (free again on return).
__device__ __forceinline__ void tc_rows_to_frags(tc_a* f, tc_bf16* st, const float* src, int row0,
                                                 int T, int hd, long rowlen, int warp) {
    tc_stage(st, src, row0, TC_ROWS, T, hd, rowlen);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TC_HD / 16; kk++)
        if (kk < hd / 16) wmma::load_matrix_sync(f[kk], st + (warp * 16) * TC_LDB + kk * 16, TC_LDB);
    __syncthreads();
}

// Stages the key and value tiles of key rows j0 .. j0 + TC_TILE (after every warp is done with
// the previous ones).
__device__ __forceinline__ void tc_stage_kv(tc_bf16* ks, tc_bf16* vs, const float* base, int j0,
                                            int T, int C, int hd) {
    __syncthreads();
    tc_stage(ks, base + C, j0, TC_TILE, T, hd, 3L * C);
    tc_stage(vs, base + 2 * C, j0, TC_TILE, T, hd, 3L * C);
    __syncthreads();
}

// dst [16, TC_TILE] (stride TC_LDS) = A [16, hd] . tile^T, tile = [TC_TILE, hd] staged rows.
__device__ __forceinline__ void tc_times_tile_t(float* dst, const tc_a* a, const tc_bf16* tile,
                                                int hd) {
    for (int c = 0; c < TC_TILE / 16; c++) {
        tc_c s;
        wmma::fill_fragment(s, 0.0f);
#pragma unroll
        for (int kk = 0; kk < TC_HD / 16; kk++) {
            if (kk >= hd / 16) break;
            tc_b_col b;
            wmma::load_matrix_sync(b, tile + (c * 16) * TC_LDB + kk * 16, TC_LDB);
            wmma::mma_sync(s, a[kk], b, s);
        }
        wmma::store_matrix_sync(dst + c * 16, s, TC_LDS, wmma::mem_row_major);
    }
}

// acc[n] += P [16, TC_TILE] (stride TC_LDP) . tile [TC_TILE, hd], for the hd/16 column blocks.
__device__ __forceinline__ void tc_acc_p_tile(tc_c* acc, const tc_bf16* p, const tc_bf16* tile,
                                              int hd) {
#pragma unroll
    for (int n = 0; n < TC_HD / 16; n++) {
        if (n >= hd / 16) break;
#pragma unroll
        for (int kk = 0; kk < TC_TILE / 16; kk++) {
            tc_a a;
            tc_b_row b;
            wmma::load_matrix_sync(a, p + kk * 16, TC_LDP);
            wmma::load_matrix_sync(b, tile + (kk * 16) * TC_LDB + n * 16, TC_LDB);
            wmma::mma_sync(acc[n], a, b, acc[n]);
        }
    }
}

// Writes the warp's accumulators acc [16, hd] to rows `first + r` of dst (row stride `rowlen`),
// through the float staging `o` [TC_ROWS, TC_LDO]; rows at or past T are skipped.
__device__ __forceinline__ void tc_write_rows(float* dst, long rowlen, const tc_c* acc, float* o,
                                              int warp, int lane, int first, int T, int hd) {
#pragma unroll
    for (int n = 0; n < TC_HD / 16; n++)
        if (n < hd / 16)
            wmma::store_matrix_sync(o + (warp * 16) * TC_LDO + n * 16, acc[n], TC_LDO,
                                    wmma::mem_row_major);
    __syncwarp();
    const int r = lane / 2, half = lane % 2, row = first + r;
    if (row < T)
        for (int c = half * (hd / 2); c < (half + 1) * (hd / 2); c++)
            dst[(long)row * rowlen + c] = o[(warp * 16 + r) * TC_LDO + c];
    __syncwarp();
}

// Indices of a thread: block (row block, batch b, head h), warp and lane; `mine` = row0 +
// 16·warp + lane/2, the row this lane pair handles; base / dbase: head h of batch b in qkv
// (row stride 3C) and dout (row stride C).
struct tc_idx {
    int hd, bh, b, h, warp, lane, r, half, row0, mine;
    long row3;
    const float* base;
    const float* dbase;
};
__device__ __forceinline__ tc_idx tc_index(const float* qkv, const float* dout, int T, int C,
                                           int NH) {
    tc_idx x;
    x.hd = C / NH;
    x.bh = blockIdx.y;
    x.b = x.bh / NH;
    x.h = x.bh % NH;
    x.warp = threadIdx.x / 32;
    x.lane = threadIdx.x % 32;
    x.r = x.lane / 2;
    x.half = x.lane % 2;
    x.row0 = blockIdx.x * TC_ROWS;
    x.mine = x.row0 + x.warp * 16 + x.r;
    x.row3 = 3L * C;
    x.base = qkv + (long)x.b * T * x.row3 + (long)x.h * x.hd;
    x.dbase = dout ? dout + (long)x.b * T * C + (long)x.h * x.hd : nullptr;
    return x;
}

// Forward: out [B, T, C] and lse [B, NH, T] from qkv [B, T, 3C].
extern "C" __global__ void __launch_bounds__(128)
    flash_tc_forward(const float* qkv, float* out, float* lse, int T, int C, int NH, float scale) {
    __shared__ __align__(128) unsigned char sm[2 * TC_TILE_B + TC_S_B + TC_P_B + TC_O_B];
    tc_bf16* ks = (tc_bf16*)sm;
    tc_bf16* vs = (tc_bf16*)(sm + TC_TILE_B);
    float* sc = (float*)(sm + 2 * TC_TILE_B);
    tc_bf16* pb = (tc_bf16*)(sm + 2 * TC_TILE_B + TC_S_B);
    float* os = (float*)(sm + 2 * TC_TILE_B + TC_S_B + TC_P_B);  // O; first stages q
    const tc_idx x = tc_index(qkv, nullptr, T, C, NH);
    const int hd = x.hd, bh = x.bh, b = x.b, h = x.h, warp = x.warp, r = x.r, half = x.half;
    const int row0 = x.row0, i = x.mine;
    const long row3 = x.row3;
    const float* base = x.base;
    tc_a qa[TC_HD / 16];
    tc_rows_to_frags(qa, (tc_bf16*)os, base, row0, T, hd, row3, warp);
    for (int e = threadIdx.x; e < TC_ROWS * TC_LDO; e += blockDim.x) os[e] = 0.0f;
    float* sw = sc + warp * 16 * TC_LDS;
    tc_bf16* pw = pb + warp * 16 * TC_LDP;
    float* orow = os + (warp * 16 + r) * TC_LDO;
    const float ninf = __int_as_float(0xff800000);
    float m = ninf, l = 0.0f;
    const int last = min(T - 1, row0 + TC_ROWS - 1);
    for (int j0 = 0; j0 <= last; j0 += TC_TILE) {
        tc_stage_kv(ks, vs, base, j0, T, C, hd);
        tc_times_tile_t(sw, qa, ks, hd);
        __syncwarp();
        // Online softmax of row i over this lane's 16 keys; key 0 is in the first tile, so m is
        // finite from then on and a fully masked later tile leaves m and l unchanged.
        float x[16], tmax = ninf;
#pragma unroll
        for (int u = 0; u < 16; u++) {
            int jj = half * 16 + u, j = j0 + jj;
            x[u] = (j <= i && j < T) ? sw[r * TC_LDS + jj] * scale : ninf;
            tmax = fmaxf(tmax, x[u]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        // A row with no key yet (only padding rows past T) keeps m = -inf: exponents relative
        // to 0 then give 0, not exp(-inf + inf) = NaN.
        const float mn = fmaxf(m, tmax), mref = mn == ninf ? 0.0f : mn;
        const float alpha = expf(m - mref);
        float sum = 0.0f;
#pragma unroll
        for (int u = 0; u < 16; u++) {
            float p = expf(x[u] - mref);
            sum += p;
            pw[r * TC_LDP + half * 16 + u] = __float2bfloat16(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * alpha + sum;
        m = mn;
        for (int c = half * (hd / 2); c < (half + 1) * (hd / 2); c++) orow[c] *= alpha;
        __syncwarp();
        // O += P V for the warp's rows (accumulators round-trip through shared memory, where
        // the rescaling above reached them).
        for (int n = 0; n < hd / 16; n++) {
            tc_c o;
            float* ot = os + (warp * 16) * TC_LDO + n * 16;
            wmma::load_matrix_sync(o, ot, TC_LDO, wmma::mem_row_major);
            for (int kk = 0; kk < TC_TILE / 16; kk++) {
                tc_a a;
                tc_b_row v;
                wmma::load_matrix_sync(a, pw + kk * 16, TC_LDP);
                wmma::load_matrix_sync(v, vs + (kk * 16) * TC_LDB + n * 16, TC_LDB);
                wmma::mma_sync(o, a, v, o);
            }
            wmma::store_matrix_sync(ot, o, TC_LDO, wmma::mem_row_major);
        }
        __syncwarp();
    }
    if (i < T) {
        float* o = out + ((long)b * T + i) * C + (long)h * hd;
        for (int c = half * (hd / 2); c < (half + 1) * (hd / 2); c++) o[c] = orow[c] / l;
        if (half == 0) lse[(long)bh * T + i] = m + logf(l);
    }
}

// dq_i = scale * sum_{j<=i} P_ij (dout_i . v_j - D_i) k_j into the q part of dqkv.
extern "C" __global__ void __launch_bounds__(128)
    flash_tc_backward_dq(const float* qkv, const float* dout, const float* lse, const float* dd,
                         float* dqkv, int T, int C, int NH, float scale) {
    __shared__ __align__(128) unsigned char sm[2 * TC_TILE_B + 2 * TC_S_B + TC_P_B + TC_BLOCK_B];
    tc_bf16* ks = (tc_bf16*)sm;
    tc_bf16* vs = (tc_bf16*)(sm + TC_TILE_B);
    float* sc = (float*)(sm + 2 * TC_TILE_B);
    float* dp = (float*)(sm + 2 * TC_TILE_B + TC_S_B);
    tc_bf16* gb = (tc_bf16*)(sm + 2 * TC_TILE_B + 2 * TC_S_B);
    tc_bf16* st = (tc_bf16*)(sm + 2 * TC_TILE_B + 2 * TC_S_B + TC_P_B);
    const tc_idx x = tc_index(qkv, dout, T, C, NH);
    const int hd = x.hd, bh = x.bh, b = x.b, h = x.h, warp = x.warp, lane = x.lane, r = x.r;
    const int half = x.half, row0 = x.row0, i = x.mine;
    const long row3 = x.row3;
    const float *base = x.base, *dbase = x.dbase;
    tc_a qa[TC_HD / 16], da[TC_HD / 16];
    tc_rows_to_frags(qa, st, base, row0, T, hd, row3, warp);
    tc_rows_to_frags(da, st, dbase, row0, T, hd, C, warp);
    tc_c dq[TC_HD / 16];
#pragma unroll
    for (int n = 0; n < TC_HD / 16; n++) wmma::fill_fragment(dq[n], 0.0f);
    const bool valid = i < T;
    const float li = valid ? lse[(long)bh * T + i] : 0.0f, di = valid ? dd[(long)bh * T + i] : 0.0f;
    float* sw = sc + warp * 16 * TC_LDS;
    float* dw = dp + warp * 16 * TC_LDS;
    tc_bf16* gw = gb + warp * 16 * TC_LDP;
    const int last = min(T - 1, row0 + TC_ROWS - 1);
    for (int j0 = 0; j0 <= last; j0 += TC_TILE) {
        tc_stage_kv(ks, vs, base, j0, T, C, hd);
        tc_times_tile_t(sw, qa, ks, hd);  // S = Q K^T
        tc_times_tile_t(dw, da, vs, hd);  // dP = dout V^T
        __syncwarp();
#pragma unroll
        for (int u = 0; u < 16; u++) {
            int jj = half * 16 + u, j = j0 + jj;
            float p = (valid && j <= i && j < T) ? expf(sw[r * TC_LDS + jj] * scale - li) : 0.0f;
            gw[r * TC_LDP + jj] = __float2bfloat16(p * (dw[r * TC_LDS + jj] - di) * scale);
        }
        __syncwarp();
        tc_acc_p_tile(dq, gw, ks, hd);  // dq += dS K
    }
    __syncthreads();  // the staging below reuses the tiles
    tc_write_rows(dqkv + (long)b * T * row3 + (long)h * hd, row3, dq, (float*)sm, warp, lane,
                  row0 + warp * 16, T, hd);
}

// dk_j = scale * sum_{i>=j} dS_ij q_i and dv_j = sum_{i>=j} P_ij dout_i into the k and v parts
// of dqkv. A block's rows are key rows; query tiles run from the block's first key row.
extern "C" __global__ void __launch_bounds__(128)
    flash_tc_backward_dkv(const float* qkv, const float* dout, const float* lse, const float* dd,
                          float* dqkv, int T, int C, int NH, float scale) {
    __shared__ __align__(128) unsigned char
        sm[2 * TC_TILE_B + 2 * TC_VEC_B + 2 * TC_S_B + 2 * TC_P_B + TC_BLOCK_B];
    tc_bf16* qs = (tc_bf16*)sm;
    tc_bf16* gs = (tc_bf16*)(sm + TC_TILE_B);  // dout tile
    float* ls = (float*)(sm + 2 * TC_TILE_B);
    float* dl = (float*)(sm + 2 * TC_TILE_B + TC_VEC_B);
    unsigned char* rest = sm + 2 * TC_TILE_B + 2 * TC_VEC_B;
    float* sc = (float*)rest;                                  // S^T
    float* dp = (float*)(rest + TC_S_B);                       // dP^T
    tc_bf16* pb = (tc_bf16*)(rest + 2 * TC_S_B);               // P^T
    tc_bf16* gb = (tc_bf16*)(rest + 2 * TC_S_B + TC_P_B);      // dS^T
    tc_bf16* st = (tc_bf16*)(rest + 2 * TC_S_B + 2 * TC_P_B);  // stages k, v
    const tc_idx x = tc_index(qkv, dout, T, C, NH);
    const int hd = x.hd, bh = x.bh, b = x.b, h = x.h, warp = x.warp, lane = x.lane, r = x.r;
    const int half = x.half, row0 = x.row0, j = x.mine;
    const long row3 = x.row3;
    const float *base = x.base, *dbase = x.dbase;
    tc_a ka[TC_HD / 16], va[TC_HD / 16];
    tc_rows_to_frags(ka, st, base + C, row0, T, hd, row3, warp);
    tc_rows_to_frags(va, st, base + 2 * C, row0, T, hd, row3, warp);
    tc_c dk[TC_HD / 16], dv[TC_HD / 16];
#pragma unroll
    for (int n = 0; n < TC_HD / 16; n++) {
        wmma::fill_fragment(dk[n], 0.0f);
        wmma::fill_fragment(dv[n], 0.0f);
    }
    float* sw = sc + warp * 16 * TC_LDS;
    float* dw = dp + warp * 16 * TC_LDS;
    tc_bf16* pw = pb + warp * 16 * TC_LDP;
    tc_bf16* gw = gb + warp * 16 * TC_LDP;
    for (int i0 = row0; i0 < T; i0 += TC_TILE) {
        __syncthreads();
        tc_stage(qs, base, i0, TC_TILE, T, hd, row3);
        tc_stage(gs, dbase, i0, TC_TILE, T, hd, C);
        for (int e = threadIdx.x; e < TC_TILE; e += blockDim.x) {
            bool in = i0 + e < T;
            ls[e] = in ? lse[(long)bh * T + i0 + e] : 0.0f;
            dl[e] = in ? dd[(long)bh * T + i0 + e] : 0.0f;
        }
        __syncthreads();
        tc_times_tile_t(sw, ka, qs, hd);  // S^T = K Q^T
        tc_times_tile_t(dw, va, gs, hd);  // dP^T = V dout^T
        __syncwarp();
#pragma unroll
        for (int u = 0; u < 16; u++) {
            int qq = half * 16 + u, q = i0 + qq;
            float p = (j < T && q >= j && q < T) ? expf(sw[r * TC_LDS + qq] * scale - ls[qq]) : 0.0f;
            pw[r * TC_LDP + qq] = __float2bfloat16(p);
            gw[r * TC_LDP + qq] = __float2bfloat16(p * (dw[r * TC_LDS + qq] - dl[qq]) * scale);
        }
        __syncwarp();
        tc_acc_p_tile(dv, pw, gs, hd);  // dv += P^T dout
        tc_acc_p_tile(dk, gw, qs, hd);  // dk += dS^T Q
    }
    __syncthreads();  // the staging below reuses the tiles
    float* kout = dqkv + (long)b * T * row3 + C + (long)h * hd;
    tc_write_rows(kout, row3, dk, (float*)sm, warp, lane, row0 + warp * 16, T, hd);
    tc_write_rows(kout + C, row3, dv, (float*)sm, warp, lane, row0 + warp * 16, T, hd);
}
