//! Encoded examples → padded batch tensors (right padding, padded to the longest in the batch).

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::encode::LmSequence;

/// Causal-LM sequences: `input_ids [B, T]` and `completion_mask [B, T]` (1.0 on scored tokens).
#[derive(Debug, Clone)]
pub struct LmBatch {
    pub input_ids: Tensor<2, Int>,
    pub completion_mask: Tensor<2>,
    /// Real (non-padding) tokens in the batch, for tokens/s.
    pub num_tokens: usize,
}

pub fn lm_batch(sequences: &[&LmSequence], pad: u32, device: &Device) -> LmBatch {
    let batch = sequences.len();
    let seq_len = sequences
        .iter()
        .map(|s| s.tokens.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let mut ids = vec![pad as i64; batch * seq_len];
    let mut mask = vec![0f32; batch * seq_len];
    let mut num_tokens = 0;
    for (row, sequence) in sequences.iter().enumerate() {
        num_tokens += sequence.tokens.len();
        for (col, (&id, &scored)) in sequence.tokens.iter().zip(&sequence.completion).enumerate() {
            ids[row * seq_len + col] = id as i64;
            mask[row * seq_len + col] = if scored { 1.0 } else { 0.0 };
        }
    }
    LmBatch {
        input_ids: Tensor::from_data(TensorData::new(ids, [batch, seq_len]), device),
        completion_mask: Tensor::from_data(TensorData::new(mask, [batch, seq_len]), device),
        num_tokens,
    }
}

/// Encoder inputs: `input_ids [B, T]` and `attention_mask [B, T]` (1 on real tokens).
#[derive(Debug, Clone)]
pub struct EncoderBatch {
    pub input_ids: Tensor<2, Int>,
    pub attention_mask: Tensor<2, Int>,
    pub num_tokens: usize,
}

pub fn encoder_batch(sequences: &[&[u32]], pad: u32, device: &Device) -> EncoderBatch {
    let batch = sequences.len();
    let seq_len = sequences.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![pad as i64; batch * seq_len];
    let mut mask = vec![0i64; batch * seq_len];
    let mut num_tokens = 0;
    for (row, sequence) in sequences.iter().enumerate() {
        num_tokens += sequence.len();
        for (col, &id) in sequence.iter().enumerate() {
            ids[row * seq_len + col] = id as i64;
            mask[row * seq_len + col] = 1;
        }
    }
    EncoderBatch {
        input_ids: Tensor::from_data(TensorData::new(ids, [batch, seq_len]), device),
        attention_mask: Tensor::from_data(TensorData::new(mask, [batch, seq_len]), device),
        num_tokens,
    }
}

/// A 1-D int tensor (labels, group ids with −1 for "none").
pub fn int_vector(values: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}
