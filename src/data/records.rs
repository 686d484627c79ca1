//! Typed examples read from JSONL, and the group vocabulary that turns group names into ids.
//!
//! Formats (TRL's field names for preferences):
//! - preference: `{"prompt", "chosen", "rejected"}` + optional `"group"`; each may be a list of
//!   `{"role", "content"}` messages (TRL's conversational format), rendered with the model's chat
//!   template
//! - unpaired preference (TRL's `KTOTrainer`): `{"prompt", "completion", "label": true|false}` +
//!   optional `"group"`
//! - classification: `{"text", "label"}` + optional `"group"`
//! - LM fairness set: `{"prompt", "completion", "group"}` + optional `"label"` (for equalized odds)
//! - classifier fairness set: `{"text", "group"}` + optional `"label"`

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::jsonl::{self, Row};
use crate::error::{Error, Result};
use crate::tokenizer::chat::Message;

/// A prompt or completion field: plain text, or chat messages (TRL's conversational format, where
/// the prompt is the conversation so far and each completion the assistant's turn).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Messages(Vec<Message>),
}

impl Content {
    /// The messages of a completion: a conversational completion's own, or plain text as one
    /// assistant turn (a text completion after a conversational prompt).
    pub fn as_turns(&self) -> Vec<Message> {
        match self {
            Content::Messages(messages) => messages.clone(),
            Content::Text(text) => vec![Message {
                role: "assistant".into(),
                content: text.clone(),
            }],
        }
    }
}

/// Where an example came from, for error messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl Origin {
    fn of(row: &Row) -> Self {
        Self {
            file: row.file.display().to_string(),
            line: row.line,
        }
    }

    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::input(format!("{}:{}: {message}", self.file, self.line))
    }
}

#[derive(Debug, Clone)]
pub struct PreferenceExample {
    pub prompt: Content,
    pub chosen: Content,
    pub rejected: Content,
    pub group: Option<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct ClassifyExample {
    pub text: String,
    pub label: Option<usize>,
    pub group: Option<String>,
    pub origin: Origin,
}

/// An LM fairness example: the score is computed on `completion` given `prompt`.
#[derive(Debug, Clone)]
pub struct CompletionExample {
    pub prompt: Content,
    pub completion: Content,
    pub group: String,
    pub label: Option<usize>,
    pub origin: Origin,
}

/// An unpaired preference example (KTO's data): one completion, desirable or not.
#[derive(Debug, Clone)]
pub struct UnpairedExample {
    pub prompt: Content,
    pub completion: Content,
    pub desirable: bool,
    pub group: Option<String>,
    pub origin: Origin,
}

/// A preference file: pairs, or unpaired examples (told apart by the first row's fields).
#[derive(Debug, Clone)]
pub enum PreferenceData {
    Pairs(Vec<PreferenceExample>),
    Unpaired(Vec<UnpairedExample>),
}

/// Reads pairs (`"chosen"`, `"rejected"`) or unpaired examples (`"completion"`, `"label"`).
pub fn read_preference_data(path: &Path) -> Result<PreferenceData> {
    let rows = jsonl::read(path)?;
    let unpaired = rows.first().is_some_and(|row| {
        !row.fields.contains_key("chosen") && row.fields.contains_key("completion")
    });
    if unpaired {
        return rows
            .iter()
            .map(unpaired_example)
            .collect::<Result<_>>()
            .map(PreferenceData::Unpaired);
    }
    rows.iter()
        .map(preference_example)
        .collect::<Result<_>>()
        .map(PreferenceData::Pairs)
}

fn unpaired_example(row: &Row) -> Result<UnpairedExample> {
    let completion = row.content("completion")?;
    if is_empty(&completion) {
        return Err(row.error("\"completion\" must not be empty"));
    }
    let desirable = match row.fields.get("label") {
        Some(serde_json::Value::Bool(label)) => *label,
        Some(other) => {
            return Err(row.error(format!(
                "\"label\" must be true (a desirable completion) or false, got {other}"
            )));
        }
        None => {
            return Err(row.error(
                "missing field \"label\" (true for a desirable completion, false for an \
                 undesirable one)",
            ));
        }
    };
    let prompt = row.content("prompt")?;
    check_forms(row, &prompt, &[("completion", &completion)])?;
    Ok(UnpairedExample {
        prompt,
        completion,
        desirable,
        group: row.group()?,
        origin: Origin::of(row),
    })
}

/// Pairs as unpaired examples, as TRL's `unpair_preference_dataset` makes them: in chunks of
/// 1,000 pairs (its `map` batch), the chunk's chosen completions (desirable), then its rejected.
pub fn unpair(pairs: Vec<PreferenceExample>) -> Vec<UnpairedExample> {
    let mut out = Vec::with_capacity(2 * pairs.len());
    for chunk in pairs.chunks(1000) {
        for desirable in [true, false] {
            out.extend(chunk.iter().map(|p| UnpairedExample {
                prompt: p.prompt.clone(),
                completion: if desirable {
                    p.chosen.clone()
                } else {
                    p.rejected.clone()
                },
                desirable,
                group: p.group.clone(),
                origin: p.origin.clone(),
            }));
        }
    }
    out
}

fn preference_example(row: &Row) -> Result<PreferenceExample> {
    let example = PreferenceExample {
        prompt: row.content("prompt")?,
        chosen: row.content("chosen")?,
        rejected: row.content("rejected")?,
        group: row.group()?,
        origin: Origin::of(row),
    };
    if is_empty(&example.chosen) || is_empty(&example.rejected) {
        return Err(row.error("\"chosen\" and \"rejected\" must not be empty"));
    }
    check_forms(
        row,
        &example.prompt,
        &[("chosen", &example.chosen), ("rejected", &example.rejected)],
    )?;
    Ok(example)
}

pub fn read_preferences(path: &Path) -> Result<Vec<PreferenceExample>> {
    jsonl::read(path)?.iter().map(preference_example).collect()
}

fn is_empty(content: &Content) -> bool {
    matches!(content, Content::Text(text) if text.is_empty())
}

/// A conversational completion needs a conversational prompt (a text completion may follow a
/// conversational prompt: it is the assistant's turn).
fn check_forms(row: &Row, prompt: &Content, completions: &[(&str, &Content)]) -> Result<()> {
    if let Content::Text(_) = prompt
        && let Some((name, _)) = completions
            .iter()
            .find(|(_, c)| matches!(c, Content::Messages(_)))
    {
        return Err(row.error(format!(
            "\"{name}\" is a list of messages but \"prompt\" is plain text: give the prompt as \
             messages too (TRL's conversational format), or both as text"
        )));
    }
    Ok(())
}

/// Classification rows; `require_label` is false only for fairness-only sets.
pub fn read_classification(path: &Path, require_label: bool) -> Result<Vec<ClassifyExample>> {
    jsonl::read(path)?
        .iter()
        .map(|row| {
            let label = row.label()?;
            if require_label && label.is_none() {
                return Err(row.error("missing field \"label\""));
            }
            Ok(ClassifyExample {
                text: row.string("text")?,
                label,
                group: row.group()?,
                origin: Origin::of(row),
            })
        })
        .collect()
}

/// Fairness rows for classification: `{"text", "group"}` (+ optional label).
pub fn read_classification_fairness(path: &Path) -> Result<Vec<ClassifyExample>> {
    let rows = read_classification(path, false)?;
    for example in &rows {
        if example.group.is_none() {
            return Err(example.origin.error("missing field \"group\""));
        }
    }
    Ok(rows)
}

/// Fairness rows for LMs: `{"prompt", "completion", "group"}` (+ optional label).
pub fn read_completions(path: &Path) -> Result<Vec<CompletionExample>> {
    jsonl::read(path)?
        .iter()
        .map(|row| {
            let group = row
                .group()?
                .ok_or_else(|| row.error("missing field \"group\""))?;
            let completion = row.content("completion")?;
            if is_empty(&completion) {
                return Err(row.error("\"completion\" must not be empty"));
            }
            let prompt = row.content("prompt")?;
            check_forms(row, &prompt, &[("completion", &completion)])?;
            Ok(CompletionExample {
                prompt,
                completion,
                group,
                label: row.label()?,
                origin: Origin::of(row),
            })
        })
        .collect()
}

/// A token-classification example: words and one BIO tag per word (`{"tokens", "tags"}`).
#[derive(Debug, Clone)]
pub struct TokenExample {
    pub tokens: Vec<String>,
    pub tags: Vec<String>,
    pub group: Option<String>,
    pub origin: Origin,
}

/// Token-classification rows: `{"tokens": [...], "tags": [...]}`, equal lengths.
pub fn read_token_classification(path: &Path) -> Result<Vec<TokenExample>> {
    jsonl::read(path)?
        .iter()
        .map(|row| {
            let list = |name: &str| -> Result<Vec<String>> {
                let value = row
                    .fields
                    .get(name)
                    .ok_or_else(|| row.error(format!("missing field \"{name}\"")))?;
                serde_json::from_value(value.clone())
                    .map_err(|_| row.error(format!("field \"{name}\" must be a list of strings")))
            };
            let (tokens, tags) = (list("tokens")?, list("tags")?);
            if tokens.len() != tags.len() {
                return Err(row.error(format!("{} tokens but {} tags", tokens.len(), tags.len())));
            }
            if tokens.is_empty() {
                return Err(row.error("\"tokens\" is empty"));
            }
            if let Some(bad) = tags.iter().find(|t| {
                *t != "O" && !(t.len() > 2 && matches!(&t[..2], "B-" | "I-" | "E-" | "S-"))
            }) {
                return Err(row.error(format!("tag {bad:?} is not a BIO tag (O, B-TYPE, I-TYPE)")));
            }
            Ok(TokenExample {
                tokens,
                tags,
                group: row.group()?,
                origin: Origin::of(row),
            })
        })
        .collect()
}

/// Group names ↔ ids. Ids follow sorted name order, so they do not depend on file order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupVocab {
    pub names: Vec<String>,
}

impl GroupVocab {
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let set: BTreeSet<&str> = names.into_iter().collect();
        Self {
            names: set.into_iter().map(str::to_string).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }

    /// The id of `name`, or the "unknown group" error at `origin`.
    pub fn id_at(&self, name: &str, origin: &Origin) -> Result<usize> {
        self.id(name).ok_or_else(|| {
            origin.error(format!(
                "unknown group {name:?}: the groups are fixed by the training data ({})",
                self.names.join(", ")
            ))
        })
    }
}
