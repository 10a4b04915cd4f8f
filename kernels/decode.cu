// Attention against a KV cache, for generation (CPU twin: src/backend/cpu/decode.rs). fp32.
// Layouts: qkv [rows, 3C] (q | k | v per row, head h at channels h*hd..), the cache
// kv [2, cap, C] (keys, then values), out [rows, C]. A sequence's new rows are positions
// start .. start + rows; they sit at rows row0 .. of qkv and out.

// -inf without <math.h> (NVRTC has no INFINITY macro).
#define DEC_NEG_INF __int_as_float(0xff800000)

// Appends the new rows' keys and values to the cache: kv[0, start + i] = k(row0 + i),
// kv[1, start + i] = v(row0 + i). One thread per element of [rows, C].
extern "C" __global__ void attn_kv_append(float* kv, const float* qkv, int row0, int rows,
                                          int start, int cap, int C) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)rows * C) return;
    long i = idx / C;
    int c = (int)(idx % C);
    const float* src = qkv + (row0 + i) * 3L * C;
    long dst = (start + i) * (long)C + c;
    kv[dst] = src[C + c];
    kv[(long)cap * C + dst] = src[2 * C + c];
}

// Reduces v over the block (blockDim.x a multiple of 32, at most 1024) with max or sum; every
// thread gets the result. `red` is 32 floats of shared memory.
__device__ __forceinline__ float dec_block_reduce(float v, bool is_max, float* red) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = red[0];
    for (int w = 1; w < warps; w++) v = is_max ? fmaxf(v, red[w]) : v + red[w];
    __syncthreads();  // red is reused by the next reduction
    return v;
}

// One block per (new row i = blockIdx.x, head h = blockIdx.y), position p = start + i:
//   out[row0 + i, h] = softmax_{s <= p}(q . k_s * scale) . v_s
// scores [rows, NH, cap] is scratch (the scores, then the unnormalised probabilities). The
// keys of positions <= p must already be in the cache (attn_kv_append first).
extern "C" __global__ void attn_cached(float* out, float* scores, const float* qkv,
                                       const float* kv, int row0, int start, int cap, int C,
                                       int NH, float scale) {
    __shared__ float red[32];
    int i = blockIdx.x, h = blockIdx.y, hd = C / NH, n = start + i + 1;
    const float* q = qkv + (long)(row0 + i) * 3 * C + h * hd;
    const float* keys = kv + h * hd;
    const float* values = kv + (long)cap * C + h * hd;
    float* sc = scores + ((long)i * NH + h) * cap;

    float m = DEC_NEG_INF;
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
        const float* k = keys + (long)s * C;
        float dot = 0.0f;
        for (int d = 0; d < hd; d++) dot += q[d] * k[d];
        sc[s] = dot * scale;
        m = fmaxf(m, sc[s]);
    }
    m = dec_block_reduce(m, true, red);

    float sum = 0.0f;
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
        float e = expf(sc[s] - m);
        sc[s] = e;
        sum += e;
    }
    // The block-wide reduction's barrier also makes every score visible to every thread.
    sum = dec_block_reduce(sum, false, red);

    float inv = 1.0f / sum;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n; s++) acc += sc[s] * values[(long)s * C + d];
        out[(long)(row0 + i) * C + h * hd + d] = acc * inv;
    }
}
