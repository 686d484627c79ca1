//! The losses of unpaired examples (`kto`, `apo_zero_unpaired`) against TRL 1.16's own
//! `KTOTrainer._compute_loss`, on the fixed log-probs of tests/fixtures/trl/kto.json (made by
//! tests/fixtures/make_trl_kto.py): the loss, TRL's KTO metrics (the KL reference point z₀ among
//! them) and the gradient with respect to every example's log-prob sum.

use burn::tensor::Tensor;
use fairtune::objective::{DpoConfig, DpoLossKind, UnpairedLogps, kto_loss};
use serde_json::Value;

use crate::common::{self, floats, to_vec};

fn numbers(value: &Value) -> Vec<f32> {
    let values = value.as_array().unwrap();
    values.iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

#[track_caller]
fn close(what: &str, got: f32, want: f64) {
    let ok = (got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0);
    assert!(ok, "{what}: fairtune {got}, TRL {want}");
}

#[test]
fn kto_losses_match_trl() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/trl/kto.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let device = common::cpu().autodiff();
    let mut checked = 0;
    let mut clamped = 0;
    for (set_name, set) in fixture["sets"].as_object().unwrap() {
        let labels: Vec<bool> = set["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_bool().unwrap())
            .collect();
        for case in set["cases"].as_array().unwrap() {
            let number = |key: &str| case.get(key).and_then(Value::as_f64).unwrap_or(1.0);
            let loss: DpoLossKind =
                serde_json::from_value(case["loss_type"].clone()).expect("a loss type");
            let config = DpoConfig {
                beta: case["beta"].as_f64().unwrap(),
                desirable_weight: number("desirable_weight"),
                undesirable_weight: number("undesirable_weight"),
                ..DpoConfig::with_loss(loss)
            };
            config.validate().unwrap();
            let logps = floats(&numbers(&set["logps"]), &device).require_grad();
            let kl = loss == DpoLossKind::Kto;
            let policy = UnpairedLogps {
                completions: logps.clone(),
                kl: kl.then(|| floats(&numbers(&set["kl_logps"]), &device)),
            };
            let reference = UnpairedLogps {
                completions: floats(&numbers(&set["ref_logps"]), &device),
                kl: kl.then(|| floats(&numbers(&set["ref_kl_logps"]), &device)),
            };
            let output = kto_loss(&config, &policy, &reference, &labels);
            let name = format!("{set_name} {} β={}", loss.name(), config.beta);
            let value = to_vec(Tensor::from_inner(output.loss.clone().inner()))[0];
            close(
                &format!("{name}: loss"),
                value,
                case["loss"].as_f64().unwrap(),
            );
            let mut grads = output.loss.backward();
            let grad = to_vec(Tensor::from_inner(logps.grad_remove(&mut grads).unwrap()));
            for (i, (g, w)) in grad.iter().zip(numbers(&case["grad"])).enumerate() {
                close(&format!("{name}: ∂/∂logps[{i}]"), *g, w as f64);
            }
            let metrics = output.metrics();
            let names: Vec<&str> = metrics.iter().map(|(n, _)| *n).collect();
            let want = case["metrics"].as_object().unwrap();
            // The same metrics as TRL logs (no rejected ones when no example is undesirable).
            let mut want_names: Vec<&str> = want.keys().map(String::as_str).collect();
            let mut got_names = names.clone();
            want_names.sort();
            got_names.sort();
            assert_eq!(got_names, want_names, "{name}: metric names");
            for (metric, value) in metrics {
                close(
                    &format!("{name}: {metric}"),
                    to_vec(value)[0],
                    want[metric].as_f64().unwrap(),
                );
            }
            if kl && want["kl"].as_f64() == Some(0.0) {
                clamped += 1;
            }
            checked += 1;
        }
    }
    eprintln!("{checked} KTO cases equal TRL's ({clamped} with z₀ clamped to 0)");
    assert!(
        checked >= 36 && clamped >= 3,
        "{checked} cases, {clamped} clamped"
    );
}
