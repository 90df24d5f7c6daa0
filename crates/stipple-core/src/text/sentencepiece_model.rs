//! The parts of a SentencePiece model file (`spiece.model`, a serialized `sentencepiece.ModelProto`)
//! that a tokenizer needs: the pieces with their scores and types, the model type, the unknown
//! piece's id and the normaliser's precompiled character map.
//!
//! No protobuf crate: three fields of one message are read (`pieces` = 1, `trainer_spec` = 2,
//! `normalizer_spec` = 3, field numbers from sentencepiece's `sentencepiece_model.proto`), so a
//! small wire-format reader is simpler than a code generator and a dependency. Everything is
//! checked: a truncated or foreign file is an error naming the file, every length is checked
//! against the bytes left before anything is copied (allocations stay within the file's size), and
//! the character map's trie is walked once so that normalising text cannot index outside it.

use std::path::Path;

use crate::{Error, Result};

/// One vocabulary entry (`ModelProto.SentencePiece`).
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePiece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    /// `<pad>`, `</s>`, `<s>`: never produced from text by the model itself.
    Control,
    /// Pieces the trainer was told to keep whole.
    UserDefined,
    Unused,
    Byte,
}

/// `TrainerSpec.ModelType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
    Word,
    Char,
}

/// A parsed `spiece.model`.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    pub pieces: Vec<SentencePiece>,
    pub model_type: ModelType,
    /// `TrainerSpec.unk_id` (proto default 0), checked to be a piece's index.
    pub unk_id: usize,
    /// `NormalizerSpec.precompiled_charsmap`: empty when the model normalises nothing.
    pub precompiled_charsmap: Vec<u8>,
}

impl SentencePieceModel {
    /// Read and parse a model file.
    pub fn from_file(path: &Path) -> Result<SentencePieceModel> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse a model's bytes; `origin` names the file in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<SentencePieceModel> {
        parse_model(bytes).map_err(|reason| {
            Error::invalid_file(
                origin,
                format!("not a usable SentencePiece model ({reason}); the file may be truncated or not a `spiece.model`"),
            )
        })
    }
}

fn parse_model(bytes: &[u8]) -> std::result::Result<SentencePieceModel, String> {
    let mut pieces = Vec::new();
    let mut model_type = ModelType::Unigram;
    let mut unk_id: i64 = 0;
    let mut precompiled_charsmap = Vec::new();
    let (mut has_trainer_spec, mut has_normalizer_spec) = (false, false);
    let mut message = WireReader::new(bytes);
    while let Some((field, value)) = message.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => pieces.push(parse_piece(b).map_err(|e| format!("piece {}: {e}", pieces.len()))?),
            (2, Value::Bytes(b)) => {
                has_trainer_spec = true;
                let mut spec = WireReader::new(b);
                while let Some((field, value)) = spec.next_field()? {
                    match (field, value) {
                        (3, Value::Varint(v)) => {
                            model_type = match v {
                                1 => ModelType::Unigram,
                                2 => ModelType::Bpe,
                                3 => ModelType::Word,
                                4 => ModelType::Char,
                                _ => return Err(format!("unknown model type {v}")),
                            }
                        }
                        // int32 fields are sign-extended to 64 bits on the wire.
                        (40, Value::Varint(v)) => unk_id = v as i64,
                        _ => {}
                    }
                }
            }
            (3, Value::Bytes(b)) => {
                has_normalizer_spec = true;
                let mut spec = WireReader::new(b);
                while let Some((field, value)) = spec.next_field()? {
                    if let (2, Value::Bytes(map)) = (field, value) {
                        precompiled_charsmap = map.to_vec();
                    }
                }
            }
            (1..=3, _) => return Err(format!("field {field} has the wrong wire type")),
            _ => {}
        }
    }
    if pieces.is_empty() {
        return Err("no pieces".into());
    }
    // SentencePiece writes both specs after the pieces: a file cut at a field boundary lacks them.
    if !has_trainer_spec || !has_normalizer_spec {
        let missing = if has_trainer_spec { "normalizer_spec" } else { "trainer_spec" };
        return Err(format!("no {missing}"));
    }
    // SentencePiece refuses these on load too; the tokenizer's lookup tables assume neither.
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = pieces.iter().find(|p| !seen.insert(p.piece.as_str())) {
        return Err(format!("the piece {:?} appears twice", dup.piece));
    }
    let unk_id = usize::try_from(unk_id)
        .ok()
        .filter(|&id| id < pieces.len())
        .ok_or_else(|| format!("unk_id {unk_id} is not one of the {} pieces", pieces.len()))?;
    if !precompiled_charsmap.is_empty() {
        check_charsmap(&precompiled_charsmap).map_err(|e| format!("precompiled_charsmap: {e}"))?;
    }
    Ok(SentencePieceModel { pieces, model_type, unk_id, precompiled_charsmap })
}

fn parse_piece(bytes: &[u8]) -> std::result::Result<SentencePiece, String> {
    let (mut piece, mut score, mut kind) = (None, 0.0, PieceKind::Normal);
    let mut reader = WireReader::new(bytes);
    while let Some((field, value)) = reader.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => piece = Some(String::from_utf8(b.to_vec()).map_err(|_| "text is not UTF-8")?),
            (2, Value::Fixed32(bits)) => score = f32::from_le_bytes(bits),
            (3, Value::Varint(v)) => {
                kind = match v {
                    1 => PieceKind::Normal,
                    2 => PieceKind::Unknown,
                    3 => PieceKind::Control,
                    4 => PieceKind::UserDefined,
                    5 => PieceKind::Unused,
                    6 => PieceKind::Byte,
                    _ => return Err(format!("unknown piece type {v}")),
                }
            }
            (1..=3, _) => return Err(format!("field {field} has the wrong wire type")),
            _ => {}
        }
    }
    let piece = piece.filter(|p| !p.is_empty()).ok_or("no text")?;
    if !score.is_finite() {
        return Err(format!("score {score} of {piece:?} is not a finite number"));
    }
    Ok(SentencePiece { piece, score, kind })
}

/// One field's value as the protobuf wire format carries it.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// Reads the fields of one protobuf message.
struct WireReader<'a> {
    rest: &'a [u8],
}

impl<'a> WireReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        WireReader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!("a field needs {n} bytes but the message has {} left", self.rest.len()));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first().ok_or("empty read")?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    /// The next field number and value, or `None` at the end of the message.
    fn next_field(&mut self) -> std::result::Result<Option<(u64, Value<'a>)>, String> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(usize::try_from(len).map_err(|_| "length out of range")?)?)
            }
            5 => Value::Fixed32(self.take(4)?.try_into().map_err(|_| "short read")?),
            wire_type => return Err(format!("wire type {wire_type} (field {}) is not used by SentencePiece", key >> 3)),
        };
        Ok(Some((key >> 3, value)))
    }
}

/// Check a precompiled character map (SentencePiece's normaliser: a little-endian u32 trie size,
/// a darts-clone double-array trie of u32 units, then NUL-separated replacement strings) the way
/// `spm_precompiled` will read it. That crate indexes the trie and the strings without bounds
/// checks, so every node reachable from the root must keep all 255 child slots inside the array
/// and every leaf must point at a character boundary of the strings.
fn check_charsmap(map: &[u8]) -> std::result::Result<(), String> {
    let le_u32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let trie_size = map.get(..4).map(le_u32).ok_or("shorter than 4 bytes")?;
    if trie_size % 4 != 0 || trie_size == 0 || trie_size > map.len() - 4 {
        return Err(format!("trie size {trie_size} does not fit the {} bytes", map.len()));
    }
    let units: Vec<usize> = map[4..4 + trie_size].chunks_exact(4).map(le_u32).collect();
    let normalized = std::str::from_utf8(&map[4 + trie_size..]).map_err(|_| "replacement strings are not UTF-8")?;
    // darts-clone's unit layout, as spm_precompiled decodes it.
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let label = |u: usize| u & ((1 << 31) | 0xff);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let in_bounds = |base: usize| (base | 0xff) < units.len();

    let root = offset(units[0]);
    let mut visited = vec![false; units.len()];
    let mut stack = vec![root];
    while let Some(base) = stack.pop() {
        if !in_bounds(base) {
            return Err("the trie points outside itself".into());
        }
        if std::mem::replace(&mut visited[base], true) {
            continue;
        }
        for byte in 1..=0xffusize {
            let child = base ^ byte;
            let unit = units[child];
            if label(unit) != byte {
                continue;
            }
            let next = child ^ offset(unit);
            if !in_bounds(next) {
                return Err("the trie points outside itself".into());
            }
            if has_leaf(unit) {
                let start = units[next] & ((1 << 31) - 1);
                if !normalized.is_char_boundary(start) {
                    return Err(format!("a replacement starts at {start}, not a character of the strings"));
                }
            }
            stack.push(next);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Protobuf encoding helpers for hand-built model files.
    pub fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    pub fn bytes_field(field: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = varint(field << 3 | 2);
        out.extend(varint(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    pub fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut p = bytes_field(1, text.as_bytes());
        p.extend(varint(2 << 3 | 5));
        p.extend(score.to_le_bytes());
        p.extend(varint(3 << 3));
        p.extend(varint(kind));
        bytes_field(1, &p)
    }

    /// A model file: `pieces` as (text, score, type), then the trainer spec (model type, unk id)
    /// and a normaliser spec with the precompiled character map `charsmap`.
    pub fn model_file(pieces: &[(&str, f32, u64)], model_type: u64, unk_id: i64, charsmap: &[u8]) -> Vec<u8> {
        let mut file: Vec<u8> = pieces.iter().flat_map(|&(text, score, kind)| piece(text, score, kind)).collect();
        let mut spec = varint(3 << 3);
        spec.extend(varint(model_type));
        spec.extend(varint(40 << 3));
        spec.extend(varint(unk_id as u64));
        file.extend(bytes_field(2, &spec));
        file.extend(bytes_field(3, &bytes_field(2, charsmap)));
        file
    }

    pub const T5_PIECES: [(&str, f32, u64); 4] = [("<pad>", 0.0, 3), ("</s>", 0.0, 3), ("<unk>", 0.0, 2), ("▁a", -1.5, 1)];

    fn tiny_model(unk_id: i64) -> Vec<u8> {
        model_file(&T5_PIECES, 1, unk_id, &[])
    }

    fn parse(bytes: &[u8]) -> Result<SentencePieceModel> {
        SentencePieceModel::from_bytes(bytes, Path::new("dir/spiece.model"))
    }

    #[test]
    fn reads_pieces_scores_types_and_unk_id() {
        let model = parse(&tiny_model(2)).unwrap();
        assert_eq!(model.pieces.len(), 4);
        assert_eq!(model.pieces[3], SentencePiece { piece: "▁a".into(), score: -1.5, kind: PieceKind::Normal });
        assert_eq!(model.pieces[0].kind, PieceKind::Control);
        assert_eq!((model.unk_id, model.model_type), (2, ModelType::Unigram));
        assert!(model.precompiled_charsmap.is_empty());
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut file = varint(7 << 3 | 1); // a fixed64 field
        file.extend([0; 8]);
        file.extend(tiny_model(2));
        file.extend(bytes_field(4, b"self test data"));
        assert_eq!(parse(&file).unwrap().pieces.len(), 4);
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file() {
        let file = tiny_model(2);
        for len in 0..file.len() {
            let err = parse(&file[..len]).unwrap_err().to_string();
            assert!(err.contains("dir/spiece.model") && err.contains("truncated"), "{len}: {err}");
        }
        assert!(parse(&[]).unwrap_err().to_string().contains("no pieces"));
    }

    #[test]
    fn garbage_and_bad_values_are_refused() {
        // A length far beyond the file must not allocate or panic.
        let mut huge = varint(1 << 3 | 2);
        huge.extend(varint(u64::MAX >> 1));
        assert!(parse(&huge).is_err());
        assert!(parse(&[0xff; 16]).is_err(), "an unterminated varint");
        assert!(parse(b"{\"version\": \"1.0\"}").is_err(), "a tokenizer.json is no model");
        let err = parse(&tiny_model(9)).unwrap_err().to_string();
        assert!(err.contains("unk_id 9"), "{err}");
        assert!(parse(&tiny_model(-1)).unwrap_err().to_string().contains("unk_id -1"));
        let mut bad_type = piece("x", 0.0, 9);
        bad_type.extend(tiny_model(2));
        assert!(parse(&bad_type).unwrap_err().to_string().contains("piece type 9"));
        let twice = model_file(&[T5_PIECES[0], T5_PIECES[1], T5_PIECES[0]], 1, 1, &[]);
        assert!(parse(&twice).unwrap_err().to_string().contains("twice"));
        let nan = model_file(&[T5_PIECES[0], ("x", f32::NAN, 1)], 1, 0, &[]);
        assert!(parse(&nan).unwrap_err().to_string().contains("finite"));
        let empty_piece = model_file(&[T5_PIECES[0], ("", 0.0, 1)], 1, 0, &[]);
        assert!(parse(&empty_piece).unwrap_err().to_string().contains("no text"));
        assert_eq!(parse(&model_file(&T5_PIECES, 2, 2, &[])).unwrap().model_type, ModelType::Bpe);
    }

    #[test]
    fn charsmaps_that_would_index_outside_themselves_are_refused() {
        let with_map = |map: &[u8]| parse(&model_file(&T5_PIECES, 1, 2, map));
        assert!(with_map(&[1, 0]).is_err(), "shorter than the size");
        assert!(with_map(&[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]).is_err(), "size past the end");
        // One unit whose root offset points past the array.
        assert!(with_map(&[4, 0, 0, 0, 0, 0x10, 0, 0]).unwrap_err().to_string().contains("outside"));
        // 256 zero units: a root with no children is a valid (empty) map.
        let mut empty_trie = 1024u32.to_le_bytes().to_vec();
        empty_trie.extend([0; 1024]);
        assert!(with_map(&empty_trie).is_ok());
    }
}
