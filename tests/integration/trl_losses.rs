//! Every DPO loss type against TRL 1.16's own `DPOTrainer._compute_loss`, on the fixed log-probs
//! of tests/fixtures/trl/losses.json (made by tests/fixtures/make_trl_losses.py): the loss, TRL's
//! six reward metrics and the gradient with respect to every chosen and rejected log-prob sum,
//! for moderate and for extreme |β·h|; and WPO's weights (`use_weighting`) on several of them.

use burn::tensor::Tensor;
use fairtune::objective::{
    DpoConfig, DpoLossKind, FDivergence, PairLogps, dpo_loss_weighted, wpo_weights,
};
use serde_json::Value;

use crate::common::{self, floats, to_vec};

fn numbers(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().map_or(f32::NAN, |x| x as f32))
        .collect()
}

fn parse<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_value(Value::String(name.to_string())).unwrap()
}

fn config(case: &Value) -> DpoConfig {
    let number = |key: &str, default: f64| case.get(key).and_then(Value::as_f64).unwrap_or(default);
    DpoConfig {
        beta: number("beta", 0.1),
        loss: case["loss_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| parse::<DpoLossKind>(l.as_str().unwrap()))
            .collect(),
        loss_weights: case
            .get("loss_weights")
            .and_then(Value::as_array)
            .map(|w| w.iter().map(|x| x.as_f64().unwrap()).collect())
            .unwrap_or_default(),
        label_smoothing: number("label_smoothing", 0.0),
        f_divergence: case
            .get("f_divergence_type")
            .and_then(Value::as_str)
            .map_or(FDivergence::ReverseKl, parse),
        f_alpha_divergence_coef: number("f_alpha_divergence_coef", 0.5),
        discopop_tau: number("discopop_tau", 0.05),
        use_weighting: case["use_weighting"].as_bool().unwrap_or(false),
        ..DpoConfig::default()
    }
}

/// TRL's value is the reference where it is finite; where its float32 code overflows (inf or
/// NaN), ours must stay finite in the loss, a value TRL cannot give.
#[track_caller]
fn close(what: &str, got: f32, want: f64) -> bool {
    if !want.is_finite() {
        return true;
    }
    let ok = (got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0);
    assert!(ok, "{what}: fairtune {got}, TRL {want}");
    ok
}

#[test]
fn every_loss_matches_trl() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/trl/losses.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let device = common::cpu().autodiff();
    let mut checked = 0;
    let mut trl_overflows = Vec::new();
    for (set_name, set) in fixture["sets"].as_object().unwrap() {
        for case in set["cases"].as_array().unwrap() {
            let config = config(case);
            config.validate().unwrap();
            let chosen = floats(&numbers(&set["chosen"]), &device).require_grad();
            let rejected = floats(&numbers(&set["rejected"]), &device).require_grad();
            let policy = PairLogps {
                chosen: chosen.clone(),
                rejected: rejected.clone(),
                chosen_tokens: floats(&numbers(&set["chosen_tokens"]), &device),
                rejected_tokens: floats(&numbers(&set["rejected_tokens"]), &device),
            };
            let reference = PairLogps {
                chosen: floats(&numbers(&set["ref_chosen"]), &device),
                rejected: floats(&numbers(&set["ref_rejected"]), &device),
                ..policy.clone()
            };
            // ORPO is reference-free: its rewards are β·avg log π, as TRL's ORPOTrainer logs them.
            let reference_free = case["reference_free"].as_bool().unwrap_or(false);
            // WPO: the weights from the policy's sums and the stored Σ_t log Σ_v p_v² (detached).
            let weights = config.use_weighting.then(|| {
                let sum_sq = |key: &str| floats(&numbers(&set[key]), &device);
                wpo_weights(
                    chosen.clone() - sum_sq("chosen_sum_sq"),
                    rejected.clone() - sum_sq("rejected_sum_sq"),
                    &policy,
                )
            });
            let output = dpo_loss_weighted(
                &config,
                &policy,
                (!reference_free).then_some(&reference),
                weights,
            );
            let name = format!(
                "{set_name} {}{} β={} {}",
                case["loss_type"],
                if config.use_weighting { " WPO" } else { "" },
                config.beta,
                case.get("f_divergence_type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            let mut grads = output.loss.backward();
            // No gradient: the loss does not depend on it (rejected, for `sft`).
            let grad = |t: &Tensor<1>, grads: &mut _| match t.grad_remove(grads) {
                Some(g) => to_vec(Tensor::from_inner(g)),
                None => vec![0.0; t.dims()[0]],
            };
            let (grad_c, grad_r) = (grad(&chosen, &mut grads), grad(&rejected, &mut grads));
            let loss = to_vec(Tensor::from_inner(output.loss.clone().inner()))[0];
            let want = case["loss"].as_f64().unwrap_or(f64::NAN);
            if !want.is_finite() {
                // Forward KL's e^{−u} and the α-divergence's e^{80}² (IPO squares it) at
                // log-ratios of −400 exceed float32 themselves: no finite answer exists there.
                // Everywhere else TRL's overflow is its formula's, and ours must be finite.
                let beyond_f32 = matches!(
                    config.f_divergence,
                    FDivergence::ForwardKl | FDivergence::AlphaDivergence
                );
                assert!(
                    beyond_f32 || loss.is_finite(),
                    "{name}: TRL overflows to {want}, fairtune to {loss}"
                );
                trl_overflows.push(format!("{name} (fairtune {loss})"));
                continue;
            }
            close(&format!("{name}: loss"), loss, want);
            // Where TRL's gradient is inf or NaN but its loss is finite, ours must be finite.
            assert!(
                grad_c.iter().chain(&grad_r).all(|g| g.is_finite()),
                "{name}: gradients {grad_c:?} {grad_r:?}"
            );
            for (i, (g, w)) in grad_c.iter().zip(numbers(&case["grad_chosen"])).enumerate() {
                close(&format!("{name}: ∂/∂chosen[{i}]"), *g, w as f64);
            }
            for (i, (g, w)) in grad_r
                .iter()
                .zip(numbers(&case["grad_rejected"]))
                .enumerate()
            {
                close(&format!("{name}: ∂/∂rejected[{i}]"), *g, w as f64);
            }
            for (metric, value) in output.metrics() {
                let Some(want) = case["metrics"].get(metric) else {
                    continue; // ORPO's logps/* are averages in TRL, sums here (DPOTrainer's).
                };
                let want = want.as_f64().unwrap_or(f64::NAN);
                close(&format!("{name}: {metric}"), to_vec(value)[0], want);
            }
            checked += 1;
        }
    }
    eprintln!(
        "{checked} cases equal TRL's; TRL's float32 overflows in: {}",
        trl_overflows.join("; ")
    );
    assert!(checked >= 84, "{checked} cases checked");
}
