//! T5's SentencePiece tokenizer, called the way the SD3 and FLUX pipelines call it:
//! `tokenizer(prompts, padding="max_length", max_length=n, truncation=True)` — the `</s>` the
//! post-processor appends is kept within `n`, and rows are right-padded with `<pad>`.
//!
//! A tokenizer folder is read from `tokenizer.json` when it has one (every diffusers FLUX/SD3
//! folder does), else from SentencePiece's `spiece.model` (google/t5-v1_1-xxl and other T5
//! downloads), built into the same pipeline transformers builds from that file.

use std::path::{Path, PathBuf};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use super::sentencepiece_model::{ModelType, PieceKind, SentencePieceModel};
use super::TokenRows;
use crate::checkpoint::TokenizerSource;
use crate::{Error, Result};
use std::str::FromStr;

const PAD_TOKEN: &str = "<pad>";
const EOS_TOKEN: &str = "</s>";
const TOKENIZER_JSON: &str = "tokenizer.json";
const SPIECE_MODEL: &str = "spiece.model";
/// The files a T5 tokenizer folder is read from, in order of preference.
pub const T5_TOKENIZER_FILES: [&str; 2] = [TOKENIZER_JSON, SPIECE_MODEL];
/// transformers' `T5Tokenizer(extra_ids=100)`: the sentinels `<extra_id_0>` … `<extra_id_99>`.
const EXTRA_IDS: usize = 100;

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

    /// Whether a tokenizer source has a file a T5 tokenizer can be read from.
    pub fn source_has_files(source: &TokenizerSource) -> bool {
        T5_TOKENIZER_FILES.iter().any(|name| source.has_file(name))
    }

    /// Load from a tokenizer folder or from files embedded in a single-file checkpoint:
    /// `tokenizer.json` if there is one, else `spiece.model`.
    pub fn from_source(source: &TokenizerSource) -> Result<T5Tokenizer> {
        let origin = |name: &str| match source {
            TokenizerSource::Folder(dir) => dir.join(name),
            TokenizerSource::Embedded { checkpoint, .. } => checkpoint.join(name),
        };
        if source.has_file(TOKENIZER_JSON) {
            let path = origin(TOKENIZER_JSON);
            let text = source.read_file(TOKENIZER_JSON)?;
            let tokenizer = Tokenizer::from_str(&text).map_err(|e| Error::invalid_file(&path, e.to_string()))?;
            return Self::new(tokenizer, path);
        }
        if source.has_file(SPIECE_MODEL) {
            let path = origin(SPIECE_MODEL);
            let model = SentencePieceModel::from_bytes(&source.read_bytes(SPIECE_MODEL)?, &path)?;
            return Self::new(spiece_tokenizer(&model, &path)?, path);
        }
        Err(Error::missing_file(
            origin(TOKENIZER_JSON),
            format!(
                "a T5 tokenizer folder (diffusers `tokenizer_2/` or `tokenizer_3/`) must contain {}; copy one \
                 from the model's repository",
                T5_TOKENIZER_FILES.join(" or ")
            ),
        ))
    }

    /// Load a SentencePiece `spiece.model` file.
    pub fn from_spiece_file(path: &Path) -> Result<T5Tokenizer> {
        let model = SentencePieceModel::from_file(path)?;
        Self::new(spiece_tokenizer(&model, path)?, path.to_path_buf())
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

/// The tokenization pipeline transformers builds for T5 from a `spiece.model` alone
/// (`T5TokenizerFast.from_pretrained` on such a folder, transformers 5: `SentencePieceExtractor`,
/// `T5Converter.convert_from_spm`, `T5Tokenizer.__init__`), so ids match it:
/// * a Unigram model over the pieces and their scores, then `<extra_id_99>` … `<extra_id_0>`
///   (score 0) — so `<extra_id_0>` is the last id, 32099 for T5's 32000 pieces; no byte fallback;
/// * the model's precompiled character map as the only normaliser (the spec's whitespace flags
///   are not applied: the pre-tokeniser does that work);
/// * pre-tokeniser `WhitespaceSplit` then `Metaspace("▁", always, split)`: runs of whitespace
///   separate words, leading and trailing whitespace vanish, every word gets its `▁`;
/// * `</s>` appended to every sequence;
/// * control and unknown pieces and the sentinels as special tokens, user-defined pieces as
///   added tokens, all matched in the raw text before normalisation.
///
/// transformers fixes the unknown id at 2 (T5's layout); the model's own `unk_id` is used here,
/// which is the same for every T5 vocabulary.
fn spiece_tokenizer(model: &SentencePieceModel, path: &Path) -> Result<Tokenizer> {
    if model.model_type != ModelType::Unigram {
        return Err(Error::invalid_file(
            path,
            format!("is a {:?} SentencePiece model; T5 tokenizers are Unigram models", model.model_type),
        ));
    }
    let sentinels: Vec<String> = (0..EXTRA_IDS).rev().map(|i| format!("<extra_id_{i}>")).collect();
    let vocab = model
        .pieces
        .iter()
        .map(|p| (p.piece.clone(), f64::from(p.score)))
        .chain(sentinels.iter().map(|s| (s.clone(), 0.0)))
        .collect();
    let unigram = Unigram::from(vocab, Some(model.unk_id), false)
        .map_err(|e| Error::invalid_file(path, format!("cannot build its Unigram model: {e}")))?;
    let mut tokenizer = Tokenizer::new(unigram);
    if !model.precompiled_charsmap.is_empty() {
        let charsmap = Precompiled::from(&model.precompiled_charsmap)
            .map_err(|e| Error::invalid_file(path, format!("precompiled_charsmap: {e}")))?;
        tokenizer.with_normalizer(Some(charsmap));
    }
    let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![WhitespaceSplit.into(), metaspace.clone().into()])));
    tokenizer.with_decoder(Some(DecoderWrapper::Metaspace(metaspace)));
    let eos_id = tokenizer.token_to_id(EOS_TOKEN).ok_or_else(|| {
        Error::invalid_file(
            path,
            format!("has no `{EOS_TOKEN}` piece: this is not a T5 tokenizer (T5 has `<pad>` 0, `</s>` 1, `<unk>` 2)"),
        )
    })?;
    let post_processor_error = |e: String| Error::invalid_file(path, format!("post-processor: {e}"));
    let mut template = TemplateProcessing::builder();
    template
        .try_single(vec!["$A", EOS_TOKEN])
        .and_then(|t| t.try_pair(vec!["$A", EOS_TOKEN, "$B", EOS_TOKEN]))
        .map_err(post_processor_error)?;
    let template = template
        .special_tokens(vec![(EOS_TOKEN, eos_id)])
        .build()
        .map_err(|e| post_processor_error(e.to_string()))?;
    tokenizer.with_post_processor(Some(template));

    let special = |text: &str| AddedToken::from(text, true).normalized(false);
    let mut specials: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceKind::Control | PieceKind::Unknown))
        .map(|p| special(&p.piece))
        .collect();
    specials.extend(sentinels.iter().rev().map(|s| special(s)));
    tokenizer.add_special_tokens(&specials);
    let user_defined: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| p.kind == PieceKind::UserDefined)
        .map(|p| AddedToken::from(p.piece.as_str(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user_defined);
    Ok(tokenizer)
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
    fn a_folder_without_either_file_names_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), b"{}").unwrap();
        let err = T5Tokenizer::from_folder(dir.path()).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, Error::MissingFile { .. }), "{msg}");
        assert!(msg.contains("tokenizer.json or spiece.model"), "{msg}");
        assert!(!T5Tokenizer::source_has_files(&TokenizerSource::Folder(dir.path().to_path_buf())));
    }

    fn reference_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/t5_spiece")
    }

    /// `testdata/t5_spiece/expected.json`: each text and the ids transformers gives it.
    fn reference_cases() -> Vec<(String, Vec<u32>)> {
        let text = std::fs::read_to_string(reference_dir().join("expected.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = json["cases"].as_array().unwrap();
        cases
            .iter()
            .map(|c| {
                let ids = c["input_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
                (c["text"].as_str().unwrap().to_string(), ids)
            })
            .collect()
    }

    /// A folder holding nothing but the reference `spiece.model`.
    fn spiece_only_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(reference_dir().join("spiece.model"), dir.path().join("spiece.model")).unwrap();
        dir
    }

    fn ids(tok: &T5Tokenizer, text: &str) -> Vec<u32> {
        tok.tokenizer.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn spiece_model_tokenizes_like_transformers() {
        let dir = spiece_only_folder();
        let tok = T5Tokenizer::from_folder(dir.path()).unwrap();
        assert_eq!(tok.source, dir.path().join("spiece.model"));
        assert_eq!(tok.pad_id(), 0);
        // 378 pieces + 100 sentinels, `<extra_id_0>` last.
        assert_eq!(tok.tokenizer.get_vocab_size(true), 478);
        assert_eq!(tok.tokenizer.token_to_id("<extra_id_0>"), Some(477));
        let cases = reference_cases();
        assert!(cases.len() >= 20);
        for (text, expected) in &cases {
            assert_eq!(&ids(&tok, text), expected, "{text:?}");
        }
        // Padding and truncation as the pipelines ask for them.
        let (rows, masks) = tok.encode_batch(&["a cat on the mat"], 4).unwrap();
        let full = &cases.iter().find(|(t, _)| t == "a cat on the mat").unwrap().1;
        assert_eq!(rows[0], [&full[..3], &[1]].concat());
        assert_eq!(masks[0], vec![1; 4]);
    }

    #[test]
    fn spiece_model_and_its_saved_tokenizer_json_agree() {
        let from_spiece = T5Tokenizer::from_spiece_file(&reference_dir().join("spiece.model")).unwrap();
        let from_json = T5Tokenizer::from_file(&reference_dir().join("tokenizer.json")).unwrap();
        let extra =
            ["<extra_id_5>x<extra_id_5>", "é ｆｉｎｅ ﬂ", "\t\t", "a</s>b", "the   café ②③", "zzzzzzzzzzzzzzzzzzzzzz"];
        let texts: Vec<String> = reference_cases().into_iter().map(|(t, _)| t).chain(extra.map(String::from)).collect();
        for text in &texts {
            assert_eq!(ids(&from_spiece, text), ids(&from_json, text), "{text:?}");
        }
        let prompts: Vec<&str> = texts.iter().map(String::as_str).collect();
        assert_eq!(from_spiece.encode_batch(&prompts, 12).unwrap(), from_json.encode_batch(&prompts, 12).unwrap());
    }

    #[test]
    fn tokenizer_json_is_preferred_over_spiece_model() {
        let dir = spiece_only_folder();
        write_tiny_t5_tokenizer(dir.path());
        let tok = T5Tokenizer::from_folder(dir.path()).unwrap();
        assert_eq!(tok.source, dir.path().join("tokenizer.json"));
        assert_eq!(ids(&tok, "a cat"), vec![3, 4, 1]);
    }

    #[test]
    fn a_corrupt_or_truncated_spiece_model_is_an_error_naming_the_file() {
        let good = std::fs::read(reference_dir().join("spiece.model")).unwrap();
        let json = std::fs::read(reference_dir().join("tokenizer.json")).unwrap();
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0xff;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spiece.model");
        let cuts = [1, 2, 10, good.len() / 3, good.len() / 2, good.len() - 100, good.len() - 1];
        let bad: Vec<&[u8]> = [&b""[..], &json, &garbage].into_iter().chain(cuts.iter().map(|&n| &good[..n])).collect();
        for bytes in bad {
            std::fs::write(&path, bytes).unwrap();
            let err = T5Tokenizer::from_folder(dir.path()).err().unwrap();
            assert!(matches!(err, Error::InvalidFile { .. }), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        }
        // A flipped byte may still parse; it must not panic either way.
        std::fs::write(&path, &flipped).unwrap();
        if let Ok(tok) = T5Tokenizer::from_folder(dir.path()) {
            let _ = tok.encode_batch(&["Café ﬁ ① a cat"], 8);
        }
    }

    #[test]
    fn non_t5_sentencepiece_models_are_refused() {
        use crate::text::sentencepiece_model::tests::{model_file, T5_PIECES};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spiece.model");
        std::fs::write(&path, model_file(&T5_PIECES, 2, 2, &[])).unwrap();
        let err = T5Tokenizer::from_spiece_file(&path).err().unwrap().to_string();
        assert!(err.contains("Bpe") && err.contains("Unigram") && err.contains("spiece.model"), "{err}");
        std::fs::write(&path, model_file(&[T5_PIECES[0], T5_PIECES[2], T5_PIECES[3]], 1, 1, &[])).unwrap();
        let err = T5Tokenizer::from_spiece_file(&path).err().unwrap().to_string();
        assert!(err.contains("`</s>`"), "{err}");
        std::fs::write(&path, model_file(&[T5_PIECES[1], T5_PIECES[2], T5_PIECES[3]], 1, 1, &[])).unwrap();
        let err = T5Tokenizer::from_spiece_file(&path).err().unwrap().to_string();
        assert!(err.contains("<pad>"), "{err}");
    }

    /// Control and user-defined pieces are matched whole in the raw text, as transformers does
    /// (checked with a model trained with `control_symbols=["<ctl>"]`, `user_defined_symbols=["<sep>"]`:
    /// "a<sep>b" → ▁a <sep> ▁b </s>, "<ctl> cat" → <ctl> ▁ca t </s>).
    #[test]
    fn control_and_user_defined_pieces_are_kept_whole() {
        use crate::text::sentencepiece_model::tests::{model_file, T5_PIECES};
        let mut pieces = T5_PIECES.to_vec();
        pieces.extend([("<ctl>", 0.0, 3), ("<sep>", 0.0, 4), ("▁b", -2.0, 1), ("▁", -3.0, 1), ("<", -4.0, 1)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spiece.model");
        std::fs::write(&path, model_file(&pieces, 1, 2, &[])).unwrap();
        let tok = T5Tokenizer::from_spiece_file(&path).unwrap();
        assert_eq!(ids(&tok, "a<sep>b"), vec![3, 5, 6, 1]);
        assert_eq!(ids(&tok, "<ctl> a  b "), vec![4, 3, 6, 1]);
        assert_eq!(ids(&tok, "<extra_id_99> <extra_id_0>"), vec![9, 9 + 99, 1]);
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
