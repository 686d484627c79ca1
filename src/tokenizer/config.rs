//! The one reader of a Hugging Face tokenizer's side files: `tokenizer_config.json` (the special
//! tokens it names, its `chat_template`) and `chat_template.jinja`, which transformers 5 writes
//! and which takes priority over the JSON field, as there.

use std::path::Path;

use crate::error::{Error, Result};

/// What a tokenizer's side files name (all optional: a tokenizer.json alone is a tokenizer).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct TokenizerConfig {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    /// The side files in `dir` (through [`crate::fsutil::read`]: the browser registers its
    /// files in memory). A missing file is no error; one that is not valid JSON is.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let value = match crate::fsutil::read(&path) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| Error::input(format!("{}: not valid JSON: {e}", path.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        // A token is a string, or an AddedToken object with its text in "content".
        let named = |key: &str| -> Option<String> {
            let token = value.get(key)?;
            token
                .as_str()
                .or_else(|| token.get("content")?.as_str())
                .map(String::from)
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template =
            match crate::fsutil::read(&jinja) {
                Ok(bytes) => Some(String::from_utf8(bytes).map_err(|e| {
                    Error::input(format!("{}: not UTF-8 text: {e}", jinja.display()))
                })?),
                // A string, or a list of named templates: the one named "default".
                Err(_) => match value.get("chat_template") {
                    Some(serde_json::Value::String(template)) => Some(template.clone()),
                    Some(serde_json::Value::Array(named)) => named
                        .iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                        .and_then(|t| t.get("template")?.as_str())
                        .map(String::from),
                    _ => None,
                },
            };
        Ok(Self {
            bos: named("bos_token"),
            eos: named("eos_token"),
            pad: named("pad_token"),
            chat_template,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_named_tokens_and_the_template_a_jinja_file_overrides() {
        let dir = Path::new("/nonexistent/fairtune/tokenizer-config");
        crate::fsutil::register(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
               "chat_template": [{"name": "default", "template": "D"}, {"name": "x", "template": "X"}]}"#,
        );
        let config = TokenizerConfig::read(dir).unwrap();
        assert_eq!(config.bos.as_deref(), Some("<s>"));
        assert_eq!(config.eos.as_deref(), Some("</s>"));
        assert_eq!(config.pad, None);
        assert_eq!(config.chat_template.as_deref(), Some("D"));
        crate::fsutil::register(dir.join("chat_template.jinja"), "J");
        assert_eq!(
            TokenizerConfig::read(dir).unwrap().chat_template.as_deref(),
            Some("J")
        );
        let missing = TokenizerConfig::read(Path::new("/nonexistent/fairtune/none")).unwrap();
        assert_eq!(missing, TokenizerConfig::default());
        let bad = Path::new("/nonexistent/fairtune/bad-tokenizer-config");
        crate::fsutil::register(bad.join("tokenizer_config.json"), "{");
        let err = TokenizerConfig::read(bad).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
