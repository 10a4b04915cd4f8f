//! GPT-2 byte-pair encoding (tiktoken's `r50k_base`, bundled offline).

use anyhow::{Context, Result};
use tiktoken_rs::CoreBPE;

/// The `<|endoftext|>` token id, used as a document delimiter (prefix).
pub const EOT: u32 = 50256;
/// GPT-2 vocabulary size (50,000 merges + 256 bytes + `<|endoftext|>`).
pub const GPT2_VOCAB: usize = 50257;

/// GPT-2 tokenizer. Cheap to share across threads (`&self` methods, `Sync`).
pub struct Gpt2Tokenizer {
    bpe: CoreBPE,
}

impl Gpt2Tokenizer {
    /// Build the tokenizer from the BPE ranks compiled into `tiktoken-rs`.
    pub fn new() -> Result<Self> {
        let bpe = tiktoken_rs::r50k_base().context("loading the GPT-2 (r50k_base) BPE")?;
        Ok(Self { bpe })
    }

    /// Encode `text` as ordinary text: special-token strings such as
    /// `<|endoftext|>` are encoded literally, never as [`EOT`].
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// Decode token ids to text.
    ///
    /// Lossy: byte sequences that are not valid UTF-8 (e.g. a multi-byte
    /// character split across a slice boundary) become U+FFFD. [`EOT`]
    /// decodes to `<|endoftext|>`. Errors on ids outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self
            .bpe
            .decode_bytes(ids)
            .context("decoding GPT-2 token ids")?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids_and_round_trip() {
        let tok = Gpt2Tokenizer::new().unwrap();
        assert_eq!(tok.encode("Hello world"), vec![15496, 995]);
        assert_eq!(tok.decode(&[EOT]).unwrap(), "<|endoftext|>");
        assert!(tok.encode("<|endoftext|>").iter().all(|&t| t != EOT));
        for s in [
            "",
            "Hello world",
            "  leading spaces\n\ttabs and\r\nCRLF",
            "Unicode: héllo wörld, 日本語, emoji 🦀",
            "A day for firm decisions!!!!!  Or is it?",
        ] {
            let ids = tok.encode(s);
            assert!(ids.iter().all(|&t| (t as usize) < GPT2_VOCAB));
            assert_eq!(tok.decode(&ids).unwrap(), s);
        }
        assert!(tok.decode(&[GPT2_VOCAB as u32 + 10]).is_err());
    }
}
