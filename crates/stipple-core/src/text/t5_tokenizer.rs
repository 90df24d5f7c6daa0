//! T5's SentencePiece tokenizer, called the way the SD3 and FLUX pipelines call it:
//! `tokenizer(prompts, padding="max_length", max_length=n, truncation=True)` — the `</s>` the
//! file's post-processor appends is kept within `n`, and rows are right-padded with `<pad>`.
//!
//! Only the `tokenizer.json` form is read (every diffusers FLUX/SD3 folder ships one); a folder
//! with just `spiece.model` would need a SentencePiece model parser.

use std::path::{Path, PathBuf};

use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use super::TokenRows;
use crate::checkpoint::TokenizerSource;
use crate::{Error, Result};
use std::str::FromStr;

const PAD_TOKEN: &str = "<pad>";

/// A T5 tokenizer with its padding id.
pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    source: PathBuf,
}

impl T5Tokenizer {
    /// Load a tokenizer folder (diffusers `tokenizer_2/` of FLUX, `tokenizer_3/` of SD3).
    pub fn from_folder(dir: &Path) -> Result<T5Tokenizer> {
        Self::from_source(&TokenizerSource::Folder(dir.to_path_buf()))
    }

    /// Load from a tokenizer folder or from files embedded in a single-file checkpoint.
    pub fn from_source(source: &TokenizerSource) -> Result<T5Tokenizer> {
        let path = match source {
            TokenizerSource::Folder(dir) => dir.join("tokenizer.json"),
            TokenizerSource::Embedded { checkpoint, .. } => checkpoint.join("tokenizer.json"),
        };
        if !source.has_file("tokenizer.json") {
            return Err(Error::missing_file(
                path,
                "a T5 tokenizer folder (diffusers `tokenizer_2/` or `tokenizer_3/`) must contain tokenizer.json \
                 (folders with only spiece.model are not supported; save the tokenizer with transformers' \
                 T5TokenizerFast to get one)",
            ));
        }
        let text = source.read_file("tokenizer.json")?;
        let tokenizer = Tokenizer::from_str(&text).map_err(|e| Error::invalid_file(&path, e.to_string()))?;
        Self::new(tokenizer, path)
    }

    /// Load a `tokenizer.json` that has a `<pad>` token.
    pub fn from_file(path: &Path) -> Result<T5Tokenizer> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| Error::invalid_file(path, e.to_string()))?;
        Self::new(tokenizer, path.to_path_buf())
    }

    fn new(tokenizer: Tokenizer, source: PathBuf) -> Result<T5Tokenizer> {
        let pad_id = tokenizer
            .token_to_id(PAD_TOKEN)
            .ok_or_else(|| Error::invalid_file(&source, format!("no `{PAD_TOKEN}` token: this is not a T5 tokenizer")))?;
        Ok(T5Tokenizer { tokenizer, pad_id, source })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids and attention masks, each `max_length` long: the prompt's pieces cut so that they
    /// and the closing special tokens fit, then `<pad>`; the mask is 1 on real tokens.
    pub fn encode_batch(&self, prompts: &[&str], max_length: usize) -> Result<(TokenRows, TokenRows)> {
        let mut tokenizer = self.tokenizer.clone();
        // Set here, whatever the file says, so every call follows the pipelines' rule.
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::param("max_sequence_length", format!("{max_length}: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: PAD_TOKEN.to_string(),
        }));
        let encodings = tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| Error::invalid_file(&self.source, format!("tokenizing {prompts:?}: {e}")))?;
        let ids = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
        let masks = encodings.iter().map(|e| e.get_attention_mask().to_vec()).collect();
        Ok((ids, masks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::unigram::Unigram;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::AddedToken;

    /// A T5-shaped `tokenizer.json`: Unigram pieces with `▁` word starts, `</s>` appended by the
    /// post-processor, `<pad>` 0 / `</s>` 1 / `<unk>` 2 as in every T5 vocabulary.
    fn write_tiny_t5_tokenizer(dir: &Path) -> PathBuf {
        let pieces = ["<pad>", "</s>", "<unk>", "▁a", "▁cat", "▁on", "▁the", "▁mat", "▁", "a", "c", "t"];
        let vocab = pieces.iter().enumerate().map(|(i, p)| (p.to_string(), -(i as f64))).collect();
        let model = Unigram::from(vocab, Some(2), false).unwrap();
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
        tokenizer.with_post_processor(Some(
            TemplateProcessing::builder()
                .try_single("$A </s>")
                .unwrap()
                .special_tokens(vec![("</s>", 1)])
                .build()
                .unwrap(),
        ));
        tokenizer.add_special_tokens(&[AddedToken::from("<pad>", true), AddedToken::from("</s>", true)]);
        let path = dir.join("tokenizer.json");
        tokenizer.save(&path, false).unwrap();
        path
    }

    #[test]
    fn pads_to_max_length_and_keeps_eos_when_truncating() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_t5_tokenizer(dir.path());
        let tok = T5Tokenizer::from_folder(dir.path()).unwrap();
        assert_eq!(tok.pad_id(), 0);

        let (ids, mask) = tok.encode_batch(&["a cat on the mat", "a cat", ""], 5).unwrap();
        assert_eq!(ids[0], vec![3, 4, 5, 6, 1], "cut to 4 pieces + </s>");
        assert_eq!(mask[0], vec![1; 5]);
        assert_eq!(ids[1], vec![3, 4, 1, 0, 0]);
        assert_eq!(mask[1], vec![1, 1, 1, 0, 0]);
        assert_eq!(ids[2], vec![1, 0, 0, 0, 0], "the empty prompt is just </s>");
    }

    #[test]
    fn missing_tokenizer_json_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spiece.model"), b"").unwrap();
        let err = T5Tokenizer::from_folder(dir.path()).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, Error::MissingFile { .. }), "{msg}");
        assert!(msg.contains("tokenizer.json") && msg.contains("spiece.model"), "{msg}");
    }

    #[test]
    fn a_tokenizer_without_pad_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let vocab = vec![("▁a".to_string(), -1.0), ("<unk>".to_string(), -2.0)];
        Tokenizer::new(Unigram::from(vocab, Some(1), false).unwrap()).save(&path, false).unwrap();
        let err = T5Tokenizer::from_file(&path).err().unwrap();
        assert!(err.to_string().contains("<pad>"), "{err}");
    }
}
