//! Data: JSONL readers with line-numbered errors ([`jsonl`]), typed records ([`records`]),
//! encoding with the tokenizer ([`encode`]), epoch samplers ([`sampler`]) and device batches
//! ([`batch`]). Above the tokenizer; nothing here knows about models or losses.

pub mod batch;
pub mod encode;
pub mod jsonl;
pub mod records;
pub mod sampler;

pub use encode::{Encoder, LmSequence, Truncation, TruncationStats};
pub use records::{
    ClassifyExample, CompletionExample, Content, GroupVocab, Origin, PreferenceExample,
};
