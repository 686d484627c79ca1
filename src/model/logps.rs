//! Summed completion log-probs of token sequences under a causal LM: the packed,
//! prefix-sharing forward ([`pack`]) and the fused token log-probs at completion positions only.
//! What DPO's policy and reference, the bias benchmarks and evaluation all score with.

use burn::tensor::{Device, Tensor, TensorData};

use super::LlamaForCausalLM;
use super::fused;
use super::recompute::LayerTape;
use crate::data::LmSequence;
use crate::data::batch::{int_vector, pack};

/// Scored positions per [`fused::token_logps`] call in training and eval: every one of a batch
/// (the op bounds its logits itself, and one call forms one `[vocab, d]` weight gradient).
pub const ALL_POSITIONS: usize = usize::MAX;

/// Summed log-probabilities of each sequence's completion tokens (and their counts, and the
/// tokens of the sequences), in one packed forward ([`pack`]): the sequences of each of `groups`
/// share their common prefix (a pair's prompt is computed once), and no padding is computed.
/// Log-probs are taken only at completion positions, `chunk` positions per call of the fused
/// [`fused::token_logps`]: `log p(token) = logit[token] − logsumexp(logits)` with the logits
/// alive only inside the op, a block of the vocabulary at a time (again in its backward), never
/// in the graph, so neither a log-softmax nor the logits of prompt positions ever exist.
pub fn sequence_logps(
    model: &LlamaForCausalLM,
    sequences: &[&LmSequence],
    groups: &[Vec<usize>],
    device: &Device,
    chunk: usize,
) -> (Tensor<1>, Tensor<1>, usize) {
    let scored = sequence_logps_weighted(
        model,
        sequences,
        groups,
        device,
        chunk,
        None,
        Extras::default(),
    );
    (scored.sums, scored.counts, scored.num_tokens)
}

/// The weights LD-DPO (Liu et al. 2024, TRL's `ld_alpha`) puts on completion tokens: each
/// sequence's first `shared[row]` completion tokens count 1, the rest `alpha` (the part of the
/// longer completion of a pair that the shorter one has no counterpart for).
#[derive(Clone, Copy)]
pub struct TailWeights<'a> {
    pub shared: &'a [usize],
    pub alpha: f64,
}

/// What [`sequence_logps_weighted`] adds to the plain sums.
#[derive(Clone, Copy, Default)]
pub struct Extras<'a> {
    /// LD-DPO's weights on the completion tokens of the sums.
    pub tail: Option<TailWeights<'a>>,
    /// Also WPO's Σ_t (log p(y_t) − log Σ_v p_v²) of each sequence (unweighted, detached).
    pub wpo: bool,
}

/// Summed completion log-probs of a batch of sequences, their token counts, the tokens through
/// the model, and (when asked) WPO's aligned sums.
pub struct SequenceLogps {
    pub sums: Tensor<1>,
    pub counts: Tensor<1>,
    pub num_tokens: usize,
    /// Σ_t (log p(y_t) − log Σ_v p_v²) over each sequence's completion tokens, detached.
    pub wpo: Option<Tensor<1>>,
}

/// [`sequence_logps`], its decoder layers recomputed in backward when `tape` is given (see
/// [`LayerTape`]; the step's backward is then `tape.backward(model, loss)`), its completion
/// tokens weighted by `extras.tail` (LD-DPO) when given (the counts stay the plain token
/// counts), and WPO's aligned sums with `extras.wpo`.
pub fn sequence_logps_weighted(
    model: &LlamaForCausalLM,
    sequences: &[&LmSequence],
    groups: &[Vec<usize>],
    device: &Device,
    chunk: usize,
    tape: Option<&mut LayerTape>,
    extras: Extras<'_>,
) -> SequenceLogps {
    let tail = extras.tail;
    let packing = pack(sequences, groups);
    let rows = sequences.len();
    // Token t is scored (when it is a completion token) from the hidden state of token t − 1.
    let (mut positions, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
    for (row, sequence) in sequences.iter().enumerate() {
        let places = &packing.places[row];
        for t in 1..sequence.tokens.len() {
            if sequence.completion[t] {
                positions.push(places[t - 1] as i64);
                targets.push(i64::from(sequence.tokens[t]));
                owner.push(row);
            }
        }
    }
    let counts: Vec<f32> = (0..rows)
        .map(|row| owner.iter().filter(|&&o| o == row).count() as f32)
        .collect();
    let counts = Tensor::from_data(TensorData::new(counts, [rows]), device);
    let n = positions.len();
    if n == 0 {
        let zeros = Tensor::<1>::zeros([rows], device);
        return SequenceLogps {
            sums: zeros.clone(),
            counts,
            num_tokens: packing.num_tokens,
            wpo: extras.wpo.then_some(zeros),
        };
    }
    let hidden = match tape {
        Some(tape) => model.packed_hidden_states_recomputed(&packing, device, tape),
        None => model.packed_hidden_states(&packing, device),
    };
    let weight = model.output_weight();
    let chunk = chunk.max(1);
    let mut token_logps = Vec::with_capacity(n.div_ceil(chunk));
    let mut sum_sq = Vec::new();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let picked = hidden
            .clone()
            .select(0, int_vector(&positions[start..end], device));
        if extras.wpo {
            sum_sq.push(fused::log_sum_squared_probs(
                picked.clone(),
                weight.clone(),
                model.final_softcap,
            ));
        }
        let target = int_vector(&targets[start..end], device);
        token_logps.push(fused::token_logps(
            picked,
            weight.clone(),
            target,
            model.final_softcap,
        ));
    }
    let token_logps = Tensor::cat(token_logps, 0);
    // WPO: Σ_t (log p(y_t) − log Σ_v p_v²) per sequence, every token counted once.
    let wpo = extras.wpo.then(|| {
        let aligned = token_logps.clone().detach() - Tensor::cat(sum_sq, 0);
        let mut plain = vec![0f32; rows * n];
        for (i, &row) in owner.iter().enumerate() {
            plain[row * n + i] = 1.0;
        }
        Tensor::<2>::from_data(TensorData::new(plain, [rows, n]), device)
            .matmul(aligned.reshape([n, 1]))
            .reshape([rows])
            .detach()
    });
    // Per-sequence sums as a product with the [rows, n] membership matrix: deterministic, and
    // plain matmul under autodiff.
    let mut membership = vec![0f32; rows * n];
    let mut seen = vec![0usize; rows];
    for (i, &row) in owner.iter().enumerate() {
        membership[row * n + i] = match tail {
            Some(tail) if seen[row] >= tail.shared[row] => tail.alpha as f32,
            _ => 1.0,
        };
        seen[row] += 1;
    }
    let membership = Tensor::<2>::from_data(TensorData::new(membership, [rows, n]), device);
    let sums = membership
        .matmul(token_logps.reshape([n, 1]))
        .reshape([rows]);
    SequenceLogps {
        sums,
        counts,
        num_tokens: packing.num_tokens,
        wpo,
    }
}

/// Prefix-sharing groups of `[chosen…, rejected…]`: pair i is sequences i and `pairs + i`.
pub fn pair_groups(pairs: usize) -> Vec<Vec<usize>> {
    (0..pairs).map(|i| vec![i, pairs + i]).collect()
}

/// Every one of `count` sequences on its own.
pub fn single_groups(count: usize) -> Vec<Vec<usize>> {
    (0..count).map(|i| vec![i]).collect()
}
