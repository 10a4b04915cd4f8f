// The non-GEMM parts of causal self-attention (CPU twin: src/backend/cpu/kernels/attention.rs); the
// GEMMs (S = Q K^T, Y = P V and their backward) are cuBLASLt strided-batched calls over the
// BH = B * NH heads. fp32. Layouts: qkv, dqkv [B, T, 3C] (q | k | v per position, head h at
// channels h*hd..); per-head tensors [B, NH, T, hd]; scores/probabilities [BH, T, T].

// -inf without <math.h> (NVRTC has no INFINITY macro).
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// qkv [B, T, 3C] -> q, k, v [B, NH, T, hd]; one thread per element of q.
extern "C" __global__ void attn_split_qkv(float* q, float* k, float* v, const float* qkv, int B,
                                          int T, int C, int NH) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * C) return;
    int hd = C / NH;
    int d = (int)(idx % hd);
    int t = (int)((idx / hd) % T);
    int h = (int)((idx / ((long)hd * T)) % NH);
    long b = idx / ((long)hd * T * NH);
    long src = (b * T + t) * 3L * C + (long)h * hd + d;
    q[idx] = qkv[src];
    k[idx] = qkv[src + C];
    v[idx] = qkv[src + 2L * C];
}

// y [B, NH, T, hd] -> out [B, T, C]; one thread per element of out.
extern "C" __global__ void attn_merge_heads(float* out, const float* y, int B, int T, int C,
                                            int NH) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * C) return;
    int hd = C / NH;
    int c = (int)(idx % C);
    long bt = idx / C;
    long b = bt / T;
    int t = (int)(bt % T);
    int h = c / hd, d = c % hd;
    out[idx] = y[((b * NH + h) * T + t) * hd + d];
}

// The inverse of attn_merge_heads: x [B, T, C] -> yh [B, NH, T, hd] (used for dY in the
// backward pass); one thread per element of x.
extern "C" __global__ void attn_split_heads(float* yh, const float* x, int B, int T, int C,
                                            int NH) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * C) return;
    int hd = C / NH;
    int c = (int)(idx % C);
    long bt = idx / C;
    long b = bt / T;
    int t = (int)(bt % T);
    int h = c / hd, d = c % hd;
    yh[((b * NH + h) * T + t) * hd + d] = x[idx];
}

// dq, dk, dv [B, NH, T, hd] -> dqkv [B, T, 3C] (overwritten); one thread per element of dqkv.
extern "C" __global__ void attn_merge_dqkv(float* dqkv, const float* dq, const float* dk,
                                           const float* dv, int B, int T, int C, int NH) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * 3 * C) return;
    int hd = C / NH;
    int k3 = (int)(idx % (3 * C));
    long bt = idx / (3 * C);
    long b = bt / T;
    int t = (int)(bt % T);
    int part = k3 / C, c = k3 % C;
    int h = c / hd, d = c % hd;
    long src = ((b * NH + h) * T + t) * hd + d;
    const float* s = part == 0 ? dq : (part == 1 ? dk : dv);
    dqkv[idx] = s[src];
}

// In place on p [BH, T, T] (raw scores S on entry): row (bh, t) becomes
// softmax(scale * S[t, 0..=t]) on s <= t and 0 on s > t. One warp per row;
// blockDim.x = 32 * rows_per_block.
extern "C" __global__ void causal_softmax_forward(float* p, int BH, int T, float scale) {
    int warps = blockDim.x / 32;
    int lane = threadIdx.x % 32;
    long row = (long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= (long)BH * T) return;
    int t = (int)(row % T);
    float* pr = p + row * T;
    float m = NEG_INF;
    for (int s = lane; s <= t; s += 32) m = fmaxf(m, pr[s] * scale);
    m = warp_max(m);
    float sum = 0.0f;
    for (int s = lane; s <= t; s += 32) {
        float e = expf(pr[s] * scale - m);
        pr[s] = e;
        sum += e;
    }
    float inv = 1.0f / warp_sum(sum);
    for (int s = lane; s <= t; s += 32) pr[s] *= inv;
    for (int s = t + 1 + lane; s < T; s += 32) pr[s] = 0.0f;
}

// In place on ds [BH, T, T] (dP on entry), p the saved probabilities:
// ds[t, s] = p[t, s] * (dP[t, s] - sum_{s' <= t} p[t, s'] dP[t, s']) * scale for s <= t, 0 above
// the diagonal. One warp per row; blockDim.x = 32 * rows_per_block.
extern "C" __global__ void causal_softmax_backward(float* ds, const float* p, int BH, int T,
                                                   float scale) {
    int warps = blockDim.x / 32;
    int lane = threadIdx.x % 32;
    long row = (long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= (long)BH * T) return;
    int t = (int)(row % T);
    float* dr = ds + row * T;
    const float* pr = p + row * T;
    float dot = 0.0f;
    for (int s = lane; s <= t; s += 32) dot += pr[s] * dr[s];
    dot = warp_sum(dot);
    for (int s = lane; s <= t; s += 32) dr[s] = pr[s] * (dr[s] - dot) * scale;
    for (int s = t + 1 + lane; s < T; s += 32) dr[s] = 0.0f;
}
