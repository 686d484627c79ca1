//! Examples → token sequences, with the prompt/completion boundary and explicit truncation rules.
//!
//! Preference and completion examples follow TRL's `DPOTrainer` preprocessing token for token:
//! the prompt alone and each prompt+completion are tokenized as whole texts — plain text with the
//! tokenizer's own special tokens and an EOS appended to the completion, a conversation through the
//! model's chat template (prompt with the generation prompt; prompt + the assistant's turn) with
//! none added, since the template writes them — and the completion starts where the tokenized
//! prompt and the tokenized prompt+completion first differ, the same point for every completion of
//! a prompt. So BPE merges across the seam and templates that render a prompt differently alone
//! land where TRL puts them, and the completions of a pair share their prompt tokens exactly.
//!
//! Truncation, when a sequence is longer than `max_length` ([`Truncation`]): by default the prompt
//! keeps its *end* (at least `max_prompt_length` tokens, more if the completion is short), the
//! completion keeps its *start*, and a leading BOS stays first; `keep-start` is TRL's rule (cut the
//! sequence's end; a pair whose prompt alone fills `max_length` is dropped). Every cut is counted.
//!
//! [`Encoder::completion`] is the benchmark scorers' rule (lm-evaluation-harness's): one
//! tokenization of `prompt + completion`, a token counting as completion when its text ends past
//! the prompt.

use serde::{Deserialize, Serialize};

use super::records::Content;
use crate::error::{Error, Result};
use crate::tokenizer::chat::ChatTemplate;
use crate::tokenizer::{SpecialTokens, TextTokenizer};

/// A causal-LM sequence and which of its tokens are completion tokens (the ones scored).
#[derive(Debug, Clone, PartialEq)]
pub struct LmSequence {
    pub tokens: Vec<u32>,
    pub completion: Vec<bool>,
}

impl LmSequence {
    pub fn completion_tokens(&self) -> usize {
        self.completion.iter().filter(|&&c| c).count()
    }
}

/// How sequences longer than `--max-length` are cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// Keep the prompt's end (at least --max-prompt-length tokens) and the completion's start.
    #[default]
    PromptEnd,
    /// TRL's `keep_start`: cut each sequence's end; a pair whose prompt alone fills --max-length
    /// is dropped.
    KeepStart,
}

/// How many encoded examples were cut to fit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TruncationStats {
    pub examples: usize,
    pub truncated: usize,
    /// Examples left out because the prompt alone fills `max_length` (keep-start truncation).
    pub dropped: usize,
    /// Examples whose tokenized prompt is not a prefix of the tokenized prompt+completion (tokens
    /// merged across the seam, or a template rendering the prompt differently alone): their
    /// completion starts where the two differ.
    pub boundary_merges: usize,
}

impl TruncationStats {
    /// A one-line warning when anything was truncated or dropped.
    pub fn warning(&self, what: &str, max_length: usize) -> Option<String> {
        let mut parts = Vec::new();
        if self.truncated > 0 {
            parts.push(format!(
                "{} of {} examples in {what} were truncated to --max-length {max_length}",
                self.truncated, self.examples
            ));
        }
        if self.dropped > 0 {
            parts.push(format!(
                "{} examples in {what} were left out: their prompt alone fills --max-length \
                 {max_length} (--truncation-mode keep-start)",
                self.dropped
            ));
        }
        (!parts.is_empty()).then(|| format!("warning: {}", parts.join("; ")))
    }
}

/// Untruncated token ids of a prompt's completions ([`Encoder::prompted_ids`]).
#[derive(Debug, Clone)]
pub struct Prompted {
    /// Each prompt+completion.
    pub full: Vec<Vec<u32>>,
    /// How many leading tokens they share as the prompt.
    pub prompt: usize,
}

pub struct Encoder<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub special: SpecialTokens,
    pub max_length: usize,
    pub max_prompt_length: usize,
    pub truncation: Truncation,
}

impl<'a> Encoder<'a> {
    pub fn new(
        tokenizer: &'a TextTokenizer,
        max_length: usize,
        max_prompt_length: usize,
    ) -> Result<Self> {
        if max_length < 4 {
            return Err(Error::input(format!(
                "--max-length must be at least 4, got {max_length}"
            )));
        }
        if max_prompt_length >= max_length {
            return Err(Error::input(format!(
                "--max-prompt-length ({max_prompt_length}) must be smaller than --max-length ({max_length})"
            )));
        }
        Ok(Self {
            tokenizer,
            special: tokenizer.special(),
            max_length,
            max_prompt_length,
            truncation: Truncation::default(),
        })
    }

    /// One sequence per completion of `prompt`, by TRL's rule (see the module docs): the
    /// completion starts where the tokenized prompt and each tokenized prompt+completion first
    /// differ (the same point for all), plain completions end with EOS. `Ok(None)`: left out by
    /// keep-start truncation. Errors name the problem; the caller adds where the example is.
    pub fn prompted(
        &self,
        prompt: &Content,
        completions: &[&Content],
        chat: Option<&ChatTemplate>,
        stats: &mut TruncationStats,
    ) -> Result<Option<Vec<LmSequence>>> {
        Ok(self
            .prompted_ids(prompt, completions, chat, stats)?
            .map(|prompted| {
                let shared = prompted.prompt;
                prompted
                    .full
                    .into_iter()
                    .map(|ids| self.truncated(ids, shared, stats))
                    .collect()
            }))
    }

    /// [`Self::prompted`]'s token ids before truncation: each prompt+completion and the length
    /// of the prompt they share. `Ok(None)`: left out by keep-start truncation.
    pub fn prompted_ids(
        &self,
        prompt: &Content,
        completions: &[&Content],
        chat: Option<&ChatTemplate>,
        stats: &mut TruncationStats,
    ) -> Result<Option<Prompted>> {
        let (prompt_ids, full): (Vec<u32>, Vec<Vec<u32>>) = match prompt {
            Content::Messages(messages) => {
                let chat = chat.ok_or_else(|| {
                    Error::input(
                        "the prompt is a list of messages, but the model has no chat template \
                         (GGUF tokenizer.chat_template, or chat_template in tokenizer_config.json)",
                    )
                })?;
                let ids = |text: String| self.tokenizer.encode_ids(&text, false);
                let full = completions
                    .iter()
                    .map(|completion| {
                        let mut conversation = messages.clone();
                        conversation.extend(completion.as_turns());
                        ids(chat.render(&conversation, false)?)
                    })
                    .collect::<Result<_>>()?;
                (ids(chat.render(messages, true)?)?, full)
            }
            Content::Text(prompt) => {
                let eos_text = self.tokenizer.eos_text();
                let full = completions
                    .iter()
                    .map(|completion| {
                        let Content::Text(completion) = completion else {
                            return Err(Error::input(
                                "a completion is a list of messages but the prompt is plain text",
                            ));
                        };
                        let mut text = format!("{prompt}{completion}");
                        match (&eos_text, self.special.eos) {
                            (Some(eos), _) if !completion.ends_with(eos.as_str()) => {
                                text.push_str(eos)
                            }
                            (Some(_), _) | (None, None) => {}
                            (None, Some(eos)) => {
                                let mut ids = self.tokenizer.encode_ids(&text, true)?;
                                ids.push(eos);
                                return Ok(ids);
                            }
                        }
                        self.tokenizer.encode_ids(&text, true)
                    })
                    .collect::<Result<_>>()?;
                (self.tokenizer.encode_ids(prompt, true)?, full)
            }
        };
        let shared = full
            .iter()
            .map(|ids| common_prefix_length(&prompt_ids, ids))
            .min()
            .unwrap_or(prompt_ids.len());
        if shared < prompt_ids.len() {
            stats.boundary_merges += 1;
        }
        if full.iter().any(|ids| ids.len() == shared) {
            return Err(Error::input("a completion produced no tokens"));
        }
        stats.examples += full.len();
        if self.truncation == Truncation::KeepStart && shared >= self.max_length {
            stats.dropped += 1;
            return Ok(None);
        }
        Ok(Some(Prompted {
            full,
            prompt: shared,
        }))
    }

    /// A sequence of `ids` whose first `prompt` tokens are the prompt, truncated to
    /// `--max-length` by the truncation mode.
    pub fn sequence(
        &self,
        ids: Vec<u32>,
        prompt: usize,
        stats: &mut TruncationStats,
    ) -> LmSequence {
        self.truncated(ids, prompt, stats)
    }

    /// `ids` (the first `prompt` of them the prompt's) cut to `max_length` by `self.truncation`.
    fn truncated(
        &self,
        mut ids: Vec<u32>,
        prompt: usize,
        stats: &mut TruncationStats,
    ) -> LmSequence {
        let mut prompt = prompt;
        if ids.len() > self.max_length {
            stats.truncated += 1;
            match self.truncation {
                Truncation::KeepStart => ids.truncate(self.max_length),
                Truncation::PromptEnd => {
                    let completion = ids.len() - prompt;
                    // A leading BOS stays first.
                    let lead = usize::from(prompt > 0 && Some(ids[0]) == self.special.bos);
                    let budget = self.max_length - lead;
                    // At least one completion token survives.
                    let keep_prompt = (prompt - lead)
                        .min(
                            self.max_prompt_length
                                .max(budget.saturating_sub(completion)),
                        )
                        .min(budget - 1);
                    ids.drain(lead..prompt - keep_prompt);
                    prompt = lead + keep_prompt;
                    ids.truncate(self.max_length);
                }
            }
        }
        let mut completion = vec![false; prompt.min(ids.len())];
        completion.resize(ids.len(), true);
        LmSequence {
            tokens: ids,
            completion,
        }
    }

    /// `[bos] prompt completion [eos]` with the completion mask, the boundary placed by text offset
    /// (the benchmark scorers' rule; training uses [`Self::prompted`]). `Ok(None)` means the
    /// completion produced no tokens (the caller reports it at the example's origin).
    pub fn completion(
        &self,
        prompt: &str,
        completion: &str,
        stats: &mut TruncationStats,
    ) -> Result<Option<LmSequence>> {
        let full = format!("{prompt}{completion}");
        let prompt_chars = prompt.chars().count();
        let tokens = self.tokenizer.encode(&full)?;
        let split = tokens
            .iter()
            .position(|t| t.char_end > prompt_chars)
            .unwrap_or(tokens.len());
        let mut prompt_ids: Vec<u32> = tokens[..split].iter().map(|t| t.id).collect();
        let mut completion_ids: Vec<u32> = tokens[split..].iter().map(|t| t.id).collect();
        if completion_ids.is_empty() {
            return Ok(None);
        }
        // The first completion token also covers prompt text when the token before it ended
        // short of the prompt's end.
        let previous_end = if split == 0 {
            0
        } else {
            tokens[split - 1].char_end
        };
        if previous_end < prompt_chars {
            stats.boundary_merges += 1;
        }
        if let Some(eos) = self.special.eos {
            completion_ids.push(eos);
        }
        let bos = usize::from(self.special.bos.is_some());
        stats.examples += 1;
        let budget = self.max_length - bos;
        if prompt_ids.len() + completion_ids.len() > budget {
            stats.truncated += 1;
            let keep_prompt = prompt_ids.len().min(
                self.max_prompt_length
                    .max(budget.saturating_sub(completion_ids.len())),
            );
            prompt_ids.drain(..prompt_ids.len() - keep_prompt);
            completion_ids.truncate(budget - keep_prompt);
        }
        let mut sequence = LmSequence {
            tokens: Vec::with_capacity(bos + prompt_ids.len() + completion_ids.len()),
            completion: Vec::new(),
        };
        sequence.tokens.extend(self.special.bos);
        sequence.tokens.extend(&prompt_ids);
        sequence.completion = vec![false; sequence.tokens.len()];
        sequence.tokens.extend(&completion_ids);
        sequence.completion.resize(sequence.tokens.len(), true);
        Ok(Some(sequence))
    }

    /// `[cls] text [sep]`, the text cut at its end to fit `max_length`.
    pub fn classification(&self, text: &str, stats: &mut TruncationStats) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.tokenizer.encode(text)?.iter().map(|t| t.id).collect();
        let specials =
            usize::from(self.special.cls.is_some()) + usize::from(self.special.sep.is_some());
        stats.examples += 1;
        if ids.len() + specials > self.max_length {
            stats.truncated += 1;
            ids.truncate(self.max_length - specials);
        }
        let mut out = Vec::with_capacity(ids.len() + specials);
        out.extend(self.special.cls);
        out.extend(ids);
        out.extend(self.special.sep);
        if out.is_empty() {
            // An empty text with a tokenizer that has no [CLS]: score the padding token alone.
            out.push(self.special.pad);
        }
        Ok(out)
    }

    /// `[cls] subwords [sep]` of pre-split words, and each token's word (`None` for specials
    /// and for continuation subwords: a word is labelled at its first subword). Words past
    /// `max_length` are cut; the second value is how many words survive.
    pub fn words(
        &self,
        words: &[String],
        stats: &mut TruncationStats,
    ) -> Result<(Vec<u32>, Vec<Option<usize>>, usize)> {
        let mut pieces = self.tokenizer.encode_words(words)?;
        let specials =
            usize::from(self.special.cls.is_some()) + usize::from(self.special.sep.is_some());
        stats.examples += 1;
        if pieces.len() + specials > self.max_length {
            stats.truncated += 1;
            pieces.truncate(self.max_length - specials);
        }
        let kept_words = match pieces.last() {
            // A word cut in the middle still counts: it keeps its first subword.
            Some(&(_, last)) => last + 1,
            None => 0,
        };
        let mut ids = Vec::with_capacity(pieces.len() + specials);
        let mut word_of = Vec::with_capacity(pieces.len() + specials);
        if let Some(cls) = self.special.cls {
            ids.push(cls);
            word_of.push(None);
        }
        let mut previous = None;
        for (id, word) in pieces {
            ids.push(id);
            word_of.push((previous != Some(word)).then_some(word));
            previous = Some(word);
        }
        if let Some(sep) = self.special.sep {
            ids.push(sep);
            word_of.push(None);
        }
        if ids.is_empty() {
            ids.push(self.special.pad);
            word_of.push(None);
        }
        Ok((ids, word_of, kept_words))
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix_length(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
