//! Text → token ids: a Hugging Face `tokenizer.json` through the `tokenizers` crate, or the
//! built-in byte-level tokenizer the tiny presets use when no tokenizer is given.
//!
//! Encoding returns each token's *end* in characters, which is how `encode` draws the exact
//! prompt/completion boundary from a single tokenization of `prompt + completion`.

use std::path::Path;

use crate::error::{Error, Result};

/// Ids of the special tokens we place ourselves (we never let the tokenizer add them, so the
/// layout — `[bos] prompt completion [eos]`, `[cls] text [sep]` — is the same for every tokenizer).
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

/// A token id and the character offset at which its text ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    pub char_end: usize,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::input(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        // Some tokenizer.json files force padding/truncation (MiniLM pads to 128); we batch and
        // truncate ourselves, with the prompt/completion rules, so both are switched off.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        let find = |names: &[&str]| names.iter().find_map(|name| tokenizer.token_to_id(name));
        let eos = find(&[
            "</s>",
            "<|end_of_text|>",
            "<|endoftext|>",
            "<|im_end|>",
            "<eos>",
        ]);
        let special = SpecialTokens {
            pad: find(&["<pad>", "[PAD]", "<|pad|>"]).or(eos).unwrap_or(0),
            bos: find(&["<s>", "<|begin_of_text|>", "<bos>"]),
            eos,
            cls: find(&["[CLS]", "<cls>"]),
            sep: find(&["[SEP]", "<sep>"]),
        };
        Ok(TextTokenizer::Hf {
            tokenizer: Box::new(tokenizer),
            special,
        })
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
