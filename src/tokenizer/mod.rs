//! Text → token ids: a Hugging Face `tokenizer.json` through the `tokenizers` crate (or the one
//! a GGUF file's metadata describes, [`gguf`]), or the built-in byte-level tokenizer the tiny
//! presets use when no tokenizer is given — with the special tokens and the chat template
//! ([`chat`]) the model's files name, read once, where the tokenizer is read.
//!
//! Which special tokens encoding adds is the tokenizer's own rule, as in transformers 5: the
//! tokenizer.json post-processor (a `TemplateProcessing` that puts `<s>` first, BERT's
//! `[CLS] … [SEP]`, or nothing), for GGUF files the `tokenizer.ggml.add_bos_token` /
//! `add_eos_token` flags written into that post-processor; and a BOS is never added in front of a
//! text that already starts with one. `encode` (no special tokens) also returns each token's *end*
//! in characters, for the scorers that place the prompt/completion boundary by text offset.

pub mod chat;
mod config;
pub mod gguf;

use std::path::Path;

use crate::error::{Error, Result};
use chat::ChatTemplate;
use config::TokenizerConfig;

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
        /// The chat template's Jinja source, when the model has one.
        chat_template: Option<String>,
    },
}

const BYTE_OFFSET: u32 = 8;

/// [`SpecialTokens`] as the tokenizer's texts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTexts {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
}

/// A token id and the character offset at which its text ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    pub char_end: usize,
}

impl TextTokenizer {
    /// A tokenizer.json, with the special tokens and chat template of the tokenizer_config.json
    /// (and chat_template.jinja) beside it.
    pub fn from_file(path: &Path) -> Result<Self> {
        // Read through `fsutil`: the browser registers its tokenizer in memory.
        let tokenizer = crate::fsutil::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| e.to_string()))
            .map_err(|e| Error::input(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        let config = TokenizerConfig::read(path.parent().unwrap_or(Path::new(".")))?;
        Self::new(tokenizer, config, &path.display().to_string())
    }

    /// The tokenizer stored in a GGUF file's metadata, with its special tokens and chat template.
    pub fn from_gguf(gguf: &crate::gguf::Gguf) -> Result<Self> {
        let json = gguf.tokenizer_json()?;
        let origin = format!("{} (tokenizer metadata)", gguf.path.display());
        let tokenizer = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| Error::input(format!("{origin}: cannot build the tokenizer: {e}")))?;
        let config = TokenizerConfig {
            bos: gguf.special_token("bos"),
            eos: gguf.special_token("eos"),
            pad: gguf.special_token("padding"),
            chat_template: gguf.chat_template().map(String::from),
        };
        Self::new(tokenizer, config, &origin)
    }

    fn new(
        mut tokenizer: tokenizers::Tokenizer,
        named_tokens: TokenizerConfig,
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
            chat_template: named_tokens.chat_template,
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

    /// The text of `ids`, special tokens left out (as transformers' `decode(...,
    /// skip_special_tokens=True)`); bytes that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            TextTokenizer::Bytes => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .filter(|&&id| (BYTE_OFFSET..BYTE_OFFSET + 256).contains(&id))
                    .map(|&id| (id - BYTE_OFFSET) as u8)
                    .collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            TextTokenizer::Hf { tokenizer, .. } => tokenizer
                .decode(ids, true)
                .map_err(|e| Error::runtime(format!("tokenizer failed to decode: {e}"))),
        }
    }

    /// The id of a token's text in the vocabulary, if it is one token.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match self {
            TextTokenizer::Bytes => None,
            TextTokenizer::Hf { tokenizer, .. } => tokenizer.token_to_id(text),
        }
    }

    /// The end-of-sequence token as text (what TRL appends to plain completions), if it has one.
    pub fn eos_text(&self) -> Option<String> {
        match self {
            TextTokenizer::Bytes => None,
            TextTokenizer::Hf {
                tokenizer, special, ..
            } => tokenizer.id_to_token(special.eos?),
        }
    }

    /// The special tokens as text (what an exported tokenizer_config.json names), each `None`
    /// where the tokenizer has none. The built-in tokenizer has no texts to name.
    pub fn special_texts(&self) -> SpecialTexts {
        let TextTokenizer::Hf {
            tokenizer, special, ..
        } = self
        else {
            return SpecialTexts::default();
        };
        let text = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
        SpecialTexts {
            bos: text(special.bos),
            eos: text(special.eos),
            pad: text(Some(special.pad)),
        }
    }

    /// The chat template's Jinja source, if the model has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        match self {
            TextTokenizer::Hf { chat_template, .. } => chat_template.as_deref(),
            TextTokenizer::Bytes => None,
        }
    }

    /// The model's chat template, compiled, with its BOS and EOS texts (which templates use).
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        let Some(source) = self.chat_template_source() else {
            return Ok(None);
        };
        let texts = self.special_texts();
        ChatTemplate::new(
            source,
            texts.bos.as_deref().unwrap_or(""),
            texts.eos.as_deref().unwrap_or(""),
        )
        .map(Some)
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
