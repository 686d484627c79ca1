//! JSON Lines reading where every problem is reported as `FILE:LINE: what is wrong`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One JSON object and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub file: PathBuf,
    pub line: usize,
    pub fields: Map<String, Value>,
}

impl Row {
    /// `FILE:LINE: message` as an input error.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::input(format!("{}:{}: {message}", self.file.display(), self.line))
    }

    /// A required string field.
    pub fn string(&self, name: &str) -> Result<String> {
        match self.fields.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(_)) => Err(self.error(format!(
                "field \"{name}\" is a list; conversational (messages) format is not supported, give plain text"
            ))),
            Some(other) => Err(self.error(format!(
                "field \"{name}\" must be a string, got {}",
                kind(other)
            ))),
            None => Err(self.error(format!("missing field \"{name}\""))),
        }
    }

    /// A prompt or completion: plain text, or (TRL's conversational format) a non-empty list of
    /// `{"role", "content"}` messages, rendered later with the model's chat template.
    pub fn content(&self, name: &str) -> Result<crate::data::Content> {
        use crate::data::Content;
        use crate::tokenizer::chat::Message;
        let content = match self.fields.get(name) {
            Some(Value::Array(items)) => {
                let messages: Vec<Message> = serde_json::from_value(Value::Array(items.clone()))
                    .map_err(|e| {
                        self.error(format!(
                            "field \"{name}\" must be text or a list of {{\"role\", \"content\"}} messages: {e}"
                        ))
                    })?;
                if messages.is_empty() {
                    return Err(
                        self.error(format!("field \"{name}\" is an empty list of messages"))
                    );
                }
                Content::Messages(messages)
            }
            _ => Content::Text(self.string(name)?),
        };
        Ok(content)
    }

    /// An optional group: a string or an integer, `null`/absent meaning "no group".
    pub fn group(&self) -> Result<Option<String>> {
        match self.fields.get("group") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => {
                Err(self.error("field \"group\" is an empty string"))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
            Some(other) => Err(self.error(format!(
                "field \"group\" must be a string or an integer, got {}",
                kind(other)
            ))),
        }
    }

    /// An optional class label: a non-negative integer or a boolean (true = 1).
    pub fn label(&self) -> Result<Option<usize>> {
        match self.fields.get("label") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(usize::from(*b))),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) => Ok(Some(v as usize)),
                None => Err(self.error(format!(
                    "field \"label\" must be a non-negative integer class id, got {n}"
                ))),
            },
            Some(other) => Err(self.error(format!(
                "field \"label\" must be a non-negative integer class id or a boolean, got {}",
                kind(other)
            ))),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Read every non-blank line of a JSONL file as a JSON object. An empty file is an error.
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let text = crate::fsutil::read(path)
        .map_err(|e| Error::input(format!("{}: cannot read file: {e}", path.display())))?;
    let text = String::from_utf8(text).map_err(|e| {
        Error::input(format!(
            "{}: not valid UTF-8 (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let at = |message: String| Error::input(format!("{}:{line_no}: {message}", path.display()));
        let value: Value =
            serde_json::from_str(trimmed).map_err(|e| at(format!("invalid JSON: {e}")))?;
        match value {
            Value::Object(fields) => rows.push(Row {
                file: path.to_path_buf(),
                line: line_no,
                fields,
            }),
            other => return Err(at(format!("expected a JSON object, got {}", kind(&other)))),
        }
    }
    if rows.is_empty() {
        return Err(Error::input(format!(
            "{}: no examples (the file is empty)",
            path.display()
        )));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn reads_texts_registered_in_memory() {
        let path = Path::new("/nonexistent/fairtune/jsonl-registered.jsonl");
        crate::fsutil::register(path, "{\"text\": \"a\"}\n");
        let rows = super::read(path).unwrap();
        assert_eq!(rows[0].fields["text"], "a");
    }
}
