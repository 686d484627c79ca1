//! Model files in and out: Hugging Face safetensors checkpoints (read one tensor at a time),
//! the export back to a Hugging Face directory (and PEFT adapters), and a GGUF file's Llama
//! weights (the format itself is [`crate::gguf`]).

pub mod export;
pub mod gguf;
pub mod safetensors;
