//! The fairness penalty F: known values, and its gradient against finite differences.

use burn::tensor::Device;
use fairtune::group_stats::GroupStatsImpl;
use fairtune::objective::penalty;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{self, assert_close, floats, ints, to_vec};

/// F in f64 on the host, written independently of the library: ½ Σ_y Σ_g (m_yg − m̄_y)².
fn host_penalty(
    scores: &[f64],
    groups: &[i64],
    labels: Option<&[i64]>,
    num_groups: usize,
    num_labels: usize,
) -> f64 {
    let mut total = 0.0;
    for y in 0..num_labels as i64 {
        let mut sums = vec![0.0; num_groups];
        let mut counts = vec![0.0; num_groups];
        for (i, (&s, &g)) in scores.iter().zip(groups).enumerate() {
            let label = labels.map_or(0, |l| l[i]);
            if g >= 0 && label == y {
                sums[g as usize] += s;
                counts[g as usize] += 1.0;
            }
        }
        let means: Vec<f64> = (0..num_groups)
            .filter(|&g| counts[g] > 0.0)
            .map(|g| sums[g] / counts[g])
            .collect();
        if means.is_empty() {
            continue;
        }
        let grand = means.iter().sum::<f64>() / means.len() as f64;
        total += 0.5 * means.iter().map(|m| (m - grand).powi(2)).sum::<f64>();
    }
    total
}

fn penalty_and_grad(
    device: &Device,
    scores: &[f32],
    groups: &[i64],
    labels: Option<&[i64]>,
    num_groups: usize,
    num_labels: usize,
    implementation: GroupStatsImpl,
) -> (f32, Vec<f32>) {
    let device = device.clone().autodiff();
    let s = floats(scores, &device).require_grad();
    let labels = labels.map(|l| (ints(l, &device), num_labels));
    let term = penalty(
        s.clone(),
        ints(groups, &device),
        num_groups,
        labels,
        implementation,
    );
    let grads = term.penalty.clone().backward();
    (
        to_vec(term.penalty)[0],
        to_vec(s.grad(&grads).expect("gradient")),
    )
}

#[test]
fn two_groups_give_a_quarter_of_the_squared_gap() {
    // m_a = 1, m_b = 0: F = ½[(½)² + (½)²] = ¼, so the seed's ½(m_a − m_b)² = 2F.
    let device = common::cpu();
    let (value, grad) = penalty_and_grad(
        &device,
        &[1.0, 1.0, 0.0, 0.0],
        &[0, 0, 1, 1],
        None,
        2,
        1,
        GroupStatsImpl::Reference,
    );
    assert!((value - 0.25).abs() < 1e-7, "F = {value}");
    // ∂F/∂s_i = (m_g − m̄)/n_g = ±½/2.
    assert_close(&grad, &[0.25, 0.25, -0.25, -0.25], 1e-6, "grad");
}

#[test]
fn empty_groups_and_ungrouped_examples_do_not_count() {
    let device = common::cpu();
    // Group 1 of 3 is empty; the -1 example is not a fairness example.
    let scores = [0.9, 0.7, 0.2, 5.0];
    let groups = [0, 0, 2, -1];
    let (value, grad) = penalty_and_grad(
        &device,
        &scores,
        &groups,
        None,
        3,
        1,
        GroupStatsImpl::Reference,
    );
    let expected = host_penalty(&[0.9, 0.7, 0.2, 5.0], &groups, None, 3, 1);
    assert!(
        (value as f64 - expected).abs() < 1e-6,
        "F = {value}, want {expected}"
    );
    assert_eq!(grad[3], 0.0);
    // One group only: no gap.
    let (single, _) = penalty_and_grad(
        &device,
        &[0.1, 0.9],
        &[1, 1],
        None,
        2,
        1,
        GroupStatsImpl::Reference,
    );
    assert_eq!(single, 0.0);
}

fn check_gradient_against_finite_differences(
    device: &Device,
    implementation: GroupStatsImpl,
    eo: bool,
) {
    let mut rng = StdRng::seed_from_u64(if eo { 3 } else { 2 });
    let (n, num_groups, num_labels) = (60usize, 5usize, if eo { 2 } else { 1 });
    let scores: Vec<f32> = (0..n).map(|_| rng.random_range(0.0f32..1.0)).collect();
    // Group 3 stays empty; a few examples have no group.
    let groups: Vec<i64> = (0..n)
        .map(|i| {
            if i % 13 == 0 {
                -1
            } else {
                [0, 1, 2, 4][rng.random_range(0..4)]
            }
        })
        .collect();
    let labels: Vec<i64> = (0..n)
        .map(|_| rng.random_range(0..num_labels as i64))
        .collect();
    let label_arg = eo.then_some(labels.as_slice());

    let (value, grad) = penalty_and_grad(
        device,
        &scores,
        &groups,
        label_arg,
        num_groups,
        num_labels,
        implementation,
    );
    let as_f64: Vec<f64> = scores.iter().map(|&s| s as f64).collect();
    let expected = host_penalty(&as_f64, &groups, label_arg, num_groups, num_labels);
    assert!(
        (value as f64 - expected).abs() < 1e-6,
        "F = {value}, want {expected}"
    );

    let step = 1e-4;
    let numeric: Vec<f64> = (0..n)
        .map(|i| {
            let mut plus = as_f64.clone();
            let mut minus = as_f64.clone();
            plus[i] += step;
            minus[i] -= step;
            (host_penalty(&plus, &groups, label_arg, num_groups, num_labels)
                - host_penalty(&minus, &groups, label_arg, num_groups, num_labels))
                / (2.0 * step)
        })
        .collect();
    let scale = numeric.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for (i, (&got, &want)) in grad.iter().zip(&numeric).enumerate() {
        assert!(
            (got as f64 - want).abs() <= 1e-4 * scale.max(1e-3),
            "∂F/∂s[{i}]: autodiff {got}, finite differences {want}"
        );
    }
}

#[test]
fn gradient_matches_finite_differences_on_cpu() {
    check_gradient_against_finite_differences(&common::cpu(), GroupStatsImpl::Reference, false);
    check_gradient_against_finite_differences(&common::cpu(), GroupStatsImpl::Reference, true);
}

#[test]
fn gradient_matches_finite_differences_through_the_wgsl_kernels() {
    let Some(wgpu) = common::wgpu() else { return };
    check_gradient_against_finite_differences(&wgpu.device, GroupStatsImpl::Wgsl, false);
    check_gradient_against_finite_differences(&wgpu.device, GroupStatsImpl::Wgsl, true);
}

/// Every statistic and both penalty forms on the host, in f64, written from their definitions:
/// per group g, m_g = Σ a_i / Σ b_i over the group's examples (dp: a = s, b = 1; tpr: over the
/// positives; fpr: over the negatives; accuracy: a = s·y + (1−s)(1−y); ppv: a = s·y, b = s);
/// squared: ½ Σ_g (m_g − mean_g m_g)²; norm: Σ_g |m_g / c − 1|, c = Σ a / Σ b over all examples;
/// level_up: ½ Σ_g (m_g − best)², `best` given (the best group's m_g, held fixed).
fn host_statistic(
    kind: &str,
    form: &str,
    best: f64,
    scores: &[f64],
    groups: &[i64],
    y: &[bool],
    g: usize,
) -> f64 {
    let (m, pooled) = host_means(kind, scores, groups, y, g);
    match form {
        "norm" => m.iter().map(|x| (x / pooled - 1.0).abs()).sum(),
        "level_up" => 0.5 * m.iter().map(|x| (x - best).powi(2)).sum::<f64>(),
        _ => {
            let mean = m.iter().sum::<f64>() / m.len() as f64;
            0.5 * m.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
        }
    }
}

/// The statistic of each group present, and pooled over every example.
fn host_means(kind: &str, scores: &[f64], groups: &[i64], y: &[bool], g: usize) -> (Vec<f64>, f64) {
    let (mut a, mut b, mut n) = (vec![0.0; g], vec![0.0; g], vec![0usize; g]);
    for i in 0..scores.len() {
        if groups[i] < 0 {
            continue;
        }
        let (s, pos) = (scores[i], y[i]);
        let (ai, bi) = match kind {
            "dp" => (s, 1.0),
            "tpr" if pos => (s, 1.0),
            "fpr" if !pos => (s, 1.0),
            "tpr" | "fpr" => continue,
            "accuracy" => (if pos { s } else { 1.0 - s }, 1.0),
            "ppv" => (if pos { s } else { 0.0 }, s),
            _ => unreachable!(),
        };
        let k = groups[i] as usize;
        a[k] += ai;
        b[k] += bi;
        n[k] += 1;
    }
    let present: Vec<usize> = (0..g).filter(|&k| n[k] > 0).collect();
    let m: Vec<f64> = present.iter().map(|&k| a[k] / b[k]).collect();
    (m, a.iter().sum::<f64>() / b.iter().sum::<f64>())
}

fn check_statistics(device: &Device, implementation: GroupStatsImpl) {
    use fairtune::objective::{FairnessKind, FairnessSpec, PenaltyForm, fairness_term};
    let device = &device.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(11);
    let (n, num_groups) = (48usize, 4usize);
    let scores: Vec<f32> = (0..n).map(|_| rng.random_range(0.05f32..0.95)).collect();
    let groups: Vec<i64> = (0..n)
        .map(|i| {
            if i % 11 == 0 {
                -1
            } else {
                rng.random_range(0..3)
            }
        })
        .collect();
    // Labels 0..3 with positive class 2: y = [label == 2].
    let labels: Vec<i64> = (0..n).map(|_| rng.random_range(0..3)).collect();
    let y: Vec<bool> = labels.iter().map(|&l| l == 2).collect();
    for (kind, name) in [
        (FairnessKind::Dp, "dp"),
        (FairnessKind::Tpr, "tpr"),
        (FairnessKind::Fpr, "fpr"),
        (FairnessKind::Ppv, "ppv"),
        (FairnessKind::Accuracy, "accuracy"),
    ] {
        for (form, form_name) in [
            (PenaltyForm::Squared, "squared"),
            (PenaltyForm::Norm, "norm"),
            (PenaltyForm::LevelUp, "level_up"),
        ] {
            let spec = FairnessSpec {
                kind,
                form,
                positive: 2,
            };
            let s = floats(&scores, device).require_grad();
            let term = fairness_term(
                spec,
                s.clone(),
                ints(&groups, device),
                num_groups,
                Some((ints(&labels, device), 3)),
                implementation,
            );
            let value = to_vec(term.penalty.clone())[0] as f64;
            let mut grads = term.penalty.backward();
            let grad = to_vec(burn::tensor::Tensor::from_inner(
                s.grad_remove(&mut grads).expect("a gradient"),
            ));
            let as_f64: Vec<f64> = scores.iter().map(|&x| x as f64).collect();
            // level_up's target: the best group now (FPR: the lowest), a constant for the gradient.
            let (m, _) = host_means(name, &as_f64, &groups, &y, num_groups);
            let best = if name == "fpr" {
                m.iter().copied().fold(f64::INFINITY, f64::min)
            } else {
                m.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            };
            let host =
                |s: &[f64]| host_statistic(name, form_name, best, s, &groups, &y, num_groups);
            let what = format!("{name} {form:?}");
            assert!(
                (value - host(&as_f64)).abs() < 1e-5 * host(&as_f64).abs().max(1.0),
                "{what}: F = {value}, want {}",
                host(&as_f64)
            );
            let step = 1e-4;
            let numeric: Vec<f64> = (0..n)
                .map(|i| {
                    let (mut plus, mut minus) = (as_f64.clone(), as_f64.clone());
                    plus[i] += step;
                    minus[i] -= step;
                    (host(&plus) - host(&minus)) / (2.0 * step)
                })
                .collect();
            let scale = numeric.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            for (i, (&got, &want)) in grad.iter().zip(&numeric).enumerate() {
                assert!(
                    (got as f64 - want).abs() <= 1e-3 * scale.max(1e-3),
                    "{what} ∂F/∂s[{i}]: autodiff {got}, finite differences {want}"
                );
            }
        }
    }
}

#[test]
fn every_statistic_matches_its_definition_and_finite_differences() {
    check_statistics(&common::cpu(), GroupStatsImpl::Reference);
}

#[test]
fn every_statistic_runs_through_the_wgsl_kernels() {
    let Some(wgpu) = common::wgpu() else { return };
    check_statistics(&wgpu.device, GroupStatsImpl::Wgsl);
}
