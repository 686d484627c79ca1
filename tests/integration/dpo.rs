//! Each DPO variant against values computed by hand (in f64, see the comments).

use fairtune::objective::{DpoConfig, DpoLossKind, PairLogps, dpo_loss};

use crate::common::{self, floats, to_vec};

/// Two pairs. h = (π_c − ref_c) − (π_r − ref_r) = [1, 0].
fn pairs() -> (PairLogps, PairLogps) {
    let device = common::cpu();
    let policy = PairLogps {
        chosen: floats(&[-10.0, -12.0], &device),
        rejected: floats(&[-11.0, -9.0], &device),
        chosen_tokens: floats(&[5.0, 4.0], &device),
        rejected_tokens: floats(&[3.0, 6.0], &device),
    };
    let reference = PairLogps {
        chosen: floats(&[-10.5, -12.5], &device),
        rejected: floats(&[-10.5, -9.5], &device),
        chosen_tokens: floats(&[5.0, 4.0], &device),
        rejected_tokens: floats(&[3.0, 6.0], &device),
    };
    (policy, reference)
}

fn loss(loss: DpoLossKind, label_smoothing: f64, sft_weight: f64) -> f64 {
    let (policy, reference) = pairs();
    let config = DpoConfig {
        label_smoothing,
        sft_weight,
        ..DpoConfig::with_loss(loss)
    };
    to_vec(dpo_loss(&config, &policy, Some(&reference)).loss)[0] as f64
}

#[track_caller]
fn assert_near(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-5, "got {got}, want {want}");
}

#[test]
fn sigmoid_loss() {
    // mean(−log σ(0.1), −log σ(0)) = (0.64439666 + 0.69314718) / 2
    assert_near(loss(DpoLossKind::Sigmoid, 0.0, 0.0), 0.668_771_920_3);
}

#[test]
fn cdpo_label_smoothing() {
    // −0.8·log σ(βh) − 0.2·log σ(−βh), averaged
    assert_near(loss(DpoLossKind::Sigmoid, 0.2, 0.0), 0.678_771_920_3);
}

#[test]
fn robust_loss() {
    // (−0.8·log σ(βh) + 0.2·log σ(−βh)) / 0.6, averaged
    assert_near(loss(DpoLossKind::Robust, 0.2, 0.0), 0.652_105_253_7);
}

#[test]
fn hinge_loss() {
    // mean(relu(1 − 0.1), relu(1 − 0)) = 0.95
    assert_near(loss(DpoLossKind::Hinge, 0.0, 0.0), 0.95);
}

#[test]
fn ipo_loss_uses_per_token_averages() {
    // h_avg = [(−2 + 2.1) − (−11/3 + 3.5), (−3 + 3.125) − (−1.5 + 19/12)] = [4/15, 1/24];
    // mean((h_avg − 5)²) = 23.494756944
    assert_near(loss(DpoLossKind::Ipo, 0.0, 0.0), 23.494_756_944);
}

#[test]
fn simpo_needs_no_reference() {
    let (policy, _) = pairs();
    let config = DpoConfig::with_loss(DpoLossKind::Simpo);
    // avg logps: c = [−2, −3], r = [−11/3, −1.5]; −log σ(0.1·Δ − 0.5), averaged = 0.971847122
    let output = dpo_loss(&config, &policy, None);
    assert_near(to_vec(output.loss)[0] as f64, 0.971_847_121_9);
    // SimPO's rewards are β·avg log π.
    let rewards = to_vec(output.chosen_rewards);
    assert_near(rewards[0] as f64, -0.2);
}

#[test]
fn sft_term_adds_the_chosen_nll_per_token() {
    // sigmoid + 0.3·mean(10/5, 12/4) = 0.668771920 + 0.75
    assert_near(loss(DpoLossKind::Sigmoid, 0.0, 0.3), 1.418_771_920_3);
}

#[test]
fn trl_metrics() {
    let (policy, reference) = pairs();
    let output = dpo_loss(&DpoConfig::default(), &policy, Some(&reference));
    let metrics: std::collections::BTreeMap<&str, f64> = output
        .metrics()
        .into_iter()
        .map(|(name, value)| (name, to_vec(value)[0] as f64))
        .collect();
    // rewards: chosen β·[0.5, 0.5], rejected β·[−0.5, 0.5]; the second margin is exactly 0, which
    // TRL does not count as accurate.
    assert_near(metrics["rewards/chosen"], 0.05);
    assert_near(metrics["rewards/rejected"], 0.0);
    assert_near(metrics["rewards/margins"], 0.05);
    assert_near(metrics["rewards/accuracies"], 0.5);
    assert_near(metrics["logps/chosen"], -11.0);
    assert_near(metrics["logps/rejected"], -10.0);
    assert_eq!(metrics.len(), 6);
    // Two batches joined: the metrics of all pairs, the loss their pair-weighted mean.
    let single = |i: usize| {
        let pick = |t: &burn::tensor::Tensor<1>| t.clone().narrow(0, i, 1);
        fairtune::objective::DpoOutput {
            loss: dpo_loss(
                &DpoConfig::default(),
                &PairLogps {
                    chosen: pick(&policy.chosen),
                    rejected: pick(&policy.rejected),
                    chosen_tokens: pick(&policy.chosen_tokens),
                    rejected_tokens: pick(&policy.rejected_tokens),
                },
                Some(&PairLogps {
                    chosen: pick(&reference.chosen),
                    rejected: pick(&reference.rejected),
                    chosen_tokens: pick(&reference.chosen_tokens),
                    rejected_tokens: pick(&reference.rejected_tokens),
                }),
            )
            .loss,
            per_pair: pick(&output.per_pair),
            chosen_rewards: pick(&output.chosen_rewards),
            rejected_rewards: pick(&output.rejected_rewards),
            chosen_logps: pick(&output.chosen_logps),
            rejected_logps: pick(&output.rejected_logps),
        }
    };
    let joined = fairtune::objective::DpoOutput::cat(vec![single(0), single(1)]);
    assert_near(
        to_vec(joined.loss.clone())[0] as f64,
        to_vec(output.loss.clone())[0] as f64,
    );
    let joined: Vec<f32> = joined
        .metrics()
        .into_iter()
        .map(|(_, v)| to_vec(v)[0])
        .collect();
    let whole: Vec<f32> = output
        .metrics()
        .into_iter()
        .map(|(_, v)| to_vec(v)[0])
        .collect();
    assert_eq!(joined, whole);
}

#[test]
fn invalid_settings_are_rejected() {
    let bad = |config: DpoConfig| config.validate().unwrap_err().to_string();
    assert!(
        bad(DpoConfig {
            beta: 0.0,
            ..DpoConfig::default()
        })
        .contains("--beta")
    );
    assert!(
        bad(DpoConfig {
            beta: -1.0,
            ..DpoConfig::default()
        })
        .contains("--beta")
    );
    assert!(
        bad(DpoConfig {
            label_smoothing: 0.5,
            ..DpoConfig::default()
        })
        .contains("--label-smoothing")
    );
    use DpoLossKind::*;
    let losses = |loss: Vec<DpoLossKind>, weights: Vec<f64>| DpoConfig {
        loss,
        loss_weights: weights,
        ..DpoConfig::default()
    };
    assert!(bad(losses(vec![], vec![])).contains("at least one"));
    assert!(bad(losses(vec![Sigmoid, Sigmoid], vec![])).contains("twice"));
    assert!(bad(losses(vec![Sigmoid, Sft], vec![1.0])).contains("one per loss"));
    assert!(bad(losses(vec![Sigmoid], vec![f64::NAN])).contains("finite"));
    assert!(bad(DpoConfig::with_loss(ExoPair)).contains("label-smoothing ε > 0"));
    assert!(
        bad(DpoConfig {
            f_divergence: fairtune::objective::FDivergence::ForwardKl,
            ..DpoConfig::with_loss(BcoPair)
        })
        .contains("not to bco_pair")
    );
    assert!(
        bad(DpoConfig {
            discopop_tau: 0.0,
            ..DpoConfig::with_loss(Discopop)
        })
        .contains("--discopop-tau")
    );
}

/// A config that names one loss is written as before lists of losses existed (so older runs
/// keep their fingerprint), and both forms read back.
#[test]
fn a_single_loss_is_written_by_its_name() {
    let one = serde_json::to_value(DpoConfig::default()).unwrap();
    assert_eq!(one["loss"], "sigmoid");
    assert!(one.get("loss_weights").is_none() && one.get("f_divergence").is_none());
    let many = DpoConfig {
        loss: vec![DpoLossKind::Sigmoid, DpoLossKind::BcoPair],
        loss_weights: vec![0.8, 0.2],
        ..DpoConfig::default()
    };
    let json = serde_json::to_value(&many).unwrap();
    assert_eq!(json["loss"], serde_json::json!(["sigmoid", "bco_pair"]));
    assert_eq!(serde_json::from_value::<DpoConfig>(json).unwrap(), many);
    assert_eq!(
        serde_json::from_value::<DpoConfig>(one).unwrap(),
        DpoConfig::default()
    );
}

/// The packed, prefix-sharing, chunked, completion-only log-probs equal the plain computation
/// (every sequence padded in its own row, full logits), values and gradients, whatever the chunk
/// size and whether pairs share their prompt or not.
#[test]
fn packed_completion_logps_match_full_logits() {
    use burn::optim::GradientsParams;
    use fairtune::data::LmSequence;
    use fairtune::data::batch::lm_batch;
    use fairtune::model::logps::{pair_groups, sequence_logps};
    use fairtune::model::{self, ArchConfig};
    use fairtune::objective::losses::completion_logps;

    let device = common::cpu().autodiff();
    let (ArchConfig::Llama(config), _) = model::resolve("tiny-llama", 264).unwrap() else {
        unreachable!()
    };
    device.seed(5);
    let model = config.init(&device);
    // Two preference pairs (chosen and rejected share the pair's prompt tokens) and a pair whose
    // completions also share their first tokens, laid out [chosen…, rejected…].
    let sequence = |prompt: &[u32], completion: &[u32]| LmSequence {
        tokens: prompt.iter().chain(completion).copied().collect(),
        completion: (0..prompt.len() + completion.len())
            .map(|i| i >= prompt.len())
            .collect(),
    };
    let tokens =
        |n: u32, offset: u32| -> Vec<u32> { (0..n).map(|i| 8 + (i * 37 + offset) % 250).collect() };
    let (p1, p2, p3) = (tokens(5, 1), tokens(2, 9), tokens(9, 4));
    let seqs = [
        sequence(&p1, &tokens(7, 3)),
        sequence(&p2, &tokens(3, 5)),
        sequence(&p3, &[40, 41, 42]),
        sequence(&p1, &tokens(4, 11)),
        sequence(&p2, &tokens(6, 2)),
        sequence(&p3, &[40, 41, 77, 78]),
    ];
    let refs: Vec<&LmSequence> = seqs.iter().collect();

    // The plain path: each sequence padded into its own row, logits everywhere.
    let batch = lm_batch(&refs, 0, &device);
    let logits = model.forward(batch.input_ids.clone());
    let (full, full_counts) = completion_logps(logits, batch.input_ids, batch.completion_mask);
    let full_grads = GradientsParams::from_grads(full.clone().sum().backward(), &model);
    let ids = [
        model.embedding_weight().id,
        model.model.layers[0]
            .self_attn
            .q_proj
            .as_ref()
            .unwrap()
            .weight
            .id,
        model.model.layers[1].mlp.down_proj.weight.id,
    ];
    let gradients = |grads: &GradientsParams| -> Vec<Vec<f32>> {
        ids.iter()
            .map(|&id| to_vec(grads.get::<2>(id).expect("a gradient")))
            .collect()
    };
    let full_grad = gradients(&full_grads);
    let singles: Vec<Vec<usize>> = (0..seqs.len()).map(|i| vec![i]).collect();
    for (layout, groups) in [("singles", singles), ("pairs", pair_groups(3))] {
        for chunk in [1, 3, 1000] {
            let (sums, counts, num_tokens) = sequence_logps(&model, &refs, &groups, &device, chunk);
            assert_eq!(
                num_tokens, batch.num_tokens,
                "tokens count every sequence in full"
            );
            let (a, b) = (to_vec(sums.clone()), to_vec(full.clone()));
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() < 1e-4,
                    "{layout}, chunk {chunk}: {a:?} vs {b:?}"
                );
            }
            assert_eq!(to_vec(counts), to_vec(full_counts.clone()));
            let grads = GradientsParams::from_grads(sums.sum().backward(), &model);
            for (grad, want) in gradients(&grads).iter().zip(&full_grad) {
                let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let worst = grad
                    .iter()
                    .zip(want)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst < 1e-4 * scale.max(1.0),
                    "{layout}, chunk {chunk}: gradients differ by {worst}"
                );
            }
        }
    }
}

/// LD-DPO's weights (TRL's `ld_alpha`): each completion's first min(len chosen, len rejected)
/// tokens count once, the longer completion's tail α times — the packed sums equal the plain
/// full-logits sums over the shared and the tail positions, combined as TRL combines them. And
/// WPO's aligned sums Σ_t (log p(y_t) − log Σ_v p_v²) equal the full-logits log-softmax's,
/// every token counted once, whatever the vocabulary blocks.
#[test]
fn ld_alpha_weights_the_longer_completions_tail() {
    use fairtune::data::LmSequence;
    use fairtune::data::batch::lm_batch;
    use fairtune::model::logps::{Extras, TailWeights, pair_groups, sequence_logps_weighted};
    use fairtune::model::{self, ArchConfig};
    use fairtune::objective::losses::completion_logps;

    let device = common::cpu();
    let (ArchConfig::Llama(config), _) = model::resolve("tiny-llama", 264).unwrap() else {
        unreachable!()
    };
    device.seed(9);
    let model = config.init(&device);
    let sequence = |prompt: &[u32], completion: &[u32]| LmSequence {
        tokens: prompt.iter().chain(completion).copied().collect(),
        completion: (0..prompt.len() + completion.len())
            .map(|i| i >= prompt.len())
            .collect(),
    };
    // Two pairs: chosen longer in the first, rejected longer in the second.
    let seqs = [
        sequence(&[10, 11, 12], &[20, 21, 22, 23, 24]),
        sequence(&[30, 31], &[40, 41]),
        sequence(&[10, 11, 12], &[50, 51]),
        sequence(&[30, 31], &[60, 61, 62, 63]),
    ];
    let shared = [2usize, 2, 2, 2];
    let alpha = 0.3;
    let refs: Vec<&LmSequence> = seqs.iter().collect();
    let scored = sequence_logps_weighted(
        &model,
        &refs,
        &pair_groups(2),
        &device,
        usize::MAX,
        None,
        Extras {
            tail: Some(TailWeights {
                shared: &shared,
                alpha,
            }),
            wpo: true,
        },
    );
    let (weighted, counts) = (scored.sums, scored.counts);
    // The plain path, once over the shared positions and once over the tails.
    let batch = lm_batch(&refs, 0, &device);
    let logits = model.forward(batch.input_ids.clone());
    let mask_of = |keep: &dyn Fn(usize, usize) -> bool| {
        let [rows, width] = batch.completion_mask.dims();
        let mask = to_vec(batch.completion_mask.clone());
        let mut out = vec![0f32; rows * width];
        for row in 0..rows {
            let mut k = 0;
            for t in 0..width {
                if mask[row * width + t] > 0.0 {
                    out[row * width + t] = if keep(row, k) { 1.0 } else { 0.0 };
                    k += 1;
                }
            }
        }
        burn::tensor::Tensor::<2>::from_data(
            burn::tensor::TensorData::new(out, [rows, width]),
            &device,
        )
    };
    let part = |keep: &dyn Fn(usize, usize) -> bool| {
        to_vec(completion_logps(logits.clone(), batch.input_ids.clone(), mask_of(keep)).0)
    };
    let head = part(&|row, k| k < shared[row]);
    let tail = part(&|row, k| k >= shared[row]);
    let got = to_vec(weighted);
    for row in 0..4 {
        let want = head[row] + alpha as f32 * tail[row];
        assert!(
            (got[row] - want).abs() < 1e-4,
            "row {row}: {got:?} vs {want}"
        );
    }
    assert_eq!(
        to_vec(counts),
        vec![5.0, 2.0, 2.0, 4.0],
        "counts stay unweighted"
    );

    // WPO: log Σ_v p_v² from the full log-softmax, aligned with the target log-probs.
    let [rows, width, _] = logits.dims();
    let predicted = logits.clone().narrow(1, 0, width - 1);
    let log_probs = burn::tensor::activation::log_softmax(predicted, 2);
    let sum_sq = (log_probs.clone() * 2.0)
        .exp()
        .sum_dim(2)
        .log()
        .reshape([rows, width - 1]);
    let targets = batch.input_ids.clone().narrow(1, 1, width - 1);
    let picked = log_probs
        .gather(2, targets.reshape([rows, width - 1, 1]))
        .reshape([rows, width - 1]);
    let mask = batch.completion_mask.clone().narrow(1, 1, width - 1);
    let want = to_vec(((picked - sum_sq) * mask).sum_dim(1).reshape([rows]));
    let got = to_vec(scored.wpo.expect("asked for"));
    for row in 0..4 {
        assert!(
            (got[row] - want[row]).abs() < 1e-4,
            "WPO row {row}: {got:?} vs {want:?}"
        );
    }
    // The blocked reduction is the same over any split of the vocabulary.
    let hidden = burn::tensor::Tensor::<2>::random(
        [3, config.hidden_size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let whole = to_vec(fairtune::model::fused::log_sum_squared_probs_in_blocks(
        hidden.clone(),
        model.output_weight(),
        usize::MAX,
        None,
    ));
    let blocked = to_vec(fairtune::model::fused::log_sum_squared_probs_in_blocks(
        hidden,
        model.output_weight(),
        7,
        None,
    ));
    for (a, b) in whole.iter().zip(&blocked) {
        assert!(
            (a - b).abs() < 1e-5 && *a <= 0.0,
            "{whole:?} vs {blocked:?}"
        );
    }
}
