//! `fairtune demo`: the main job. A fairness-regularized fine-tune of a real pretrained model on
//! real data, trained at λ = 0 and at a chosen λ (a two-point sweep, so it is resumable and
//! draws the Pareto plot), then a before/after table.
//!
//! Presets:
//! - `sentiment` (the default; minutes on a laptop CPU): all-MiniLM-L6-v2 fine-tuned on Rotten
//!   Tomatoes. The fairness set is the project's identity-term templates
//!   (`assets/fairness/identity-sentiment.json`: 16 identity terms × the same positive,
//!   negative and neutral movie sentences); F equalizes each group's mean P(positive). The
//!   penalty trains on one set of templates and the gap is measured on held-out ones.
//! - `dpo` (for a GPU): SmolLM2-135M-Instruct with LoRA, DPO on the fetched demo pairs, and
//!   discrim-eval's decisions as the fairness set: F equalizes, across race, the mean log
//!   P("yes") of the model's answer; the gap is measured on held-out decision questions. It
//!   ends with the answers of the base model and of both runs to one held-out question, asked
//!   about a person of each race, so the effect shows in words too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::device::{BackendChoice, Selected};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::lora::LoraSettings;
use crate::sweep::{self, SweepOptions};
use crate::train::{Task, TrainConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// MiniLM sentiment on Rotten Tomatoes, identity-term templates as the fairness set.
    Sentiment,
    /// SmolLM2 LoRA DPO, discrim-eval decisions (grouped by race) as the fairness set.
    Dpo,
}

pub struct DemoOptions {
    pub preset: Preset,
    pub out: PathBuf,
    pub backend: BackendChoice,
    /// The regularized run's λ (default: the preset's).
    pub lambda: Option<f64>,
    /// Training steps per run (default: the preset's).
    pub steps: Option<usize>,
    pub seed: u64,
}

/// The identity-term template set (see the JSON's own description).
const IDENTITY_TEMPLATES: &str = include_str!("../../assets/fairness/identity-sentiment.json");

/// Expand the templates of one split (`"train"` or `"eval"`) into `{"text","group"[,"label"]}`
/// rows: every template once per identity term.
pub fn identity_rows(split: &str) -> Result<Vec<Value>> {
    let spec: Value = serde_json::from_str(IDENTITY_TEMPLATES)
        .map_err(|e| Error::runtime(format!("identity templates: {e}")))?;
    let groups: Vec<&str> = spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let templates = spec[split]
        .as_array()
        .ok_or_else(|| Error::runtime(format!("identity templates: no {split:?} split")))?;
    let mut rows = Vec::new();
    for template in templates {
        let text = template["text"].as_str().unwrap_or_default();
        for &group in &groups {
            let article = if group.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
                "an"
            } else {
                "a"
            };
            let mut capital = group.to_string();
            if let Some(first) = capital.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            let sentence = text
                .replace("{a_x}", &format!("{article} {group}"))
                .replace("{X}", &capital)
                .replace("{x}", group);
            let mut row = json!({"text": sentence, "group": group});
            if let Some(label) = template.get("label") {
                row["label"] = label.clone();
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    for row in rows {
        writeln!(text, "{row}").ok();
    }
    write_atomic(path, text.as_bytes())
}

/// An evenly spaced `n` of a JSONL file's lines (all of them when it has fewer).
fn evenly_spaced_lines(path: &Path, n: usize) -> Result<Vec<Value>> {
    let rows = crate::data::jsonl::read(path)?;
    let total = rows.len();
    let keep = n.min(total);
    Ok((0..keep)
        .map(|k| Value::Object(rows[k * total / keep].fields.clone()))
        .collect())
}

fn fetched(name: &str) -> Result<PathBuf> {
    let asset = crate::fetch::asset(name).expect("known asset");
    let (dir, _) = crate::fetch::fetch(asset, &crate::fetch::cache_dir()?)?;
    Ok(dir)
}

/// The sentiment preset's data under `OUT/data` and its training config.
fn sentiment(options: &DemoOptions) -> Result<(TrainConfig, f64)> {
    fetched("all-minilm-l6-v2")?;
    let rt = fetched("rotten-tomatoes")?;
    let data = options.out.join("data");
    std::fs::create_dir_all(&data)
        .map_err(|e| Error::runtime(format!("{}: {e}", data.display())))?;
    let (fair_train, fair_eval, eval) = (
        data.join("identity-train.jsonl"),
        data.join("identity-eval.jsonl"),
        data.join("rotten-tomatoes-validation-500.jsonl"),
    );
    write_jsonl(&fair_train, &identity_rows("train")?)?;
    write_jsonl(&fair_eval, &identity_rows("eval")?)?;
    write_jsonl(
        &eval,
        &evenly_spaced_lines(&rt.join("validation.jsonl"), 500)?,
    )?;
    let mut config = TrainConfig::new(
        Task::Classify,
        rt.join("train.jsonl"),
        "all-minilm-l6-v2".into(),
        options.out.clone(),
    );
    config.eval = Some(eval);
    config.fairness_data = Some(fair_train);
    config.fairness_eval = Some(fair_eval);
    config.steps = 100;
    config.batch_size = 16;
    config.fairness_batch_size = Some(32);
    config.lr = 1e-4;
    config.warmup_steps = 10;
    config.max_length = 48;
    config.max_prompt_length = 16;
    config.log_every = 10;
    config.checkpoint_every = 50;
    Ok((config, 100.0))
}

/// The dpo preset's data under `OUT/data` and its training config.
fn dpo(options: &DemoOptions) -> Result<(TrainConfig, f64)> {
    let model_dir = fetched("smollm2-135m-instruct")?;
    let pairs = fetched("dpo-demo")?;
    let discrim = fetched("discrim-eval")?;
    let data = options.out.join("data");
    std::fs::create_dir_all(&data)
        .map_err(|e| Error::runtime(format!("{}: {e}", data.display())))?;
    let gguf = model_dir.join("model.gguf");
    let model = gguf.display().to_string();
    // The answer prompt is the benchmark's own (chat template + the paper's answer prefix); the
    // completion scored is "yes". The 42 decision questions numbered below 60 train the penalty;
    // the 28 from 60 up are held out.
    let chat = crate::model::locate(&model)?
        .open_tokenizer(None)?
        .chat_template()?;
    let (mut train_rows, mut eval_rows) = (Vec::new(), Vec::new());
    for row in crate::data::jsonl::read(&discrim.join("explicit.jsonl"))? {
        let fields = Value::Object(row.fields.clone());
        let (Some(question), Some(age), Some(filled), Some(race)) = (
            fields["decision_question_id"].as_u64(),
            fields["age"].as_f64(),
            fields["filled_template"].as_str(),
            fields["race"].as_str(),
        ) else {
            return Err(row.error("not a discrim-eval row"));
        };
        // Three ages (20, 60, 100) for training and the reference age 60 held out keep the
        // set small; every race and gender stays in.
        let held_out = question >= 60;
        if (held_out && age != 60.0) || ![20.0, 60.0, 100.0].contains(&age) {
            continue;
        }
        let prompt = crate::eval::bias::discrim_prompt(chat.as_ref(), filled)?;
        let out = json!({"prompt": prompt, "completion": "yes", "group": race});
        if held_out {
            eval_rows.push(out);
        } else {
            train_rows.push(out);
        }
    }
    let (fair_train, fair_eval) = (
        data.join("discrim-train.jsonl"),
        data.join("discrim-eval.jsonl"),
    );
    write_jsonl(&fair_train, &train_rows)?;
    write_jsonl(&fair_eval, &eval_rows)?;
    let mut config = TrainConfig::new(
        Task::Dpo,
        pairs.join("train.jsonl"),
        model,
        options.out.clone(),
    );
    config.eval = Some(pairs.join("test.jsonl"));
    config.fairness_data = Some(fair_train);
    config.fairness_eval = Some(fair_eval);
    config.steps = 60;
    config.batch_size = 2;
    config.fairness_batch_size = Some(5);
    config.lr = 5e-4;
    config.max_length = 320;
    config.max_prompt_length = 300;
    config.lora = Some(LoraSettings {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: Vec::new(),
    });
    config.log_every = 5;
    config.checkpoint_every = 20;
    Ok((config, 1.0))
}

/// Run the preset at λ = 0 and at its λ; returns the sweep report plus the before/after rows.
pub fn run(options: &DemoOptions, selected: &Selected) -> Result<Value> {
    if let Some(lambda) = options.lambda
        && !(lambda.is_finite() && lambda > 0.0)
    {
        return Err(Error::input(format!(
            "--lambda must be a positive number, got {lambda}"
        )));
    }
    let (mut config, default_lambda) = match options.preset {
        Preset::Sentiment => sentiment(options)?,
        Preset::Dpo => dpo(options)?,
    };
    let lambda = options.lambda.unwrap_or(default_lambda);
    if let Some(steps) = options.steps {
        config.steps = steps;
    }
    config.backend = options.backend;
    config.seed = options.seed;
    config.validate()?;
    let sweep_options = SweepOptions {
        lambdas: vec![0.0, lambda],
        seeds: vec![options.seed],
        tolerance: 0.02,
    };
    let report = sweep::run(&config, &sweep_options, selected)?;
    let runs: Vec<Value> = report["points"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| -> Result<Value> {
            let out = PathBuf::from(p["out"].as_str().unwrap_or_default());
            let run = crate::train::RunReport::read(&out)?;
            let means: Vec<(String, f64)> = run
                .held_out
                .group_means
                .iter()
                .map(|(g, m)| (g.clone(), *m))
                .collect();
            let low = means.iter().min_by(|a, b| a.1.total_cmp(&b.1));
            let high = means.iter().max_by(|a, b| a.1.total_cmp(&b.1));
            Ok(json!({
                "lambda": p["lambda"],
                "metric": p["metric"],
                "gap": p["gap"],
                "fairness_F": run.held_out.fairness_f,
                "lowest_group": low.map(|(g, m)| json!([g, m])),
                "highest_group": high.map(|(g, m)| json!([g, m])),
                "wall_s": run.wall_s,
                "out": out,
            }))
        })
        .collect::<Result<_>>()?;
    let mut report = report;
    report["preset"] = json!(format!("{:?}", options.preset).to_lowercase());
    if options.preset == Preset::Dpo {
        report["answers"] = answers(&config, &runs, selected)?;
    }
    report["runs"] = json!(runs);
    write_atomic(
        &options.out.join("demo.json"),
        serde_json::to_string_pretty(&report)
            .expect("report serializes")
            .as_bytes(),
    )?;
    Ok(report)
}

/// The answers of the base model and of each run's model (greedy, to the closing quote of the
/// answer) to the first held-out decision question, once per race.
fn answers(config: &TrainConfig, runs: &[Value], selected: &Selected) -> Result<Value> {
    use crate::generate::{GenerateOptions, Request, Sampling, complete};
    let path = config
        .fairness_eval
        .as_ref()
        .ok_or_else(|| Error::runtime("the dpo preset has a held-out fairness set"))?;
    let mut asked: Vec<(String, Value)> = Vec::new();
    for row in crate::data::jsonl::read(path)? {
        let (Some(group), Some(prompt)) = (row.fields.get("group"), row.fields.get("prompt"))
        else {
            continue;
        };
        let group = group.as_str().unwrap_or_default().to_string();
        if !asked.iter().any(|(g, _)| *g == group) {
            asked.push((group, prompt.clone()));
        }
    }
    let prompts = config.out.join("data").join("answer-prompts.jsonl");
    let text: String = asked
        .iter()
        .map(|(_, p)| format!("{}\n", json!({ "prompt": p })))
        .collect();
    write_atomic(&prompts, text.as_bytes())?;
    let request = |model: Option<String>, run: Option<PathBuf>| Request {
        model,
        run,
        adapter: None,
        tokenizer: None,
        prompt: None,
        prompts: Some(prompts.clone()),
        chat: false,
        jsonl: false,
        compare: false,
        limit: 0,
        options: GenerateOptions {
            max_new_tokens: 6,
            sampling: Sampling::default(),
            stop_ids: Vec::new(),
            stop_strings: vec!["\"".into()],
        },
    };
    let mut columns = vec![(
        "base".to_string(),
        request(Some(config.model.clone()), None),
    )];
    for run in runs {
        let out = PathBuf::from(run["out"].as_str().unwrap_or_default());
        columns.push((
            format!("λ = {}", f64_or_dash(&run["lambda"])),
            request(None, Some(out)),
        ));
    }
    let mut table: Vec<Value> = asked
        .iter()
        .map(|(group, _)| json!({ "group": group }))
        .collect();
    for (name, request) in &columns {
        let (generations, _) = complete(request, &selected.device, |_, _| {})?;
        for (row, generation) in table.iter_mut().zip(generations) {
            row[name.as_str()] = json!(generation.completion.trim());
        }
    }
    Ok(json!({
        "question": asked.first().map(|(_, p)| p.clone()),
        "columns": columns.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(),
        "rows": table,
    }))
}

/// A number as Rust prints it (100, 0.5), or "-".
fn f64_or_dash(value: &Value) -> String {
    value.as_f64().map_or("-".into(), |x| x.to_string())
}

/// The before/after table.
pub fn table(report: &Value) -> String {
    let metric = report["metric"].as_str().unwrap_or("metric");
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.4}"));
    let group = |v: &Value| match (v[0].as_str(), v[1].as_f64()) {
        (Some(g), Some(m)) => format!("{g} {m:.3}"),
        _ => "-".into(),
    };
    let mut out = format!(
        "| λ | {metric} | group gap | F | lowest group | highest group | time |\n|---:|---:|---:|---:|---|---|---:|\n"
    );
    let runs = report["runs"].as_array().cloned().unwrap_or_default();
    for r in &runs {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f64_or_dash(&r["lambda"]),
            f(&r["metric"]),
            f(&r["gap"]),
            f(&r["fairness_F"]),
            group(&r["lowest_group"]),
            group(&r["highest_group"]),
            r["wall_s"]
                .as_f64()
                .map_or("-".into(), |s| format!("{:.0} s", s)),
        )
        .ok();
    }
    if let [before, after] = &runs[..]
        && let (Some(m0), Some(m1), Some(g0), Some(g1)) = (
            before["metric"].as_f64(),
            after["metric"].as_f64(),
            before["gap"].as_f64(),
            after["gap"].as_f64(),
        )
    {
        let cut = if g0 > 0.0 {
            format!("{:.0}%", 100.0 * (1.0 - g1 / g0))
        } else {
            "-".into()
        };
        writeln!(
            out,
            "\nλ = {}: group gap {g0:.4} → {g1:.4} ({cut} smaller), {metric} {m0:.4} → {m1:.4} ({:+.4})",
            f64_or_dash(&after["lambda"]),
            m1 - m0
        )
        .ok();
    }
    let answers = &report["answers"];
    if let Some(rows) = answers["rows"].as_array() {
        let columns: Vec<&str> = answers["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        writeln!(
            out,
            "\nOne held-out decision question, asked about a person of each race; each model's \
             answer (\"yes\" favours the person):\n| race | {} |\n|---|{}",
            columns.join(" | "),
            "---|".repeat(columns.len())
        )
        .ok();
        for row in rows {
            let cells: Vec<&str> = columns
                .iter()
                .map(|c| row[*c].as_str().unwrap_or("-"))
                .collect();
            writeln!(
                out,
                "| {} | {} |",
                row["group"].as_str().unwrap_or("-"),
                cells.join(" | ")
            )
            .ok();
        }
    }
    out
}
