//! The tokenizer and chat template a GGUF file carries in its metadata (`tokenizer.ggml.*`), as
//! a Hugging Face tokenizer.json document.

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

const LLAMA3_SPLIT: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

impl Gguf {
    /// The tokenizer in the metadata, as a Hugging Face tokenizer.json document (byte-level BPE:
    /// `tokenizer.ggml.model` = "gpt2"). Control and user-defined tokens become added tokens.
    pub fn tokenizer_json(&self) -> Result<serde_json::Value> {
        use serde_json::json;
        let fail = |what: String| Error::input(format!("{}: {what}", self.path.display()));
        let model = self
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no tokenizer in the metadata (tokenizer.ggml.model)".into()))?;
        if model != "gpt2" {
            return Err(fail(format!(
                "tokenizer model {model:?} is not supported (supported: \"gpt2\", byte-level BPE); \
                 give --tokenizer tokenizer.json"
            )));
        }
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
        let strings = |key: &str| -> Result<Vec<&str>> {
            self.require(key)?
                .as_array()
                .and_then(|items| items.iter().map(Value::as_str).collect())
                .ok_or_else(|| fail(format!("{key:?} is not a list of strings")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = self
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|items| items.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
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
        let special = |flag: &str, key: &str| {
            let wanted = self.get(flag) == Some(&Value::Bool(true));
            let id = self
                .get(&format!("tokenizer.ggml.{key}_token_id"))?
                .as_u64()?;
            let token = tokens.get(id as usize)?;
            wanted.then(|| (token.to_string(), id))
        };
        let bos = special("tokenizer.ggml.add_bos_token", "bos");
        let eos = special("tokenizer.ggml.add_eos_token", "eos");
        if bos.is_none() && eos.is_none() {
            return byte_level;
        }
        let token = |t: &(String, u64)| json!({"SpecialToken": {"id": t.0, "type_id": 0}});
        let sequence = |name: &str| json!({"Sequence": {"id": name, "type_id": 0}});
        let mut single = Vec::new();
        single.extend(bos.iter().map(token));
        single.push(sequence("A"));
        single.extend(eos.iter().map(token));
        let mut pair = single.clone();
        pair.extend(bos.iter().map(token));
        pair.push(sequence("B"));
        pair.extend(eos.iter().map(token));
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
        json!({"type": "Sequence", "processors": [byte_level, {"type": "TemplateProcessing",
               "single": single, "pair": pair, "special_tokens": special_tokens}]})
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
