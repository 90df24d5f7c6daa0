//! CLIP's byte-level BPE tokenizer, called the way every Stable Diffusion pipeline calls it:
//! `tokenizer(prompts, padding="max_length", max_length=77, truncation=True)`.
//!
//! The pipeline is the one `tokenizer.json` describes (testdata/vectors/README.md §5.2); folders that
//! only carry `vocab.json` + `merges.txt` (most published SD repositories) get the same pipeline built
//! in code. Begin/end/padding are added here rather than by the file's post-processor so the
//! truncation rule (`[bos] + first max_length-2 tokens + [eos]`) holds whatever the file says.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{replace::ReplacePattern, Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::checkpoint::TokenizerSource;
use crate::{Error, Result};
use std::str::FromStr;

const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
/// What CLIP's text encoders were trained with (and what SD's `tokenizer_config.json` says).
const DEFAULT_MAX_LENGTH: usize = 77;

/// CLIP's pre-tokenisation pattern (README §5.2 point 3); the matches are kept, the rest dropped.
const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One row of `max_length` values per prompt (token ids, or attention-mask bits).
pub type TokenRows = Vec<Vec<u32>>;

/// A CLIP tokenizer with its special ids and fixed sequence length.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

/// The token fields of `tokenizer_config.json` / `special_tokens_map.json`: either a plain string or
/// a serialised `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenField {
    Plain(String),
    Added { content: String },
}

impl TokenField {
    fn content(&self) -> &str {
        match self {
            TokenField::Plain(s) => s,
            TokenField::Added { content } => content,
        }
    }
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    bos_token: Option<TokenField>,
    eos_token: Option<TokenField>,
    pad_token: Option<TokenField>,
    unk_token: Option<TokenField>,
    /// A float because transformers writes `1e30` for "no limit".
    model_max_length: Option<f64>,
}

impl TokenizerConfig {
    /// Read an optional JSON config; a missing file is an empty config.
    fn read_optional(source: &TokenizerSource, name: &str) -> Result<TokenizerConfig> {
        if !source.has_file(name) {
            return Ok(TokenizerConfig::default());
        }
        let text = source.read_file(name)?;
        serde_json::from_str(&text).map_err(|e| Error::invalid_file(origin(source, name), e.to_string()))
    }

    /// Fields of `self` win; `other` fills the gaps.
    fn or(self, other: TokenizerConfig) -> TokenizerConfig {
        TokenizerConfig {
            bos_token: self.bos_token.or(other.bos_token),
            eos_token: self.eos_token.or(other.eos_token),
            pad_token: self.pad_token.or(other.pad_token),
            unk_token: self.unk_token.or(other.unk_token),
            model_max_length: self.model_max_length.or(other.model_max_length),
        }
    }
}

impl ClipTokenizer {
    /// Load a tokenizer folder (a diffusers `tokenizer/` or `tokenizer_2/`).
    ///
    /// `pad_override` replaces the folder's pad token, as `CLIPTokenizer.from_pretrained(dir,
    /// pad_token=...)` does. A pad token other than BOS/EOS (SD2 and SDXL `tokenizer_2` use `!`) is
    /// cut out of prompts as a special token, so every `!` in a prompt becomes its own pad id — what
    /// diffusers really does.
    pub fn from_folder(dir: &Path, pad_override: Option<&str>) -> Result<ClipTokenizer> {
        Self::from_source(&TokenizerSource::Folder(dir.to_path_buf()), pad_override)
    }

    /// Load from a tokenizer folder or from files embedded in a single-file checkpoint.
    pub fn from_source(source: &TokenizerSource, pad_override: Option<&str>) -> Result<ClipTokenizer> {
        let config = TokenizerConfig::read_optional(source, "tokenizer_config.json")?
            .or(TokenizerConfig::read_optional(source, "special_tokens_map.json")?);
        let config_path = origin(source, "tokenizer_config.json");

        let bos = config.bos_token.as_ref().map_or(DEFAULT_BOS, TokenField::content).to_string();
        let eos = config.eos_token.as_ref().map_or(DEFAULT_EOS, TokenField::content).to_string();
        let unk = config.unk_token.as_ref().map_or(eos.as_str(), TokenField::content).to_string();
        let pad = match pad_override {
            Some(p) => p.to_string(),
            None => config.pad_token.as_ref().map_or(eos.as_str(), TokenField::content).to_string(),
        };
        let max_length = match config.model_max_length {
            None => DEFAULT_MAX_LENGTH,
            Some(n) if n.fract() == 0.0 && (3.0..=4096.0).contains(&n) => n as usize,
            Some(n) => {
                return Err(Error::invalid_file(
                    &config_path,
                    format!("model_max_length {n} is not a usable sequence length (CLIP text encoders use 77)"),
                ))
            }
        };

        let (mut tokenizer, file) = load_pipeline(source, &unk)?;
        // A truncation/padding setting in the file would fight the explicit rule of `encode_batch`
        // (its post-processor is harmless: `encode_batch` encodes without special tokens).
        tokenizer.with_truncation(None).map_err(|e| Error::invalid_file(&file, e.to_string()))?;
        tokenizer.with_padding(None);

        let special: Vec<AddedToken> = [&bos, &eos, &pad].iter().map(|t| AddedToken::from(t.as_str(), true)).collect();
        // Look the ids up first: adding an unknown special token would invent an id the text
        // encoder's embedding table does not have.
        let id_of = |token: &str, role: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                Error::invalid_file(
                    &file,
                    format!("the {role} token `{token}` is not in the vocabulary; check {}", config_path.display()),
                )
            })
        };
        let (bos_id, eos_id, pad_id) = (id_of(&bos, "begin")?, id_of(&eos, "end")?, id_of(&pad, "padding")?);
        tokenizer.add_special_tokens(&special);

        Ok(ClipTokenizer { tokenizer, bos_id, eos_id, pad_id, max_length })
    }

    /// Token ids and attention masks, each `max_length` long: `[bos] + first max_length-2 tokens +
    /// [eos]`, then the pad id; the mask is 1 from BOS through EOS and 0 on padding.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<(TokenRows, TokenRows)> {
        let mut all_ids = Vec::with_capacity(prompts.len());
        let mut all_masks = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let encoding = self
                .tokenizer
                .encode(*prompt, false)
                .map_err(|e| Error::param("prompt", format!("cannot tokenize {prompt:?}: {e}")))?;
            let body = encoding.get_ids();
            let body = &body[..body.len().min(self.max_length - 2)];

            let mut ids = Vec::with_capacity(self.max_length);
            ids.push(self.bos_id);
            ids.extend_from_slice(body);
            ids.push(self.eos_id);
            let used = ids.len();
            ids.resize(self.max_length, self.pad_id);

            let mut mask = vec![1u32; used];
            mask.resize(self.max_length, 0);
            all_ids.push(ids);
            all_masks.push(mask);
        }
        Ok((all_ids, all_masks))
    }

    /// The fixed sequence length (`model_max_length`, 77 for every CLIP tokenizer SD uses).
    pub fn max_length(&self) -> usize {
        self.max_length
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

/// The tokenization pipeline of a folder: `tokenizer.json` if there is one, else CLIP's pipeline
/// built around `vocab.json` + `merges.txt`. Returns it with the file it came from (for errors).
fn load_pipeline(source: &TokenizerSource, unk: &str) -> Result<(Tokenizer, PathBuf)> {
    if source.has_file("tokenizer.json") {
        let path = origin(source, "tokenizer.json");
        let text = source.read_file("tokenizer.json")?;
        let tokenizer = Tokenizer::from_str(&text).map_err(|e| Error::invalid_file(&path, e.to_string()))?;
        return Ok((tokenizer, path));
    }
    if source.has_file("vocab.json") && source.has_file("merges.txt") {
        let path = origin(source, "vocab.json");
        let vocab = source.read_file("vocab.json")?;
        let merges = source.read_file("merges.txt")?;
        return Ok((clip_pipeline_from_bpe(&vocab, &merges, unk, &path)?, path));
    }
    Err(Error::missing_file(
        origin(source, "tokenizer.json"),
        "a CLIP tokenizer folder (diffusers `tokenizer/` or `tokenizer_2/`) must contain tokenizer.json, \
         or vocab.json together with merges.txt",
    ))
}

/// The path to name in errors about a tokenizer file.
fn origin(source: &TokenizerSource, name: &str) -> PathBuf {
    match source {
        TokenizerSource::Folder(dir) => dir.join(name),
        TokenizerSource::Embedded { checkpoint, .. } => checkpoint.join(name),
    }
}

/// CLIP's pipeline (README §5.2 points 2-4) around a BPE vocabulary and merge list: the same
/// normaliser, pre-tokeniser and model that transformers writes into `tokenizer.json`.
fn clip_pipeline_from_bpe(vocab: &str, merges: &str, unk: &str, origin: &Path) -> Result<Tokenizer> {
    let vocab: std::collections::HashMap<String, u32> =
        serde_json::from_str(vocab).map_err(|e| Error::invalid_file(origin, format!("vocab.json: {e}")))?;
    let mut merge_list = Vec::new();
    for (i, line) in merges.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let (a, b) = line
            .split_once(' ')
            .ok_or_else(|| Error::invalid_file(origin, format!("merges.txt line {} is not two symbols: {line:?}", i + 1)))?;
        merge_list.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merge_list)
        .unk_token(unk.to_string())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_string())
        .build()
        .map_err(|e| Error::invalid_file(origin, format!("vocab.json with merges.txt: {e}")))?;

    // Errors below come from constant patterns, never from the user's files.
    let internal = |e: tokenizers::Error| Error::Unsupported(format!("building CLIP's tokenizer pipeline: {e}"));
    let normalizer = NormalizerSequence::new(vec![
        NFC.into(),
        Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(internal)?.into(),
        Lowercase.into(),
    ]);
    let pre_tokenizer = PreTokenizerSequence::new(vec![
        Split::new(SplitPattern::Regex(CLIP_SPLIT_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(internal)?
            .into(),
        ByteLevel::new(false, true, true).into(),
    ]);

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(normalizer));
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
    }

    fn clip() -> ClipTokenizer {
        ClipTokenizer::from_folder(&vectors().join("models/clip_tokenizer"), None).unwrap()
    }

    /// The ids up to and including EOS.
    fn body(tok: &ClipTokenizer, prompt: &str) -> Vec<u32> {
        let (ids, mask) = tok.encode_batch(&[prompt]).unwrap();
        let used = mask[0].iter().filter(|&&m| m == 1).count();
        ids[0][..used].to_vec()
    }

    #[test]
    fn photo_of_a_cat_matches_published_clip_ids() {
        let tok = clip();
        let (ids, mask) = tok.encode_batch(&["a photo of a cat"]).unwrap();
        assert_eq!(&ids[0][..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
        assert!(ids[0][7..].iter().all(|&i| i == 49407), "padded with <|endoftext|>");
        assert_eq!(ids[0].len(), 77);
        assert_eq!(mask[0].iter().sum::<u32>(), 7);
        assert_eq!(&mask[0][..8], &[1, 1, 1, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn exclamation_pad_token_splits_every_exclamation_mark() {
        let dir = vectors().join("models/clip_tokenizer");
        let eot = ClipTokenizer::from_folder(&dir, None).unwrap();
        let bang = ClipTokenizer::from_folder(&dir, Some("!")).unwrap();
        assert_eq!(bang.pad_id(), 0);

        let wow = eot.tokenizer.token_to_id("wow</w>").unwrap();
        let bangbang = eot.tokenizer.token_to_id("!!</w>").unwrap();
        assert_eq!(body(&eot, "wow!!"), vec![49406, wow, bangbang, 49407]);
        assert_eq!(body(&bang, "wow!!"), vec![49406, wow, 0, 0, 49407]);

        let (ids, mask) = bang.encode_batch(&["wow!!"]).unwrap();
        assert!(ids[0][5..].iter().all(|&i| i == 0), "padded with `!` (id 0)");
        assert_eq!(mask[0].iter().sum::<u32>(), 5, "the `!` tokens inside the prompt are not padding");
    }

    #[test]
    fn long_prompts_are_cut_to_75_tokens_between_bos_and_eos() {
        let tok = clip();
        let prompt = "cat ".repeat(100);
        let (ids, mask) = tok.encode_batch(&[prompt.as_str(), ""]).unwrap();
        assert_eq!(ids[0].len(), 77);
        assert_eq!(ids[0][0], 49406);
        assert!(ids[0][1..76].iter().all(|&i| i == 2368));
        assert_eq!(ids[0][76], 49407);
        assert!(mask[0].iter().all(|&m| m == 1));
        // The empty prompt is just BOS, EOS.
        assert_eq!(&ids[1][..2], &[49406, 49407]);
        assert_eq!(mask[1].iter().sum::<u32>(), 2);
    }

    #[test]
    fn vocab_and_merges_alone_tokenize_like_tokenizer_json() {
        let src = vectors().join("models/clip_tokenizer");
        let bare = tempfile::tempdir().unwrap();
        for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), bare.path().join(f)).unwrap();
        }
        let prompts = [
            "a painting of a squirrel eating a burger",
            "Ünïcödé  café\tnaïve 東京 🙂!!",
            "don't panic: it's only 3.14 apples &amp; 2 pears <|endoftext|> after",
            "",
        ];
        for pad in [None, Some("!")] {
            let from_json = ClipTokenizer::from_folder(&src, pad).unwrap();
            let from_bpe = ClipTokenizer::from_folder(bare.path(), pad).unwrap();
            assert_eq!(from_json.encode_batch(&prompts).unwrap(), from_bpe.encode_batch(&prompts).unwrap());
        }
    }

    #[test]
    fn missing_tokenizer_files_name_tokenizer_json() {
        let empty = tempfile::tempdir().unwrap();
        let err = ClipTokenizer::from_folder(empty.path(), None).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, Error::MissingFile { .. }), "{msg}");
        assert!(msg.contains("tokenizer.json") && msg.contains("vocab.json"), "{msg}");
    }

    #[test]
    fn unknown_pad_token_is_refused() {
        let dir = vectors().join("models/clip_tokenizer");
        let err = ClipTokenizer::from_folder(&dir, Some("<|pad|>")).err().unwrap();
        assert!(err.to_string().contains("<|pad|>"), "{err}");
    }

    #[test]
    fn model_max_length_from_config_sets_the_length() {
        let src = vectors().join("models/sd_tiny/tokenizer");
        let dir = tempfile::tempdir().unwrap();
        for f in ["vocab.json", "merges.txt"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"model_max_length": 16, "pad_token": null}"#)
            .unwrap();
        let tok = ClipTokenizer::from_folder(dir.path(), None).unwrap();
        let (ids, _) = tok.encode_batch(&["a cat"]).unwrap();
        assert_eq!(ids[0].len(), 16);
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (561, 562, 562));

        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"model_max_length": 1e30}"#).unwrap();
        let err = ClipTokenizer::from_folder(dir.path(), None).err().unwrap();
        assert!(err.to_string().contains("model_max_length"), "{err}");
    }
}
