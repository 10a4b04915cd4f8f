"""Reads a ferrotron checkpoint directory with h5py and checks the documented layout
(src/checkpoint/format.rs): meta.h5 attributes, /model and /optim datasets with global_shape,
offset and crc32 (recomputed here with zlib), shards tiling each global tensor, and ZeRO-1
optimizer pieces covering each tensor. Usage: python3 checkpoint_h5py.py STEP_DIR
Prints "h5py: ok" and exits 0 on success."""
import os, sys, zlib

import h5py
import numpy as np


def check_ds(ds, where):
    for k in ("global_shape", "offset", "crc32"):
        assert k in ds.attrs, f"{where}: attribute {k} missing"
    data = ds[()].astype("<f4")
    crc = zlib.crc32(data.tobytes()) & 0xFFFFFFFF
    assert crc == int(ds.attrs["crc32"]), f"{where}: crc32 {crc:08x} != {int(ds.attrs['crc32']):08x}"
    return data


def main(step_dir):
    assert os.path.exists(os.path.join(step_dir, "COMPLETE")), "COMPLETE missing"
    with h5py.File(os.path.join(step_dir, "meta.h5"), "r") as m:
        a = m.attrs
        for k in ("format_version", "ferrotron_version", "config", "dp", "tp", "pp", "zero", "step",
                  "tokens", "samples", "seed", "adam_t", "vocab_size", "n_embd", "n_layer", "n_head"):
            assert k in a, f"meta.h5: attribute {k} missing"
        assert a["sampler"] in ("feistel", "shuffle"), a["sampler"]
        assert int(a["format_version"]) == 1
        dp, tp, pp, zero = (int(a[k]) for k in ("dp", "tp", "pp", "zero"))
        cfg = a["config"]
        cfg = cfg.decode() if isinstance(cfg, bytes) else str(cfg)
        assert "[model]" in cfg, "config text"
        assert int(a["samples"]) == int(a["step"]) * 8, "samples = step x global batch"
    listed = open(os.path.join(step_dir, "COMPLETE")).read().split()
    assert "meta.h5" in listed and all(os.path.exists(os.path.join(step_dir, f)) for f in listed)
    cover = {}  # tensor -> (global shape, coverage counts)
    sizes = {}  # tensor -> stored elements per (pp, tp) shard
    for p in range(pp):
        for t in range(tp):
            name = f"shard_pp{p}_tp{t}.h5"
            assert name in listed, f"{name} not listed in COMPLETE"
            with h5py.File(os.path.join(step_dir, name), "r") as f:
                for tname, ds in f["model"].items():
                    data = check_ds(ds, f"{name}:/model/{tname}")
                    gshape = tuple(int(x) for x in ds.attrs["global_shape"])
                    off = tuple(int(x) for x in ds.attrs["offset"])
                    g = cover.setdefault(tname, (gshape, np.zeros(gshape, dtype=np.int32)))[1]
                    box = tuple(slice(o, o + n) for o, n in zip(off, data.shape))
                    g[box] += 1
                    sizes[(p, t, tname)] = data.size
                if not (zero == 1 and dp > 1):
                    for tname in f["model"]:
                        for k in ("m", "v"):
                            check_ds(f["optim"][tname][k], f"{name}:/optim/{tname}/{k}")
    for tname, (gshape, g) in cover.items():
        assert (g == 1).all(), f"{tname}: shards do not tile {gshape} exactly once"
    assert "wte.weight" in cover and cover["wte.weight"][0][0] == 50257, "wte stored without padding"
    qkv = [k for k in cover if k.endswith("attn.c_attn.weight")]
    assert qkv and len(cover[qkv[0]][0]) == 3, "c_attn stored as [C, 3, C]"
    if zero == 1 and dp > 1:
        got = {}
        for p in range(pp):
            for t in range(tp):
                for d in range(dp):
                    name = f"optim_pp{p}_tp{t}_dp{d}.h5"
                    with h5py.File(os.path.join(step_dir, name), "r") as f:
                        for tname, grp in f["optim"].items():
                            for k in ("m", "v"):
                                ds = grp[k]
                                check_ds(ds, f"{name}:/optim/{tname}/{k}")
                                a0, a1 = (int(x) for x in ds.attrs["local_range"])
                                assert a1 - a0 == ds.shape[0]
                                got[(p, t, tname, k)] = got.get((p, t, tname, k), 0) + (a1 - a0)
        for (p, t, tname), n in sizes.items():
            for k in ("m", "v"):
                assert got.get((p, t, tname, k)) == n, f"ZeRO pieces of {tname} ({k}) on pp{p} tp{t}: {got.get((p, t, tname, k))} of {n}"
    print(f"h5py: ok ({len(cover)} tensors, grid dp={dp} tp={tp} pp={pp}, zero={zero})")


if __name__ == "__main__":
    main(sys.argv[1])
