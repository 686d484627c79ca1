//! The tokenizer and chat template a GGUF file carries in its metadata (`tokenizer.ggml.*`), as
//! a Hugging Face tokenizer.json document: byte-level BPE (`tokenizer.ggml.model = gpt2`), and
//! SentencePiece BPE (`llama`: Llama 2, Mistral v0.1, Gemma, Phi-3), built as transformers 5
//! builds it from the same file (`integrations/gguf/gguf_tokenizer_mapping.py`): the merges
//! recovered from the vocabulary when the file lists none (`generate_merges`), byte fallback, and
//! per architecture `LlamaTokenizer`'s Metaspace, `GemmaTokenizer`'s space replacement (merges
//! in file order, whitespace tokens respelled) or Phi-3's prepend-and-replace normalizer.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

/// The pre-tokenizer a `tokenizer.ggml.pre` value stands for, as tokenizer.json JSON.
fn pre_tokenizer(pre: &str) -> Option<serde_json::Value> {
    use serde_json::json;
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // llama.cpp: digits one by one, then the GPT-2 rules.
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({"type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": false},
            byte_level(false)]}),
        _ => return None,
    })
}

/// transformers' `generate_merges` with scores: every split of every token into two tokens of
/// the vocabulary is a merge, ranked by the merged token's score (highest first), then by the
/// lengths of its parts (longer first), ties in vocabulary order.
fn generate_merges(
    order: &[&str],
    vocab: &HashMap<&str, usize>,
    scores: &HashMap<&str, f64>,
) -> Vec<(String, String)> {
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for &merge in order {
        let score = scores.get(merge).copied().unwrap_or(0.0);
        let mut local: Vec<(&str, &str, f64)> = merge
            .char_indices()
            .skip(1)
            .map(|(at, _)| merge.split_at(at))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    // Python's stable sort with reverse=True: descending, equal keys in their first order.
    merges.sort_by(|a, b| {
        let (a, b) = (key(a), key(b));
        b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

const LLAMA3_SPLIT: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

impl Gguf {
    /// The tokenizer in the metadata, as a Hugging Face tokenizer.json document (byte-level BPE,
    /// `tokenizer.ggml.model` = "gpt2"; SentencePiece BPE, "llama"). Control and user-defined
    /// tokens become added tokens.
    pub fn tokenizer_json(&self) -> Result<serde_json::Value> {
        let fail = |what: String| Error::input(format!("{}: {what}", self.path.display()));
        let model = self
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no tokenizer in the metadata (tokenizer.ggml.model)".into()))?;
        match model {
            "gpt2" => self.byte_level_json(),
            "llama" => self.sentencepiece_json(),
            other => Err(fail(format!(
                "tokenizer model {other:?} is not supported (supported: \"gpt2\", byte-level \
                 BPE; \"llama\", SentencePiece BPE); give --tokenizer tokenizer.json"
            ))),
        }
    }

    /// A list of strings in the metadata.
    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.require(key)?
            .as_array()
            .and_then(|items| items.iter().map(Value::as_str).collect())
            .ok_or_else(|| {
                Error::input(format!(
                    "{}: {key:?} is not a list of strings",
                    self.path.display()
                ))
            })
    }

    /// llama.cpp's token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte), normal where the file gives none.
    fn token_types(&self) -> Vec<u64> {
        self.get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|items| items.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default()
    }

    /// SentencePiece BPE, as transformers builds it from the file (see the module docs).
    fn sentencepiece_json(&self) -> Result<serde_json::Value> {
        use serde_json::json;
        let fail = |what: String| Error::input(format!("{}: {what}", self.path.display()));
        #[derive(PartialEq)]
        enum Style {
            Llama,
            Gemma,
            Phi3,
        }
        let style = match self.architecture() {
            Some("gemma" | "gemma2" | "gemma3") => Style::Gemma,
            Some("phi3") => Style::Phi3,
            _ => Style::Llama,
        };
        let mut tokens: Vec<String> = self
            .strings("tokenizer.ggml.tokens")?
            .into_iter()
            .map(String::from)
            .collect();
        if style == Style::Gemma {
            // Gemma files store a token of spaces as spaces; GemmaTokenizer looks up "▁▁".
            for token in &mut tokens {
                if token.contains(' ') && token.trim().is_empty() {
                    *token = "\u{2581}".repeat(token.chars().count());
                }
            }
        }
        let types = self.token_types();
        // Python dicts: a repeated token keeps its first place and its last id (or score).
        let mut vocab: HashMap<&str, usize> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            if vocab.insert(token.as_str(), id).is_none() {
                order.push(token.as_str());
            }
        }
        let merges: Vec<(String, String)> = match self.get("tokenizer.ggml.merges") {
            Some(_) => self
                .strings("tokenizer.ggml.merges")?
                .into_iter()
                .map(|m| {
                    let (l, r) = m.split_once(' ').unwrap_or((m, ""));
                    (l.to_string(), r.to_string())
                })
                .collect(),
            None => {
                // Gemma's scores do not follow its merge order; its file order does.
                let scores: HashMap<&str, f64> = if style == Style::Gemma {
                    tokens
                        .iter()
                        .enumerate()
                        .map(|(id, t)| (t.as_str(), -(id as f64)))
                        .collect()
                } else {
                    let scores: Vec<f64> = self
                        .require("tokenizer.ggml.scores")?
                        .as_array()
                        .and_then(|items| items.iter().map(Value::as_f64).collect())
                        .ok_or_else(|| {
                            fail("\"tokenizer.ggml.scores\" is not a list of numbers".into())
                        })?;
                    if scores.len() != tokens.len() {
                        return Err(fail(format!(
                            "{} scores for {} tokens",
                            scores.len(),
                            tokens.len()
                        )));
                    }
                    tokens.iter().map(String::as_str).zip(scores).collect()
                };
                generate_merges(&order, &vocab, &scores)
            }
        };
        let mut added = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            let kind = types.get(id).copied().unwrap_or(1);
            // Control and unknown tokens are special; user-defined ones plain added tokens.
            if matches!(kind, 2..=4) {
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": kind != 4,
                }));
            }
        }
        let vocab_json: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .map(|(t, id)| (t.to_string(), json!(id)))
            .collect();
        let merges_json: Vec<serde_json::Value> =
            merges.iter().map(|(l, r)| json!([l, r])).collect();
        let replace = json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "});
        let mut decoders = vec![
            replace,
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if style != Style::Gemma {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let (normalizer, pre_tokenizer) = match style {
            Style::Llama => (
                serde_json::Value::Null,
                json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first",
                       "split": false}),
            ),
            Style::Gemma => (
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
                json!({"type": "Split", "pattern": {"String": " "},
                       "behavior": "MergedWithPrevious", "invert": false}),
            ),
            Style::Phi3 => (
                json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "\u{2581}"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]}),
                serde_json::Value::Null,
            ),
        };
        let unk = match style {
            Style::Gemma => json!("<unk>"),
            _ => serde_json::Value::Null,
        };
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            // SentencePiece files that do not say: BOS, as llama.cpp adds it.
            "post_processor": self.template(&token_refs, true).unwrap_or(serde_json::Value::Null),
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab_json, "merges": merges_json},
        }))
    }

    /// Byte-level BPE (`tokenizer.ggml.model` = "gpt2").
    fn byte_level_json(&self) -> Result<serde_json::Value> {
        use serde_json::json;
        let fail = |what: String| Error::input(format!("{}: {what}", self.path.display()));
        let pre_name = self
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let pre = pre_tokenizer(pre_name).ok_or_else(|| {
            fail(format!(
                "pre-tokenizer {pre_name:?} is not supported (supported: default, gpt2, smollm, \
                 starcoder, llama-bpe); give --tokenizer tokenizer.json"
            ))
        })?;
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let merges = self.strings("tokenizer.ggml.merges")?;
        let types = self.token_types();
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            vocab.insert(token.to_string(), json!(id));
            // 3 = control, 4 = user-defined (llama.cpp's llama_token_type).
            let kind = types.get(id).copied().unwrap_or(1);
            if kind == 3 || kind == 4 {
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": kind == 3,
                }));
            }
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": self.post_processor(&tokens),
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        }))
    }

    /// The post-processor: byte-level offsets, then the special tokens that
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token` ask for (absent: none, as transformers reads
    /// a byte-level BPE GGUF).
    fn post_processor(&self, tokens: &[&str]) -> serde_json::Value {
        use serde_json::json;
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": true,
                                "trim_offsets": false, "use_regex": true});
        match self.template(tokens, false) {
            None => byte_level,
            Some(template) => json!({"type": "Sequence", "processors": [byte_level, template]}),
        }
    }

    /// The template that adds the special tokens `tokenizer.ggml.add_bos_token` /
    /// `add_eos_token` ask for (`bos_by_default` when the file does not say); `None` for none.
    /// transformers' pair template: the second sequence gets its own BOS, type id 1.
    fn template(&self, tokens: &[&str], bos_by_default: bool) -> Option<serde_json::Value> {
        use serde_json::json;
        let special = |flag: &str, key: &str, default: bool| {
            let wanted = match self.get(flag) {
                Some(Value::Bool(set)) => *set,
                _ => default,
            };
            let id = self
                .get(&format!("tokenizer.ggml.{key}_token_id"))?
                .as_u64()?;
            let token = tokens.get(id as usize)?;
            wanted.then(|| (token.to_string(), id))
        };
        let bos = special("tokenizer.ggml.add_bos_token", "bos", bos_by_default);
        let eos = special("tokenizer.ggml.add_eos_token", "eos", false);
        if bos.is_none() && eos.is_none() {
            return None;
        }
        let token =
            |t: &(String, u64), kind: u32| json!({"SpecialToken": {"id": t.0, "type_id": kind}});
        let sequence = |name: &str, kind: u32| json!({"Sequence": {"id": name, "type_id": kind}});
        let mut single = Vec::new();
        single.extend(bos.iter().map(|t| token(t, 0)));
        single.push(sequence("A", 0));
        single.extend(eos.iter().map(|t| token(t, 0)));
        let mut pair = single.clone();
        pair.extend(bos.iter().map(|t| token(t, 1)));
        pair.push(sequence("B", 1));
        pair.extend(eos.iter().map(|t| token(t, 1)));
        let special_tokens: serde_json::Map<String, serde_json::Value> = bos
            .iter()
            .chain(eos.iter())
            .map(|(text, id)| {
                (
                    text.clone(),
                    json!({"id": text, "ids": [id], "tokens": [text]}),
                )
            })
            .collect();
        Some(
            json!({"type": "TemplateProcessing", "single": single, "pair": pair,
                    "special_tokens": special_tokens}),
        )
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.get("tokenizer.chat_template").and_then(Value::as_str)
    }

    /// The special token named by `tokenizer.ggml.{key}_token_id`, as text.
    pub fn special_token(&self, key: &str) -> Option<String> {
        let id = self
            .get(&format!("tokenizer.ggml.{key}_token_id"))?
            .as_u64()?;
        let tokens = self.get("tokenizer.ggml.tokens")?.as_array()?;
        tokens.get(id as usize)?.as_str().map(String::from)
    }
}
