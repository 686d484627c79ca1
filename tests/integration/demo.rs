//! `fairtune demo`: its fairness set, and the whole job end to end (few steps).

use std::collections::BTreeMap;

use crate::common::{fairtune, read_json, stderr, tempdir};

/// The identity-term templates: every group gets exactly the same sentences (only the term and
/// its article change), the held-out split shares no sentence with the training one.
#[test]
fn identity_templates_are_counterfactual() {
    use fairtune::apps::demo::identity_rows;
    let (train, eval) = (
        identity_rows("train").unwrap(),
        identity_rows("eval").unwrap(),
    );
    for rows in [&train, &eval] {
        let mut by_group: BTreeMap<String, Vec<(String, Option<u64>)>> = BTreeMap::new();
        for row in rows.iter() {
            let group = row["group"].as_str().unwrap().to_string();
            let text = row["text"].as_str().unwrap();
            assert!(!text.contains('{'), "unfilled template: {text}");
            // Mask the term (and its article) to compare the sentences across groups.
            let masked = text
                .replace(&format!("an {group}"), "A X")
                .replace(&format!("a {group}"), "A X")
                .replace(&group, "X");
            let mut capital = group.clone();
            capital[..1].make_ascii_uppercase();
            let masked = masked.replace(&capital, "X");
            by_group
                .entry(group)
                .or_default()
                .push((masked, row["label"].as_u64()));
        }
        assert_eq!(by_group.len(), 16);
        let first = by_group.values().next().unwrap().clone();
        assert!(first.len() >= 15);
        for sentences in by_group.values() {
            assert_eq!(sentences, &first);
        }
    }
    let texts = |rows: &[serde_json::Value], group: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["group"] == group)
            .map(|r| r["text"].as_str().unwrap().to_string())
            .collect()
    };
    let (t, e) = (texts(&train, "Asian"), texts(&eval, "Asian"));
    assert!(t.iter().all(|s| !e.contains(s)));
    assert!(t.iter().any(|s| s.contains("an Asian")));
    assert!(texts(&train, "gay").iter().any(|s| s.contains("a gay")));
}

/// The main job, shortened: both runs, the table, the plot, demo.json; a rerun reuses them.
#[test]
fn demo_runs_end_to_end_and_resumes() {
    if crate::common::fetched("all-minilm-l6-v2").is_none()
        || crate::common::fetched("rotten-tomatoes").is_none()
    {
        return;
    }
    let dir = tempdir();
    let out = dir.path().join("demo");
    let args = [
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
        "--steps",
        "2",
        "--lambda",
        "50",
    ];
    let first = fairtune(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let table = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(table.contains("| λ | accuracy | group gap |"), "{table}");
    assert!(table.contains("λ = 50: group gap"), "{table}");
    for file in ["pareto.png", "pareto.svg", "sweep.json", "demo.json"] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let report = read_json(&out.join("demo.json"));
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["lambda"], 0.0);
    for run in runs {
        let accuracy = run["metric"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy));
        // The gap is the spread of the group means the table names (max − min).
        let (low, high) = (&run["lowest_group"], &run["highest_group"]);
        assert!(low[0].is_string() && high[0].is_string(), "{run}");
        let spread = high[1].as_f64().unwrap() - low[1].as_f64().unwrap();
        let gap = run["gap"].as_f64().unwrap();
        assert!(
            (gap - spread).abs() < 1e-6,
            "gap {gap} vs max − min {spread}: {run}"
        );
    }
    let again = fairtune(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("reusing"), "{}", stderr(&again));
    assert_eq!(read_json(&out.join("demo.json"))["runs"], report["runs"]);

    let bad = fairtune(&["demo", "--out", out.to_str().unwrap(), "--lambda=-1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--lambda must be a positive number"));
}
