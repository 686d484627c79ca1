//! Data: JSONL readers with line-numbered errors, tokenization, encoding, batching.
//! Nothing here knows about models or losses.

pub mod batch;
pub mod chat;
pub mod encode;
pub mod files;
pub mod jsonl;
pub mod records;
pub mod sampler;
pub mod tokenizer;

pub use encode::{Encoder, LmSequence, Truncation, TruncationStats};
pub use records::{ClassifyExample, CompletionExample, GroupVocab, Origin, PreferenceExample};
pub use tokenizer::TextTokenizer;
