// Token + position embedding (CPU twin: src/backend/cpu/kernels/embedding.rs).
// Shapes: tok [N = B*T] int32, wte [Vp, C], wpe [P, C], out/dout [N, C]. fp32.

// out[i, c] = wte[tok[i], c] + wpe[i % T, c]. One thread per output element.
extern "C" __global__ void embedding_forward(float* out, const int* tok, const float* wte,
                                             const float* wpe, int N, int T, int C) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long total = (long)N * C;
    if (idx >= total) return;
    int i = (int)(idx / C);
    int c = (int)(idx % C);
    int t = i % T;
    out[idx] = wte[(long)tok[i] * C + c] + wpe[(long)t * C + c];
}

// dwpe[t, c] += dout[b*T + t, c] for b = 0..B in order (one thread per (t, c)).
extern "C" __global__ void embedding_backward_wpe(float* dwpe, const float* dout, int B, int T,
                                                  int C) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)T * C) return;
    float acc = dwpe[idx];
    for (int b = 0; b < B; b++) {
        acc += dout[(long)b * T * C + idx];
    }
    dwpe[idx] = acc;
}

// Rows grouped by token id on the host (counting sort, as the CPU twin): segment s covers
// order[seg_start[s] .. seg_start[s+1]], all with token id seg_token[s]. One block per segment,
// threads over channels; rows are added in order into dwte[seg_token[s], c] (deterministic,
// same rounding as the CPU twin). No two segments share a token id, so no atomics.
extern "C" __global__ void embedding_backward_wte(float* dwte, const float* dout,
                                                  const int* order, const int* seg_start,
                                                  const int* seg_token, int num_segs, int C) {
    int s = blockIdx.x;
    if (s >= num_segs) return;
    int r0 = seg_start[s];
    int r1 = seg_start[s + 1];
    float* dst = dwte + (long)seg_token[s] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = dst[c];
        for (int r = r0; r < r1; r++) {
            acc += dout[(long)order[r] * C + c];
        }
        dst[c] = acc;
    }
}
