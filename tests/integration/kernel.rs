//! The WGSL group_stats op against the tensor-op reference and an f64 host computation.

use burn::tensor::Device;
use fairtune::group_stats::{GroupStatsImpl, group_stats_with};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{self, assert_close, floats, ints, to_vec};

/// Scores in [-2, 2) and group ids that leave some groups empty, with ~5% "no group" (-1) and
/// ~2% ids past the last group (also skipped).
fn case(n: usize, num_groups: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Use only about two thirds of the groups so that empty groups occur for G > 2.
    let used = if num_groups > 2 {
        (num_groups * 2).div_ceil(3)
    } else {
        num_groups
    };
    let scores = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let groups = (0..n)
        .map(|_| match rng.random_range(0..100) {
            0..5 => -1,
            5..7 => num_groups as i64 + rng.random_range(0..3),
            _ => rng.random_range(0..used as i64),
        })
        .collect();
    (scores, groups)
}

/// Sums then counts, in f64, and each entry's scale: Σ|s| for a sum (a float sum's rounding
/// error is relative to that, not to the possibly cancelled result), the count for a count.
fn host_stats(scores: &[f32], groups: &[i64], num_groups: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; 2 * num_groups];
    let mut scale = vec![0.0; 2 * num_groups];
    for (&s, &g) in scores.iter().zip(groups) {
        if g >= 0 && (g as usize) < num_groups {
            out[g as usize] += s as f64;
            scale[g as usize] += (s as f64).abs();
            out[num_groups + g as usize] += 1.0;
            scale[num_groups + g as usize] += 1.0;
        }
    }
    (out, scale)
}

/// |got − want| ≤ 1e-5 · max(scale, 1) for every entry.
#[track_caller]
fn assert_stats(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let tolerance = 1e-5 * scale[i].max(1.0);
        assert!(
            (got[i] as f64 - want[i]).abs() <= tolerance,
            "{what}[{i}]: got {}, want {} (tolerance {tolerance:e})",
            got[i],
            want[i]
        );
    }
}

fn stats(
    device: &Device,
    scores: &[f32],
    groups: &[i64],
    g: usize,
    implementation: GroupStatsImpl,
) -> Vec<f32> {
    to_vec(group_stats_with(
        floats(scores, device),
        ints(groups, device),
        g,
        implementation,
    ))
}

#[test]
fn reference_on_cpu_matches_f64_sums() {
    for (n, g) in [(0, 1), (1, 2), (257, 7), (10_000, 64)] {
        let (scores, groups) = case(n, g, 1);
        let got = stats(
            &common::cpu(),
            &scores,
            &groups,
            g,
            GroupStatsImpl::Reference,
        );
        let (want, scale) = host_stats(&scores, &groups, g);
        assert_stats(&got, &want, &scale, &format!("reference n={n} g={g}"));
    }
}

#[test]
fn wgsl_matches_reference_on_fuzzed_sizes() {
    let Some(wgpu) = common::wgpu() else { return };
    let mut seed = 100;
    for n in [0usize, 1, 255, 256, 257, 100_000] {
        for g in [1usize, 2, 7, 64, 1024] {
            seed += 1;
            let (scores, groups) = case(n, g, seed);
            let reference = stats(
                &common::cpu(),
                &scores,
                &groups,
                g,
                GroupStatsImpl::Reference,
            );
            let wgsl = stats(&wgpu.device, &scores, &groups, g, GroupStatsImpl::Wgsl);
            let reference: Vec<f64> = reference.iter().map(|&x| x as f64).collect();
            let (want, scale) = host_stats(&scores, &groups, g);
            assert_stats(
                &wgsl,
                &reference,
                &scale,
                &format!("wgsl vs reference n={n} g={g}"),
            );
            assert_stats(&wgsl, &want, &scale, &format!("wgsl vs f64 n={n} g={g}"));
        }
    }
}

#[test]
fn wgsl_handles_many_groups_and_millions_of_rows() {
    let Some(wgpu) = common::wgpu() else { return };
    // G past one group per thread (K > 1 per lane); N in the millions. The (200_000, 5_000) and
    // (100_000, 1_024) cases put > 65,535 loop iterations into one invocation unless the launch
    // is planned around llvmpipe's per-invocation loop limit (they failed before it was).
    for (n, g) in [
        (200_000usize, 5_000usize),
        (100_000, 1_024),
        (100_000, 300),
        (3_000_000, 64),
    ] {
        let (scores, groups) = case(n, g, 7);
        let wgsl = stats(&wgpu.device, &scores, &groups, g, GroupStatsImpl::Wgsl);
        let (want, scale) = host_stats(&scores, &groups, g);
        assert_stats(&wgsl, &want, &scale, &format!("wgsl n={n} g={g}"));
    }
}

/// Inputs too long for one launch run in chunks whose results are summed; forward and backward
/// must be unchanged by it.
#[test]
fn chunked_launches_add_up() {
    let Some(wgpu) = common::wgpu() else { return };
    let (n, g) = (25_000, 7);
    let (scores, groups) = case(n, g, 9);
    let (want, scale) = host_stats(&scores, &groups, g);
    let device = wgpu.device.clone().autodiff();
    let s = floats(&scores, &device).require_grad();
    let stats = fairtune::group_stats::wgsl::group_stats_chunked(
        s.clone(),
        ints(&groups, &device),
        g,
        10_000,
    );
    let weights: Vec<f32> = (0..2 * g).map(|i| i as f32 - 3.0).collect();
    let grads = (stats.clone() * floats(&weights, &device).reshape([2, g]))
        .sum()
        .backward();
    assert_stats(&to_vec(stats), &want, &scale, "chunked stats");
    let expected: Vec<f64> = groups
        .iter()
        .map(|&id| {
            if id >= 0 && (id as usize) < g {
                weights[id as usize] as f64
            } else {
                0.0
            }
        })
        .collect();
    assert_close(
        &to_vec(s.grad(&grads).unwrap()),
        &expected,
        1e-6,
        "chunked grad",
    );
}

#[test]
fn wgsl_is_deterministic() {
    let Some(wgpu) = common::wgpu() else { return };
    let (scores, groups) = case(200_000, 7, 3);
    let first = stats(&wgpu.device, &scores, &groups, 7, GroupStatsImpl::Wgsl);
    for _ in 0..3 {
        assert_eq!(
            stats(&wgpu.device, &scores, &groups, 7, GroupStatsImpl::Wgsl),
            first
        );
    }
}

/// d/ds_i of Σ_g w_g·sum_g is w_{g_i} (0 for skipped ids): the backward kernel's whole job.
#[test]
fn wgsl_backward_matches_reference_backward() {
    let Some(wgpu) = common::wgpu() else { return };
    for (n, g) in [(1usize, 1usize), (257, 7), (100_000, 64), (3_000, 1024)] {
        let (scores, groups) = case(n, g, 40 + n as u64);
        let mut rng = StdRng::seed_from_u64(5);
        let weights: Vec<f32> = (0..2 * g).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let grad = |device: &Device, implementation| {
            let device = device.clone().autodiff();
            let s = floats(&scores, &device).require_grad();
            let stats = group_stats_with(s.clone(), ints(&groups, &device), g, implementation);
            let w = floats(&weights, &device).reshape([2, g]);
            let grads = (stats * w).sum().backward();
            to_vec(s.grad(&grads).expect("scores have a gradient"))
        };
        let reference = grad(&common::cpu(), GroupStatsImpl::Reference);
        let wgsl = grad(&wgpu.device, GroupStatsImpl::Wgsl);
        let expected: Vec<f64> = groups
            .iter()
            .map(|&id| {
                if id >= 0 && (id as usize) < g {
                    weights[id as usize] as f64
                } else {
                    0.0
                }
            })
            .collect();
        assert_close(
            &reference,
            &expected,
            1e-6,
            &format!("reference grad n={n} g={g}"),
        );
        assert_close(&wgsl, &expected, 1e-6, &format!("wgsl grad n={n} g={g}"));
    }
}
