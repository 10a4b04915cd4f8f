//! Hugging Face GPT-2 directories: `config.json` + `model.safetensors` as written by
//! `GPT2LMHeadModel.save_pretrained`. Import (for `eval`, `generate`, `train --init-hf`) and
//! export (final weights, `ckpt export`).
//!
//! Tensor names are `transformer.<name>` (the bare `<name>` of the `GPT2Model` checkpoints on
//! the Hub is accepted too); Conv1D weights are `[in, out]` like ours. `wte` is stored unpadded
//! `[V, C]`; `lm_head.weight` is tied and not stored. Buffers `attn.bias`/`attn.masked_bias`
//! of older files are ignored. F32, F16 and BF16 tensors are accepted on import; export
//! writes F32.

use crate::model::gpt2::{Gpt2Config, ParamLayout};
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// Read `dir/config.json` into a model shape. Errors name the file and the key.
pub fn read_config(dir: &Path) -> Result<Gpt2Config> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse_config(&text, &path)
}

/// A Hugging Face GPT-2 `config.json` (its text; `path` for messages) as a model shape, within
/// [`Gpt2Config::check_bounds`].
pub fn parse_config(text: &str, path: &Path) -> Result<Gpt2Config> {
    let v: Value = serde_json::from_str(text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let get = |k: &str| -> Result<usize> {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .with_context(|| format!("{}: missing or non-integer key \"{k}\"", path.display()))
    };
    if let Some(act) = v.get("activation_function").and_then(Value::as_str) {
        if act != "gelu_new" {
            bail!(
                "{}: activation_function \"{act}\" is not supported (only gelu_new)",
                path.display()
            );
        }
    }
    if let Some(eps) = v.get("layer_norm_epsilon").and_then(Value::as_f64) {
        if (eps - 1e-5).abs() > 1e-12 {
            bail!(
                "{}: layer_norm_epsilon {eps} is not supported (only 1e-5)",
                path.display()
            );
        }
    }
    let n_positions = get("n_positions").or_else(|_| get("n_ctx"))?;
    let (n_embd, n_head) = (get("n_embd")?, get("n_head")?);
    if n_head == 0 || n_embd % n_head != 0 {
        bail!(
            "{}: n_embd {n_embd} is not divisible by n_head {n_head}",
            path.display()
        );
    }
    let cfg = Gpt2Config::new(
        get("vocab_size")?,
        n_positions,
        n_embd,
        get("n_layer")?,
        n_head,
    );
    cfg.check_bounds(&path.display().to_string())?;
    Ok(cfg)
}

/// Load a Hugging Face GPT-2 directory: its shape and the flat parameter buffer (padded).
pub fn load(dir: &Path) -> Result<(Gpt2Config, Vec<f32>)> {
    let cfg = read_config(dir)?;
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (only safetensors weights are supported)",
            path.display()
        )
    })?;
    Ok((cfg, params_from_safetensors(&cfg, &bytes, &path)?))
}

/// The flat (padded) parameter buffer of `cfg` from the bytes of a `model.safetensors` (`path`
/// for messages). A file too small to hold the model is refused before anything is allocated.
pub fn params_from_safetensors(cfg: &Gpt2Config, bytes: &[u8], path: &Path) -> Result<Vec<f32>> {
    let layout = ParamLayout::new(cfg);
    let real = layout.total - (cfg.padded_vocab - cfg.vocab_size) * cfg.n_embd;
    if (bytes.len() as u64) < 2 * real as u64 {
        bail!(
            "{}: {} bytes cannot hold the {real} parameters config.json describes (at least 2 \
             bytes each)",
            path.display(),
            bytes.len()
        );
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let mut params = vec![0.0f32; layout.total];
    for e in &layout.entries {
        let (key, view) = find_tensor(&st, &e.name).with_context(|| {
            format!(
                "{}: missing tensor \"transformer.{}\"",
                path.display(),
                e.name
            )
        })?;
        let want: Vec<usize> = if e.name == "wte.weight" {
            vec![cfg.vocab_size, cfg.n_embd]
        } else {
            e.shape.clone()
        };
        if view.shape() != want.as_slice() {
            bail!(
                "{}: tensor \"{key}\" has shape {:?}, expected {:?}",
                path.display(),
                view.shape(),
                want
            );
        }
        let n: usize = want.iter().product();
        to_f32(&view, &mut params[e.offset..e.offset + n])
            .with_context(|| format!("{}: tensor \"{key}\"", path.display()))?;
    }
    Ok(params)
}

fn find_tensor<'a>(st: &'a SafeTensors<'a>, name: &str) -> Option<(String, TensorView<'a>)> {
    [format!("transformer.{name}"), name.to_string()]
        .into_iter()
        .find_map(|k| st.tensor(&k).ok().map(|v| (k, v)))
}

fn to_f32(view: &TensorView, out: &mut [f32]) -> Result<()> {
    let d = view.data();
    match view.dtype() {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(d.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(d.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(d.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        other => bail!("unsupported dtype {other:?} (expected F32, F16 or BF16)"),
    }
    Ok(())
}

/// The `config.json` we write: what `transformers` needs to build `GPT2LMHeadModel`.
pub fn config_json(cfg: &Gpt2Config) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "use_cache": true,
        "torch_dtype": "float32",
        "ferrotron_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Write `dir/config.json` and `dir/model.safetensors` (F32, unpadded `wte`). Files are written
/// under temporary names and renamed, so a crash never leaves a half-written directory entry.
pub fn save(dir: &Path, cfg: &Gpt2Config, params: &[f32]) -> Result<()> {
    let layout = ParamLayout::new(cfg);
    if params.len() != layout.total {
        bail!(
            "export: parameter buffer has {} values, the model needs {}",
            params.len(),
            layout.total
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for e in &layout.entries {
        let (shape, n) = if e.name == "wte.weight" {
            (
                vec![cfg.vocab_size, cfg.n_embd],
                cfg.vocab_size * cfg.n_embd,
            )
        } else {
            (e.shape.clone(), e.len)
        };
        let bytes: Vec<u8> = params[e.offset..e.offset + n]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        bufs.push((format!("transformer.{}", e.name), shape, bytes));
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(k, s, b)| Ok((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow::anyhow!("building safetensors views: {e}"))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st_path = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    safetensors::serialize_to_file(views, Some(meta), &tmp)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &st_path)
        .with_context(|| format!("renaming to {}", st_path.display()))?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config_json(cfg))?;
    let tmp = dir.join("config.json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &cfg_path)
        .with_context(|| format!("renaming to {}", cfg_path.display()))?;
    Ok(())
}
