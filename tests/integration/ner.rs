//! Token classification: subword alignment, training that learns entities, and a WNUT-16 slice
//! through MiniLM end to end.

use fairtune::data::{Encoder, TruncationStats};
use fairtune::tokenizer::TextTokenizer;
use serde_json::{Value, json};

use crate::common::{self, TrainCommand, fairtune, jsonl, read_json, stderr, write};

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[test]
fn subwords_are_aligned_to_words() {
    let bytes = TextTokenizer::Bytes;
    let encoder = Encoder::new(&bytes, 64, 1).unwrap();
    let mut stats = TruncationStats::default();
    let (ids, word_of, kept) = encoder.words(&words("ab c"), &mut stats).unwrap();
    // [CLS] a b ␠ c [SEP]: each word labelled at its first byte only.
    assert_eq!(ids.len(), 6);
    assert_eq!(word_of, [None, Some(0), None, None, Some(1), None]);
    assert_eq!(kept, 2);
    let short = Encoder::new(&bytes, 4, 1).unwrap();
    let (ids, word_of, kept) = short.words(&words("ab c d"), &mut stats).unwrap();
    assert_eq!((ids.len(), kept), (4, 1), "{word_of:?}");
    assert_eq!(stats.truncated, 1);

    let Some(minilm) = common::fetched("all-minilm-l6-v2") else {
        return;
    };
    let tokenizer = TextTokenizer::from_file(&minilm.join("tokenizer.json")).unwrap();
    let pieces = tokenizer
        .encode_words(&words("Paris unbelievably !"))
        .unwrap();
    let of: Vec<usize> = pieces.iter().map(|p| p.1).collect();
    assert!(of.windows(2).all(|w| w[0] <= w[1]), "{of:?}");
    assert!(
        of.iter().filter(|&&w| w == 1).count() > 1,
        "a word split in subwords: {of:?}"
    );
    assert_eq!(*of.last().unwrap(), 2);
}

/// Sentences with person (two-word) and location names among filler words.
fn synthetic(count: usize, seed: usize) -> Vec<Value> {
    let people = ["alice smith", "bob jones", "carol white", "dan brown"];
    let places = ["paris", "lima", "oslo", "cairo", "quito"];
    let filler = ["we", "saw", "today", "near", "and", "then", "left", "met"];
    (0..count)
        .map(|i| {
            let k = i * 7 + seed;
            let (mut tokens, mut tags) = (Vec::new(), Vec::new());
            for slot in 0..5 {
                match (k + slot * 3) % 4 {
                    0 => {
                        let (first, last) =
                            people[(k + slot) % people.len()].split_once(' ').unwrap();
                        tokens.extend([first, last]);
                        tags.extend(["B-per", "I-per"]);
                    }
                    1 => {
                        tokens.push(places[(k / 2 + slot) % places.len()]);
                        tags.push("B-loc");
                    }
                    _ => {
                        tokens.push(filler[(k + slot * 5) % filler.len()]);
                        tags.push("O");
                    }
                }
            }
            json!({"tokens": tokens, "tags": tags})
        })
        .collect()
}

#[test]
fn ner_learns_entities_on_the_cpu_backend() {
    let dir = common::tempdir();
    let train = write(dir.path(), "train.jsonl", &jsonl(&synthetic(96, 0)));
    let eval = write(dir.path(), "eval.jsonl", &jsonl(&synthetic(32, 3)));
    let out = dir.path().join("run");
    let report = TrainCommand::new("ner", "tiny-bert", &train, &out)
        .set("--eval", eval.display())
        .set("--steps", 60)
        .set("--batch-size", 16)
        .set("--lr", "3e-3")
        .set("--seed", 3)
        .run();
    let f1 = report["entity_f1"].as_f64().unwrap();
    eprintln!("synthetic NER entity F1 {f1:.3}: {}", report["per_type"]);
    assert!(f1 > 0.8, "entity F1 {f1}");
    let config = read_json(&out.join("hf/config.json"));
    assert_eq!(config["architectures"][0], "BertForTokenClassification");
    assert_eq!(config["id2label"]["0"], "O");
    assert_eq!(config["label2id"]["I-per"], 3);

    // `fairtune eval --run` gives the run's own entity scores on the same file.
    let output = fairtune(&[
        "eval",
        "--run",
        out.to_str().unwrap(),
        "--data",
        eval.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains(&format!("entity_f1: {}", report["entity_f1"])),
        "{printed}"
    );

    // `fairtune compare` shows a NER run with NER's columns, not another task's.
    let output = fairtune(&["compare", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("entity F1") && table.contains(&format!("{f1:.4}")),
        "{table}"
    );
    assert!(!table.contains("reward"), "{table}");
    // Runs of two tasks side by side are refused: their columns differ.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let mut dpo = read_json(&out.join("report.json"));
    dpo["task"] = json!("dpo");
    write(&other, "report.json", &dpo.to_string());
    let output = fairtune(&["compare", out.to_str().unwrap(), other.to_str().unwrap()]);
    common::expect_error(&output, 2, "compare runs of one task");
}

#[test]
fn ner_refuses_bad_rows_and_fairness() {
    let dir = common::tempdir();
    let bad = write(
        dir.path(),
        "bad.jsonl",
        "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n",
    );
    let out = dir.path().join("run");
    let output = TrainCommand::new("ner", "tiny-bert", &bad, &out).output();
    common::expect_error(&output, 2, ":1: 2 tokens but 1 tags");
    let tags = write(
        dir.path(),
        "tags.jsonl",
        "{\"tokens\": [\"a\"], \"tags\": [\"PER\"]}\n",
    );
    let output = TrainCommand::new("ner", "tiny-bert", &tags, &out).output();
    common::expect_error(&output, 2, "not a BIO tag");
    let good = write(dir.path(), "good.jsonl", &jsonl(&synthetic(4, 0)));
    let output = TrainCommand::new("ner", "tiny-bert", &good, &out)
        .set("--fairness-lambda", 1)
        .output();
    common::expect_error(&output, 2, "no fairness examples");
    let output = TrainCommand::new("ner", "tiny-bert", &good, &out)
        .set("--fairness", "eo")
        .output();
    common::expect_error(&output, 2, "--fairness dp");
    let output = TrainCommand::new("ner", "tiny-bert", &good, &out)
        .set("--fairness-score", "reward")
        .output();
    common::expect_error(&output, 2, "prob or logp");
    // A fairness sentence without an entity has nothing to score.
    let no_entity = write(
        dir.path(),
        "no-entity.jsonl",
        "{\"tokens\": [\"a\"], \"tags\": [\"O\"], \"group\": \"x\"}\n",
    );
    let output = TrainCommand::new("ner", "tiny-bert", &good, &out)
        .set("--fairness-data", no_entity.display())
        .output();
    common::expect_error(
        &output,
        2,
        "no-entity.jsonl:1: a --fairness-data sentence needs",
    );
}

/// A WNUT-16 slice through all-MiniLM-L6-v2 (fetched if missing).
#[test]
fn ner_runs_on_a_wnut16_slice_with_minilm() {
    let (Some(data), Some(_)) = (
        common::fetched("wnut16"),
        common::fetched("all-minilm-l6-v2"),
    ) else {
        return;
    };
    let dir = common::tempdir();
    let slice = |name: &str, n: usize| {
        let text = std::fs::read_to_string(data.join(format!("{name}.jsonl"))).unwrap();
        let rows: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
        write(dir.path(), &format!("{name}.jsonl"), &rows)
    };
    let (train, eval) = (slice("train", 48), slice("validation", 24));
    let out = dir.path().join("run");
    let report = TrainCommand::new("ner", "all-minilm-l6-v2", &train, &out)
        .set("--eval", eval.display())
        .set("--steps", 3)
        .set("--batch-size", 8)
        .set("--max-length", 64)
        .run();
    // seqeval's micro F1 is the harmonic mean of its precision and recall.
    let number = |key: &str| report[key].as_f64().unwrap();
    let (p, r, f1) = (
        number("entity_precision"),
        number("entity_recall"),
        number("entity_f1"),
    );
    let harmonic = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    assert!((f1 - harmonic).abs() < 1e-9, "{report}");
    assert!(report["token_accuracy"].as_f64().unwrap() > 0.0);
    let config = read_json(&out.join("hf/config.json"));
    assert_eq!(config["id2label"]["0"], "O");
    assert!(out.join("hf/tokenizer.json").exists());
}

/// Sentences naming a person of group "a" or "b" (first names by group), among filler words.
/// `biased`: the annotators tagged group b's names as O in two of three training sentences.
fn names_data(count: usize, seed: usize, biased: bool, with_group: bool) -> Vec<Value> {
    let names = [
        ("a", ["alice", "carol", "emma", "grace"]),
        ("b", ["bilal", "dmitri", "fatima", "kwame"]),
    ];
    let frames = [
        ("we met", "at the station"),
        ("i saw", "near the lake"),
        ("then", "left early"),
        ("ask", "about the plan"),
    ];
    (0..count)
        .map(|i| {
            let k = i * 7 + seed;
            let (group, first) = names[k % 2];
            let name = first[(k / 2) % 4];
            let (before, after) = frames[(k / 8) % 4];
            let missed = biased && group == "b" && !k.is_multiple_of(3);
            let mut tokens: Vec<&str> = before.split(' ').collect();
            let mut tags = vec!["O"; tokens.len()];
            tokens.push(name);
            tags.push(if missed { "O" } else { "B-per" });
            for word in after.split(' ') {
                tokens.push(word);
                tags.push("O");
            }
            let mut row = json!({"tokens": tokens, "tags": tags});
            if with_group {
                row["group"] = json!(group);
            }
            row
        })
        .collect()
}

/// The tutorial's case: λ·F on a NER model. Annotators missed most of group b's names, so at
/// λ = 0 the model recognizes them less (a gap in P(gold tag) and in entity recall on a fairly
/// tagged fairness set); λ > 0 on a separate group-tagged set narrows both.
#[test]
fn ner_fairness_penalty_narrows_the_recall_gap() {
    let dir = common::tempdir();
    let train = write(
        dir.path(),
        "train.jsonl",
        &jsonl(&names_data(160, 0, true, false)),
    );
    let fair = write(
        dir.path(),
        "fair.jsonl",
        &jsonl(&names_data(64, 1, false, true)),
    );
    let fair_eval = write(
        dir.path(),
        "fair-eval.jsonl",
        &jsonl(&names_data(64, 5, false, true)),
    );
    let run = |lambda: f64| {
        let out = dir.path().join(format!("lambda-{lambda}"));
        TrainCommand::new("ner", "tiny-bert", &train, &out)
            .set("--eval", fair_eval.display())
            .set("--fairness-data", fair.display())
            .set("--fairness-eval", fair_eval.display())
            .set("--fairness-lambda", lambda)
            .set("--steps", 60)
            .set("--batch-size", 16)
            .set("--lr", "3e-3")
            .set("--seed", 3)
            .run()
    };
    let (plain, fair) = (run(0.0), run(10.0));
    let number = |report: &Value, key: &str| report[key].as_f64().unwrap();
    eprintln!(
        "ner fairness: λ=0 gap {:.3} recall {} gap {:.3}; λ=10 gap {:.3} recall {} gap {:.3}",
        number(&plain, "group_gap"),
        plain["group_entity_recall"],
        number(&plain, "entity_recall_gap"),
        number(&fair, "group_gap"),
        fair["group_entity_recall"],
        number(&fair, "entity_recall_gap"),
    );
    assert_eq!(plain["fairness_set"], json!("fairness-eval"));
    assert!(number(&plain, "group_gap") > 0.2, "{plain}");
    assert!(
        number(&fair, "group_gap") < 0.5 * number(&plain, "group_gap"),
        "λ=10: {fair} vs λ=0: {plain}"
    );
    assert!(
        number(&fair, "entity_recall_gap") < number(&plain, "entity_recall_gap"),
        "{fair} vs {plain}"
    );
    assert_eq!(plain["group_counts"]["a"], 32);
}

/// `fairtune fetch ner-names`: templates × census first names, every sentence one person tagged
/// `B-person I-person`, the two groups the same size, and the held-out half sharing neither a
/// first name nor a template with the training half.
#[test]
fn the_ner_names_fairness_set_is_balanced_and_split() {
    let Some(dir) = common::fetched("ner-names") else {
        return;
    };
    let read = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (train, eval) = (read("train.jsonl"), read("eval.jsonl"));
    assert_eq!((train.len(), eval.len()), (480, 240));
    let firsts = |rows: &[Value]| -> std::collections::BTreeSet<String> {
        rows.iter()
            .map(|row| {
                let tags: Vec<&str> = row["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect();
                let at = tags.iter().position(|t| *t == "B-person").unwrap();
                assert_eq!(tags[at + 1], "I-person", "{row}");
                assert_eq!(tags.iter().filter(|t| **t != "O").count(), 2, "{row}");
                row["tokens"][at].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert!(firsts(&train).is_disjoint(&firsts(&eval)));
    for rows in [&train, &eval] {
        let female = rows.iter().filter(|r| r["group"] == "female").count();
        assert_eq!(2 * female, rows.len());
    }
}
