//! Text → token ids: a Hugging Face `tokenizer.json` through the `tokenizers` crate, or the
//! built-in byte-level tokenizer the tiny presets use when no tokenizer is given.
//!
//! Which special tokens encoding adds is the tokenizer's own rule, as in transformers 5: the
//! tokenizer.json post-processor (a `TemplateProcessing` that puts `<s>` first, BERT's
//! `[CLS] … [SEP]`, or nothing), for GGUF files the `tokenizer.ggml.add_bos_token` /
//! `add_eos_token` flags written into that post-processor; and a BOS is never added in front of a
//! text that already starts with one. `encode` (no special tokens) also returns each token's *end*
//! in characters, for the scorers that place the prompt/completion boundary by text offset.

use std::path::Path;

use crate::error::{Error, Result};

/// The special tokens a tokenizer names. `bos` is the token the model files call beginning of
/// sequence (what chat templates and benchmarks' scoring prefix refer to), whether or not encoding
/// adds it; `cls` / `sep` are placed by the classification encoders.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialTokens {
    pub pad: u32,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub cls: Option<u32>,
    pub sep: Option<u32>,
}

pub enum TextTokenizer {
    /// 8 reserved ids then one id per byte: `<pad>`=0, `<bos>`=1, `<eos>`=2, `[CLS]`=3, `[SEP]`=4.
    Bytes,
    Hf {
        tokenizer: Box<tokenizers::Tokenizer>,
        special: SpecialTokens,
    },
}

const BYTE_OFFSET: u32 = 8;

/// Special tokens a model's own files name (tokenizer_config.json, GGUF metadata).
#[derive(Default)]
struct NamedTokens {
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
}

/// A token id and the character offset at which its text ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    pub char_end: usize,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        // Read through `files`: the browser registers its tokenizer in memory.
        let tokenizer = crate::data::files::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| e.to_string()))
            .map_err(|e| Error::input(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        // tokenizer_config.json, next to it, names the special tokens when the model has one.
        let config = path
            .parent()
            .map(|dir| dir.join("tokenizer_config.json"))
            .and_then(|p| crate::data::files::read(&p).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let named = |key: &str| -> Option<String> {
            let value = config.as_ref()?.get(key)?;
            value
                .as_str()
                .or_else(|| value.get("content")?.as_str())
                .map(String::from)
        };
        let named_tokens = NamedTokens {
            bos: named("bos_token"),
            eos: named("eos_token"),
            pad: named("pad_token"),
        };
        Self::new(tokenizer, named_tokens, &path.display().to_string())
    }

    /// The tokenizer stored in a GGUF file's metadata, with its special tokens.
    pub fn from_gguf(gguf: &crate::gguf::Gguf) -> Result<Self> {
        let json = gguf.tokenizer_json()?;
        let origin = format!("{} (tokenizer metadata)", gguf.path.display());
        let tokenizer = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| Error::input(format!("{origin}: cannot build the tokenizer: {e}")))?;
        let named_tokens = NamedTokens {
            bos: gguf.special_token("bos"),
            eos: gguf.special_token("eos"),
            pad: gguf.special_token("padding"),
        };
        Self::new(tokenizer, named_tokens, &origin)
    }

    fn new(
        mut tokenizer: tokenizers::Tokenizer,
        named_tokens: NamedTokens,
        origin: &str,
    ) -> Result<Self> {
        // Some tokenizer.json files force padding/truncation (MiniLM pads to 128); we batch and
        // truncate ourselves, with the prompt/completion rules, so both are switched off.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::input(format!("{origin}: {e}")))?;
        // As transformers does, every named special token in the vocabulary becomes a special
        // added token, so its text encodes to its id whatever the model would split it into
        // (TRL appends the EOS to plain completions as text).
        let named: Vec<tokenizers::AddedToken> =
            [&named_tokens.bos, &named_tokens.eos, &named_tokens.pad]
                .into_iter()
                .flatten()
                .filter(|name| tokenizer.token_to_id(name).is_some())
                .map(|name| tokenizers::AddedToken::from(name.clone(), true))
                .collect();
        tokenizer.add_special_tokens(&named);
        let id = |name: &Option<String>| name.as_deref().and_then(|n| tokenizer.token_to_id(n));
        let find = |names: &[&str]| names.iter().find_map(|name| tokenizer.token_to_id(name));
        let eos = id(&named_tokens.eos).or_else(|| {
            find(&[
                "</s>",
                "<|end_of_text|>",
                "<|endoftext|>",
                "<|im_end|>",
                "<eos>",
            ])
        });
        let special = SpecialTokens {
            pad: id(&named_tokens.pad)
                .or_else(|| find(&["<pad>", "[PAD]", "<|pad|>"]))
                .or(eos)
                .unwrap_or(0),
            // Only a named BOS: transformers does not guess one either.
            bos: id(&named_tokens.bos),
            eos,
            cls: find(&["[CLS]", "<cls>"]),
            sep: find(&["[SEP]", "<sep>"]),
        };
        Ok(TextTokenizer::Hf {
            tokenizer: Box::new(tokenizer),
            special,
        })
    }

    /// The underlying Hugging Face tokenizer, if any (for saving it next to exported weights).
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        match self {
            TextTokenizer::Hf { tokenizer, .. } => Some(tokenizer),
            TextTokenizer::Bytes => None,
        }
    }

    pub fn special(&self) -> SpecialTokens {
        match self {
            TextTokenizer::Bytes => SpecialTokens {
                pad: 0,
                bos: Some(1),
                eos: Some(2),
                cls: Some(3),
                sep: Some(4),
            },
            TextTokenizer::Hf { special, .. } => special.clone(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            TextTokenizer::Bytes => (BYTE_OFFSET + 256) as usize,
            TextTokenizer::Hf { tokenizer, .. } => tokenizer.get_vocab_size(true),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            TextTokenizer::Bytes => "built-in byte-level tokenizer (264 ids)".into(),
            TextTokenizer::Hf { tokenizer, .. } => {
                format!("tokenizer.json ({} ids)", tokenizer.get_vocab_size(true))
            }
        }
    }

    /// Tokens of pre-split `words` (no special tokens), each with the index of its word.
    pub fn encode_words(&self, words: &[String]) -> Result<Vec<(u32, usize)>> {
        match self {
            TextTokenizer::Bytes => {
                let mut out = Vec::new();
                for (index, word) in words.iter().enumerate() {
                    // Words joined by spaces, each space belonging to the word before it, so a
                    // word's first token is its own first byte.
                    let last = index + 1 == words.len();
                    let spaced = if last {
                        word.clone()
                    } else {
                        format!("{word} ")
                    };
                    out.extend(spaced.bytes().map(|b| (BYTE_OFFSET + u32::from(b), index)));
                }
                Ok(out)
            }
            TextTokenizer::Hf { tokenizer, .. } => {
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                let encoding = tokenizer
                    .encode(words.as_slice(), false)
                    .map_err(|e| Error::runtime(format!("tokenizer failed: {e}")))?;
                Ok(encoding
                    .get_ids()
                    .iter()
                    .zip(encoding.get_word_ids())
                    .filter_map(|(&id, word)| word.map(|w| (id, w as usize)))
                    .collect())
            }
        }
    }

    /// Token ids of `text`. With `add_special_tokens`, the tokenizer's own special tokens are
    /// added (its post-processor; the built-in tokenizer puts `<bos>` first), except a BOS in
    /// front of a text whose first token already is that BOS.
    pub fn encode_ids(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = match self {
            TextTokenizer::Bytes => {
                let bos = self.special().bos.filter(|_| add_special_tokens);
                bos.into_iter()
                    .chain(text.bytes().map(|b| BYTE_OFFSET + u32::from(b)))
                    .collect()
            }
            TextTokenizer::Hf { tokenizer, .. } => tokenizer
                .encode_fast(text, add_special_tokens)
                .map_err(|e| Error::runtime(format!("tokenizer failed: {e}")))?
                .get_ids()
                .to_vec(),
        };
        if let Some(bos) = self.special().bos
            && add_special_tokens
            && ids.len() >= 2
            && ids[0] == bos
            && ids[1] == bos
        {
            ids.remove(0);
        }
        Ok(ids)
    }

    /// The end-of-sequence token as text (what TRL appends to plain completions), if it has one.
    pub fn eos_text(&self) -> Option<String> {
        match self {
            TextTokenizer::Bytes => None,
            TextTokenizer::Hf { tokenizer, special } => tokenizer.id_to_token(special.eos?),
        }
    }

    /// Tokens of `text` without special tokens, each with the char offset where it ends.
    pub fn encode(&self, text: &str) -> Result<Vec<Token>> {
        match self {
            TextTokenizer::Bytes => {
                let mut tokens = Vec::with_capacity(text.len());
                for (char_index, ch) in text.chars().enumerate() {
                    let mut buf = [0u8; 4];
                    for byte in ch.encode_utf8(&mut buf).bytes() {
                        tokens.push(Token {
                            id: BYTE_OFFSET + u32::from(byte),
                            char_end: char_index + 1,
                        });
                    }
                }
                Ok(tokens)
            }
            TextTokenizer::Hf { tokenizer, .. } => {
                let encoding = tokenizer
                    .encode_char_offsets(text, false)
                    .map_err(|e| Error::runtime(format!("tokenizer failed: {e}")))?;
                Ok(encoding
                    .get_ids()
                    .iter()
                    .zip(encoding.get_offsets())
                    .map(|(&id, &(_, end))| Token { id, char_end: end })
                    .collect())
            }
        }
    }
}
