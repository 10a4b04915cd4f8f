// Runs kernels from kernels/*.cu on the CPU execution model of cuda_emu.h, launched exactly as
// the Rust launchers launch them, reading inputs from and writing outputs to raw files in a
// directory (little-endian f32 / i32 / i64). Driven by tests/kernel_emu.rs, which compares the
// outputs with the CPU twins.
//   harness flash B T C NH DIR      qkv, dout -> out, lse, dqkv
//   harness flashtc B T C NH DIR    the same with the tensor-core (WMMA, bf16) kernels
//   harness vp N T C VL V0 V DIR    rows, wte, wpe, z, targets, ms -> emb, stats, zgrad
//   harness adamw N CHUNKS DIR      p, g, m, v, table, scalars -> p, m, v
//   harness decode ROW0 ROWS START CAP C NH DIR   qkv, kv, out -> kv, out
#include "cuda_emu.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "../../kernels/adamw.cu"
#include "../../kernels/decode.cu"
#include "../../kernels/flash_attention.cu"
#include "../../kernels/flash_attention_tc.cu"
#include "../../kernels/vocab_parallel.cu"

template <class T>
static std::vector<T> load(const std::string& path, size_t n) {
    std::vector<T> v(n);
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f || std::fread(v.data(), sizeof(T), n, f) != n) {
        std::fprintf(stderr, "cannot read %zu values from %s\n", n, path.c_str());
        std::exit(2);
    }
    std::fclose(f);
    return v;
}

template <class T>
static void save(const std::string& path, const std::vector<T>& v) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        std::exit(2);
    }
    std::fclose(f);
}

static int flash(int B, int T, int C, int NH, const std::string& d) {
    const int hd = C / NH;
    int tpr = 1;
    while (tpr * 16 < hd) tpr *= 2;
    const float scale = 1.0f / std::sqrt((float)hd);
    const size_t n = (size_t)B * T * C, rows = (size_t)B * NH * T;
    auto qkv = load<float>(d + "/qkv", 3 * n);
    auto dout = load<float>(d + "/dout", n);
    std::vector<float> out(n, NAN), lse(rows, NAN), dd(rows, NAN), dqkv(3 * n, NAN);
    const unsigned gx = (T + FA_ROWS - 1) / FA_ROWS, gy = B * NH, bx = FA_ROWS * tpr;
    emu_launch(gx, gy, bx, [&] {
        flash_attn_forward(qkv.data(), out.data(), lse.data(), T, C, NH, tpr, scale);
    });
    emu_launch((rows + 255) / 256, 1, 256, [&] {
        flash_attn_backward_dot(dout.data(), out.data(), dd.data(), B, T, C, NH);
    });
    emu_launch(gx, gy, bx, [&] {
        flash_attn_backward_dq(qkv.data(), dout.data(), lse.data(), dd.data(), dqkv.data(), T,
                               C, NH, tpr, scale);
    });
    emu_launch(gx, gy, bx, [&] {
        flash_attn_backward_dkv(qkv.data(), dout.data(), lse.data(), dd.data(), dqkv.data(), T,
                                C, NH, tpr, scale);
    });
    save(d + "/out", out);
    save(d + "/lse", lse);
    save(d + "/dqkv", dqkv);
    return 0;
}

static int flash_tc(int B, int T, int C, int NH, const std::string& d) {
    const int hd = C / NH;
    const float scale = 1.0f / std::sqrt((float)hd);
    const size_t n = (size_t)B * T * C, rows = (size_t)B * NH * T;
    auto qkv = load<float>(d + "/qkv", 3 * n);
    auto dout = load<float>(d + "/dout", n);
    std::vector<float> out(n, NAN), lse(rows, NAN), dd(rows, NAN), dqkv(3 * n, NAN);
    const unsigned gx = (T + TC_ROWS - 1) / TC_ROWS, gy = B * NH;
    emu_launch(gx, gy, 128, [&] { flash_tc_forward(qkv.data(), out.data(), lse.data(), T, C, NH, scale); });
    emu_launch((rows + 255) / 256, 1, 256, [&] {
        flash_attn_backward_dot(dout.data(), out.data(), dd.data(), B, T, C, NH);
    });
    emu_launch(gx, gy, 128, [&] {
        flash_tc_backward_dq(qkv.data(), dout.data(), lse.data(), dd.data(), dqkv.data(), T, C,
                             NH, scale);
    });
    emu_launch(gx, gy, 128, [&] {
        flash_tc_backward_dkv(qkv.data(), dout.data(), lse.data(), dd.data(), dqkv.data(), T,
                              C, NH, scale);
    });
    save(d + "/out", out);
    save(d + "/lse", lse);
    save(d + "/dqkv", dqkv);
    return 0;
}

static int vp(int N, int T, int C, int VL, int V0, int V, const std::string& d) {
    const int valid = std::max(0, std::min(VL, V - V0));
    auto rows = load<int32_t>(d + "/rows", N);
    auto wte = load<float>(d + "/wte", (size_t)VL * C);
    auto wpe = load<float>(d + "/wpe", (size_t)T * C);
    auto z = load<float>(d + "/z", (size_t)N * VL);
    auto y = load<int32_t>(d + "/targets", N);
    auto ms = load<float>(d + "/ms", 2 * (size_t)N);
    auto scale = load<float>(d + "/scale", 1)[0];
    std::vector<float> emb((size_t)N * C, NAN), stats(3 * (size_t)N, NAN);
    emu_launch(((size_t)N * C + 255) / 256, 1, 256, [&] {
        vp_embedding_forward(emb.data(), rows.data(), wte.data(), wpe.data(), 1, N, T, C);
    });
    emu_launch(N, 1, 256, [&] {
        vp_xent_partial(z.data(), stats.data(), y.data(), N, VL, V0, valid);
    });
    emu_launch(((size_t)N * VL + 255) / 256, 1, 256, [&] {
        vp_xent_grad(z.data(), ms.data(), y.data(), N, VL, V0, valid, scale);
    });
    save(d + "/emb", emb);
    save(d + "/stats", stats);
    save(d + "/zgrad", z);
    return 0;
}

static int adamw(size_t N, unsigned chunks, const std::string& d) {
    auto p = load<float>(d + "/p", N), g = load<float>(d + "/g", N);
    auto m = load<float>(d + "/m", N), v = load<float>(d + "/v", N);
    auto table = load<long long>(d + "/table", 2 * (size_t)chunks);
    // beta1, beta2, eps, wd_factor, step_size, bc2_sqrt
    auto s = load<float>(d + "/scalars", 6);
    emu_launch(chunks, 1, 256, [&] {
        adamw_multi(p.data(), g.data(), m.data(), v.data(), table.data(), s[0], s[1], s[2], s[3],
                    s[4], s[5]);
    });
    save(d + "/p", p);
    save(d + "/m", m);
    save(d + "/v", v);
    return 0;
}

static int decode(int row0, int rows, int start, int cap, int C, int NH, const std::string& d) {
    auto qkv = load<float>(d + "/qkv", (size_t)(row0 + rows) * 3 * C);
    auto kv = load<float>(d + "/kv", 2 * (size_t)cap * C);
    auto out = load<float>(d + "/out", (size_t)(row0 + rows) * C);
    std::vector<float> scores((size_t)rows * NH * cap, NAN);
    const float scale = 1.0f / std::sqrt((float)(C / NH));
    emu_launch(((size_t)rows * C + 255) / 256, 1, 256, [&] {
        attn_kv_append(kv.data(), qkv.data(), row0, rows, start, cap, C);
    });
    emu_launch(rows, NH, 128, [&] {
        attn_cached(out.data(), scores.data(), qkv.data(), kv.data(), row0, start, cap, C, NH,
                    scale);
    });
    save(d + "/kv", kv);
    save(d + "/out", out);
    return 0;
}

int main(int argc, char** argv) {
    std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "flash" && argc == 7)
        return flash(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), argv[6]);
    if (mode == "flashtc" && argc == 7)
        return flash_tc(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), argv[6]);
    if (mode == "vp" && argc == 9)
        return vp(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]),
                  atoi(argv[7]), argv[8]);
    if (mode == "adamw" && argc == 5) return adamw(atol(argv[2]), atoi(argv[3]), argv[4]);
    if (mode == "decode" && argc == 9)
        return decode(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]),
                      atoi(argv[7]), argv[8]);
    std::fprintf(stderr, "usage: harness flash|flashtc|vp|adamw|decode ...\n");
    return 2;
}
