//! Encoded examples → batch tensors: padded batches (right padding, to the longest in the batch),
//! and packed rows for causal LMs ([`pack`]), where sequences that share a prefix share its tokens.

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

/// Causal-LM sequences in one row, without padding: each group of sequences (a DPO pair: chosen and
/// rejected) becomes one segment holding their common prefix once (the *trunk*, a pair's prompt)
/// and then each sequence's remaining tokens (its *branch*). A token attends to earlier tokens of
/// its own segment's trunk and of its own branch only, and its position id is its index in its own
/// sequence, so every token sees exactly the context it has in its sequence alone: the log-probs
/// and their gradients are those of the separate sequences, while the shared prompt is computed
/// once (TRL computes it twice) and no padding is computed at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Packing {
    /// The packed row.
    pub tokens: Vec<u32>,
    /// The position id (index within its own sequence) of every packed token.
    pub positions: Vec<usize>,
    pub segments: Vec<Segment>,
    /// For every input sequence, the packed index of each of its tokens.
    pub places: Vec<Vec<usize>>,
    /// Tokens of the input sequences (a shared prefix counted once per sequence), for tokens/s.
    pub num_tokens: usize,
}

/// One attention block of a [`Packing`]: `trunk` shared tokens, then the branches' lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start: usize,
    pub trunk: usize,
    pub branches: Vec<usize>,
}

impl Segment {
    pub fn len(&self) -> usize {
        self.trunk + self.branches.iter().sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row-major `[len, len]`: may query `q` attend to key `k` (both segment-relative)?
    pub fn visibility(&self) -> Vec<bool> {
        let len = self.len();
        // The branch of each token, `usize::MAX` for the trunk.
        let mut branch_of = vec![usize::MAX; self.trunk];
        for (branch, &width) in self.branches.iter().enumerate() {
            branch_of.extend(std::iter::repeat_n(branch, width));
        }
        let mut visible = vec![false; len * len];
        for q in 0..len {
            for k in 0..=q {
                visible[q * len + k] = k < self.trunk || branch_of[k] == branch_of[q];
            }
        }
        visible
    }
}

/// Pack `sequences`, each group (indices into `sequences`, every index in one group) sharing the
/// common prefix of its members. A prefix is shared only up to one token short of the shortest
/// member, so every branch keeps a token of its own; a group of one is a plain causal segment.
pub fn pack(sequences: &[&LmSequence], groups: &[Vec<usize>]) -> Packing {
    let mut packing = Packing {
        tokens: Vec::new(),
        positions: Vec::new(),
        segments: Vec::with_capacity(groups.len()),
        places: vec![Vec::new(); sequences.len()],
        num_tokens: sequences.iter().map(|s| s.tokens.len()).sum(),
    };
    for group in groups {
        let members: Vec<&[u32]> = group
            .iter()
            .map(|&i| sequences[i].tokens.as_slice())
            .collect();
        let trunk = match members.as_slice() {
            [only] => only.len(),
            [first, rest @ ..] => {
                let shortest = members.iter().map(|m| m.len()).min().unwrap_or(0);
                let common = rest.iter().fold(first.len(), |n, m| {
                    n.min(
                        first
                            .iter()
                            .zip(m.iter())
                            .take_while(|(a, b)| a == b)
                            .count(),
                    )
                });
                common.min(shortest.saturating_sub(1))
            }
            [] => continue,
        };
        let start = packing.tokens.len();
        packing.tokens.extend(&members[0][..trunk]);
        packing.positions.extend(0..trunk);
        let mut branches = Vec::new();
        for (&index, member) in group.iter().zip(&members) {
            let places = &mut packing.places[index];
            places.extend(start..start + trunk);
            if members.len() > 1 {
                let branch_start = packing.tokens.len();
                packing.tokens.extend(&member[trunk..]);
                packing.positions.extend(trunk..member.len());
                places.extend(branch_start..packing.tokens.len());
                branches.push(member.len() - trunk);
            }
        }
        packing.segments.push(Segment {
            start,
            trunk,
            branches,
        });
    }
    packing
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
