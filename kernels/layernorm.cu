// LayerNorm over the last dimension (CPU twin: src/backend/cpu/kernels/layernorm.rs), fp32.
//   y = (x - mu) * rstd * w + b,  rstd = 1 / sqrt(var + 1e-5), biased variance (two-pass).
// Shapes: x, y, dx, dy [N, C]; w, b, dw, db [C]; mean, rstd [N].

#define LN_EPS 1e-5f
// Rows per block in the backward pass = rows per dw/db partial sum (the CPU twin's
// add_column_sums uses the same 64-row chunks, so the partials round identically).
#define LN_BWD_ROWS 64

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One warp per row; blockDim.x = 32 * rows_per_block (any multiple of 32).
extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd, const float* x,
                                             const float* w, const float* b, int N, int C) {
    int warps = blockDim.x / 32;
    int lane = threadIdx.x % 32;
    long row = (long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= N) return;
    const float* xr = x + row * C;
    float s = 0.0f;
    for (int j = lane; j < C; j += 32) s += xr[j];
    float mu = warp_sum(s) / (float)C;
    float q = 0.0f;
    for (int j = lane; j < C; j += 32) {
        float d = xr[j] - mu;
        q += d * d;
    }
    float var = warp_sum(q) / (float)C;
    float rs = 1.0f / sqrtf(var + LN_EPS);
    float* o = out + row * C;
    for (int j = lane; j < C; j += 32) o[j] = (xr[j] - mu) * rs * w[j] + b[j];
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// Backward, block k owns rows [64k, 64k + 64):
//   dx += rstd * (g - mean(g) - nh * mean(g * nh)),  nh = (x - mu) rstd,  g = dy * w
//   (one warp per row), and the partial sums over its rows (threads over columns)
//   partials[k, 0:C] = sum dy * nh,  partials[k, C:2C] = sum dy.
// Grid: ceil(N / 64) blocks; partials is [grid, 2C]; reduce it into dw and db with
// column_reduce (reduce.cu).
extern "C" __global__ void layernorm_backward(float* dx, float* partials, const float* dy,
                                              const float* x, const float* w, const float* mean,
                                              const float* rstd, int N, int C) {
    int warps = blockDim.x / 32;
    int lane = threadIdx.x % 32;
    int r0 = blockIdx.x * LN_BWD_ROWS;
    int r1 = min(r0 + LN_BWD_ROWS, N);
    for (int r = r0 + threadIdx.x / 32; r < r1; r += warps) {
        const float* dyr = dy + (long)r * C;
        const float* xr = x + (long)r * C;
        float mu = mean[r], rs = rstd[r];
        float gs = 0.0f, gns = 0.0f;
        for (int j = lane; j < C; j += 32) {
            float nh = (xr[j] - mu) * rs;
            float g = dyr[j] * w[j];
            gs += g;
            gns += g * nh;
        }
        float g_mean = warp_sum(gs) / (float)C;
        float gn_mean = warp_sum(gns) / (float)C;
        float* dxr = dx + (long)r * C;
        for (int j = lane; j < C; j += 32) {
            float nh = (xr[j] - mu) * rs;
            float g = dyr[j] * w[j];
            dxr[j] += (g - g_mean - nh * gn_mean) * rs;
        }
    }
    float* pw = partials + (long)blockIdx.x * 2 * C;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float dw = 0.0f, db = 0.0f;
        for (int r = r0; r < r1; r++) {
            float d = dy[(long)r * C + j];
            dw += d * (x[(long)r * C + j] - mean[r]) * rstd[r];
            db += d;
        }
        pw[j] = dw;
        pw[C + j] = db;
    }
}
