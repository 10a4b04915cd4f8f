//! Checkpoints and weight formats. `hf` reads and writes Hugging Face GPT-2 directories;
//! `format`, `meta`, `save` and `load` are the sharded HDF5 training checkpoints (layout in
//! `format`), `inspect` the `ferrotron ckpt` commands.

pub mod format;
pub mod hf;
pub mod inspect;
pub mod load;
pub mod lock;
pub mod meta;
pub mod save;
