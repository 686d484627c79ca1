//! Text generation with a decoder: `fairtune generate`, and what the comparison of a base and a
//! tuned model reads. Prompts are prefilled together (left-padded, each row at its own
//! positions), then one token per row per step through the key/value cache
//! ([`LlamaForCausalLM::extend`]); greedy at temperature 0, else sampled as transformers'
//! `generate` samples (temperature, then top-k, then top-p, from a seeded generator). A row stops
//! at one of its stop tokens (EOS, the chat template's end of turn), at a stop string, or after
//! `max_new_tokens`. Every device read is async, so the same loop can run in a browser.

use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::LlamaForCausalLM;
use crate::model::llama::KvCache;
use crate::tokenizer::TextTokenizer;
use crate::train::read_async;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0: greedy (the most likely token).
    pub temperature: f64,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to p (1: all).
    pub top_p: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::input(format!(
                "--temperature must be a number ≥ 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::input(format!(
                "--top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// What to generate for a batch of prompts.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Token ids that end a completion (kept as its last id, left out of its text).
    pub stop_ids: Vec<u32>,
    /// Texts that end a completion (the completion's text is cut before them).
    pub stop_strings: Vec<String>,
}

/// Why a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    StopToken,
    StopString,
    Length,
}

/// One prompt's completion.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub completion: String,
    pub finish: Finish,
}

/// The next token from one row of logits.
fn choose(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap_or(0) as u32
    };
    if sampling.temperature == 0.0 {
        return argmax();
    }
    // transformers' order: temperature, top-k, top-p; then a draw from what is left.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if sampling.top_k > 0 {
        order.truncate(sampling.top_k.max(1));
    }
    let scaled: Vec<f64> = order
        .iter()
        .map(|&i| logits[i] as f64 / sampling.temperature)
        .collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<f64> = scaled.iter().map(|x| (x - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if sampling.top_p < 1.0 {
        // Keep the most likely tokens until their mass reaches p (at least one).
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                mass += p;
                mass >= sampling.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut draw: f64 = rng.random();
    for (p, &token) in probs.iter().zip(&order) {
        if draw < *p {
            return token as u32;
        }
        draw -= p;
    }
    *order.last().unwrap_or(&0) as u32
}

/// A row's state while it generates.
struct Row {
    completion: Vec<u32>,
    finish: Option<Finish>,
    /// Characters of the completion's text already handed to `on_text`.
    shown: usize,
}

/// Generate a completion for each of `prompts` (token ids, at least one each). `on_text(row,
/// text)` is called with each new piece of a row's text as it grows (streaming); stop strings
/// are held back until they can no longer start one.
pub async fn generate(
    model: &LlamaForCausalLM,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    device: &Device,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    options.sampling.validate()?;
    if let Some(empty) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::input(format!(
            "prompt {} has no tokens: give it some text (or a BOS)",
            empty + 1
        )));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let limit = model.max_positions();
    if longest + options.max_new_tokens > limit {
        return Err(Error::input(format!(
            "a prompt of {longest} tokens and --max-new-tokens {} exceed the model's \
             max_position_embeddings {limit}",
            options.max_new_tokens
        )));
    }
    let mut rows: Vec<Row> = prompts
        .iter()
        .map(|_| Row {
            completion: Vec::new(),
            finish: None,
            shown: 0,
        })
        .collect();
    if options.max_new_tokens == 0 || prompts.is_empty() {
        return finish(tokenizer, prompts, rows, options);
    }
    let pad = tokenizer.special().pad;
    let mut rng = StdRng::seed_from_u64(options.sampling.seed);
    let mut cache = KvCache::new();
    // Prefill: left-padded to the longest prompt, each row at positions 0.. of its own.
    let mut step: Vec<Vec<(u32, Option<usize>)>> = prompts
        .iter()
        .map(|prompt| {
            let padding = longest - prompt.len();
            (0..padding)
                .map(|_| (pad, None))
                .chain(prompt.iter().enumerate().map(|(i, &id)| (id, Some(i))))
                .collect()
        })
        .collect();
    let vocab = model.vocab_size();
    for _ in 0..options.max_new_tokens {
        let logits: Tensor<2> = model.extend(&mut cache, &step, device);
        let values = read_async(logits.reshape([step.len() * vocab])).await?;
        let mut next = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter_mut().enumerate() {
            if row.finish.is_some() {
                next.push(vec![(pad, None)]);
                continue;
            }
            let token = choose(
                &values[index * vocab..(index + 1) * vocab],
                &options.sampling,
                &mut rng,
            );
            row.completion.push(token);
            if options.stop_ids.contains(&token) {
                row.finish = Some(Finish::StopToken);
            } else if row.completion.len() == options.max_new_tokens {
                row.finish = Some(Finish::Length);
            }
            let text = tokenizer.decode(&row.completion)?;
            let cut = options
                .stop_strings
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min();
            if cut.is_some() && row.finish != Some(Finish::StopToken) {
                row.finish = Some(Finish::StopString);
            }
            // What can be shown: up to a stop string, and short of a partial one at the end.
            let end = match cut {
                Some(at) => at,
                None if row.finish.is_some() => text.len(),
                None => safe_end(&text, &options.stop_strings),
            };
            if end > row.shown && text.is_char_boundary(row.shown) && text.is_char_boundary(end) {
                on_text(index, &text[row.shown..end]);
                row.shown = end;
            }
            let position = prompts[index].len() + row.completion.len() - 1;
            next.push(vec![(token, Some(position))]);
        }
        if rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        step = next;
    }
    finish(tokenizer, prompts, rows, options)
}

/// The byte length of `text` that no stop string can still be completing (a stop string's
/// proper prefix at the very end is held back), on a character boundary.
fn safe_end(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    for stop in stops {
        for (len, _) in stop.char_indices().skip(1) {
            if text.ends_with(&stop[..len]) {
                end = end.min(text.len() - len);
            }
        }
    }
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

fn finish(
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    rows: Vec<Row>,
    options: &GenerateOptions,
) -> Result<Vec<Generation>> {
    prompts
        .iter()
        .zip(rows)
        .map(|(prompt, row)| {
            let mut completion = tokenizer.decode(&row.completion)?;
            if let Some(at) = options
                .stop_strings
                .iter()
                .filter_map(|s| completion.find(s.as_str()))
                .min()
            {
                completion.truncate(at);
            }
            Ok(Generation {
                prompt_ids: prompt.clone(),
                completion_ids: row.completion,
                completion,
                finish: row.finish.unwrap_or(Finish::Length),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_sampling_keeps_to_top_k_and_top_p() {
        let logits = [0.1f32, 2.0, -1.0, 1.9];
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(choose(&logits, &Sampling::default(), &mut rng), 1);
        let top2 = Sampling {
            temperature: 1.0,
            top_k: 2,
            ..Sampling::default()
        };
        for _ in 0..200 {
            assert!(matches!(choose(&logits, &top2, &mut rng), 1 | 3));
        }
        // p = 0.3 keeps only the most likely token (its probability alone is above 0.3).
        let nucleus = Sampling {
            temperature: 1.0,
            top_p: 0.3,
            ..Sampling::default()
        };
        for _ in 0..50 {
            assert_eq!(choose(&logits, &nucleus, &mut rng), 1);
        }
        // A seed gives the same draws.
        let warm = Sampling {
            temperature: 1.0,
            seed: 9,
            ..Sampling::default()
        };
        let draws = |seed: u64| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| choose(&logits, &warm, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(9), draws(9));
        assert!(draws(9).iter().any(|&t| t != 1), "sampling does sample");
    }

    #[test]
    fn a_partial_stop_string_is_held_back() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(safe_end("Hello\nUs", &stops), 5);
        assert_eq!(safe_end("Hello", &stops), 5);
    }
}

/// `fairtune generate`: what to load and what to generate from.
#[derive(Clone, Debug)]
pub struct Request {
    /// `--model`: a preset, fetched name, Hugging Face directory, GGUF file or config.
    pub model: Option<String>,
    /// `--run OUT`: a finished run's merged model (`OUT/hf`).
    pub run: Option<std::path::PathBuf>,
    /// `--adapter DIR`: PEFT LoRA adapters (a run's `OUT/adapter`) on the `--model` base.
    pub adapter: Option<std::path::PathBuf>,
    pub tokenizer: Option<std::path::PathBuf>,
    pub prompt: Option<String>,
    /// JSONL rows with a `"prompt"`: text, or a list of chat messages.
    pub prompts: Option<std::path::PathBuf>,
    /// Render plain-text prompts as one user message with the chat template.
    pub chat: bool,
    /// One JSON object per prompt on stdout instead of the text.
    pub jsonl: bool,
    /// With `run`: the run's base model and its tuned one on the same prompts, side by side
    /// (by default the first `limit` distinct prompts of the run's --eval file).
    pub compare: bool,
    pub limit: usize,
    pub options: GenerateOptions,
}

/// The model a request names and its tokenizer, on `device` (no autodiff).
pub fn load(
    request: &Request,
    device: &Device,
) -> Result<(LlamaForCausalLM, TextTokenizer, crate::model::ModelSource)> {
    use crate::model::{self, ArchConfig};
    let name = match (&request.model, &request.run) {
        (Some(_), Some(_)) => {
            return Err(Error::input(
                "give --model or --run, not both (a run's model is OUT/hf)",
            ));
        }
        (Some(model), None) => model.clone(),
        (None, Some(run)) => {
            let hf = run.join("hf");
            if !hf.join("config.json").exists() {
                return Err(Error::input(format!(
                    "{}: no hf/ export here; is it a finished fairtune train run?",
                    run.display()
                )));
            }
            hf.display().to_string()
        }
        (None, None) => return Err(Error::input("give --model or --run")),
    };
    let source = model::locate(&name)?;
    let tokenizer = source.open_tokenizer(request.tokenizer.as_deref())?;
    let ArchConfig::Llama(arch) = source.arch(tokenizer.vocab_size())? else {
        return Err(Error::input(format!(
            "{name} is an encoder (bert); generate needs a causal LM"
        )));
    };
    let lm = match model::load_llama_from(&source, device)? {
        Some((lm, _)) => lm,
        None => {
            eprintln!("warning: {name} has no weights to load: generating from random init");
            arch.init(device)
        }
    };
    let lm = match &request.adapter {
        Some(dir) if request.run.is_some() => {
            return Err(Error::input(format!(
                "--adapter {} goes on a --model base; a --run's model has its adapters merged",
                dir.display()
            )));
        }
        Some(dir) => model::lora::load_adapters(lm, &ArchConfig::Llama(arch), dir)?,
        None => lm,
    };
    Ok((lm, tokenizer, source))
}

/// The ids that end a completion: the tokenizer's EOS, the config's `eos_token_id` and a
/// Hugging Face directory's generation_config.json (one id or a list), and for chat the end-of-
/// turn tokens the vocabulary has.
pub fn stop_ids(
    tokenizer: &TextTokenizer,
    source: &crate::model::ModelSource,
    eos_in_config: Option<u32>,
    chat: bool,
) -> Vec<u32> {
    let mut ids: Vec<u32> = tokenizer.special().eos.into_iter().collect();
    ids.extend(eos_in_config);
    if let crate::model::ModelSource::Pretrained(dir) = source
        && let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json"))
        && let Ok(config) = serde_json::from_str::<serde_json::Value>(&text)
    {
        match &config["eos_token_id"] {
            serde_json::Value::Number(n) => ids.extend(n.as_u64().map(|v| v as u32)),
            serde_json::Value::Array(list) => {
                ids.extend(list.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
            }
            _ => {}
        }
    }
    if chat {
        for end in [
            "<|im_end|>",
            "<|eot_id|>",
            "<end_of_turn>",
            "<|end|>",
            "<|endoftext|>",
        ] {
            ids.extend(tokenizer.token_id(end));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The prompts of a request as token ids, with their text (for the JSONL output), and whether
/// any was rendered as a chat.
fn encode_prompts(
    request: &Request,
    tokenizer: &TextTokenizer,
) -> Result<(Vec<Vec<u32>>, Vec<serde_json::Value>, bool)> {
    use crate::data::Content;
    let contents: Vec<(Content, serde_json::Value)> = match (&request.prompt, &request.prompts) {
        (Some(_), Some(_)) => return Err(Error::input("give --prompt or --prompts, not both")),
        (Some(text), None) => vec![(
            Content::Text(text.clone()),
            serde_json::Value::String(text.clone()),
        )],
        (None, Some(path)) => {
            let rows = crate::data::jsonl::read(path)?;
            if rows.is_empty() {
                return Err(Error::input(format!("{}: no prompts", path.display())));
            }
            rows.iter()
                .map(|row| {
                    let raw = row
                        .fields
                        .get("prompt")
                        .cloned()
                        .ok_or_else(|| row.error("missing field \"prompt\""))?;
                    Ok((row.content("prompt")?, raw))
                })
                .collect::<Result<_>>()?
        }
        (None, None) => return Err(Error::input("give --prompt TEXT or --prompts FILE.jsonl")),
    };
    let template = tokenizer.chat_template()?;
    let mut chatted = false;
    let mut ids = Vec::with_capacity(contents.len());
    let mut raw = Vec::with_capacity(contents.len());
    for (content, original) in contents {
        let (prompt, chat) = prompt_ids(tokenizer, template.as_ref(), content, request.chat)?;
        ids.push(prompt);
        raw.push(original);
        chatted |= chat;
    }
    Ok((ids, raw, chatted))
}

/// A prompt's token ids: chat messages (or, with `chat`, text as one user turn) rendered with the
/// model's chat template and the assistant's turn opened; plain text as the tokenizer encodes it
/// (BOS by its own rule). Also whether it was rendered as a chat.
pub fn prompt_ids(
    tokenizer: &TextTokenizer,
    template: Option<&crate::tokenizer::chat::ChatTemplate>,
    content: crate::data::Content,
    chat: bool,
) -> Result<(Vec<u32>, bool)> {
    use crate::data::Content;
    let messages = match content {
        Content::Messages(messages) => messages,
        Content::Text(text) if chat => vec![crate::tokenizer::chat::Message {
            role: "user".into(),
            content: text,
        }],
        Content::Text(text) => return Ok((tokenizer.encode_ids(&text, true)?, false)),
    };
    let template = template.ok_or_else(|| {
        Error::input(
            "the prompt is a chat, but the model has no chat template (GGUF \
             tokenizer.chat_template, or chat_template in tokenizer_config.json)",
        )
    })?;
    let rendered = template.render(&messages, true)?;
    Ok((tokenizer.encode_ids(&rendered, false)?, true))
}

/// The first `limit` distinct prompts of a run's held-out pairs (its --eval file, else --train),
/// as JSONL prompt values.
fn held_out_prompts(run: &std::path::Path, limit: usize) -> Result<Vec<serde_json::Value>> {
    let finished = crate::eval::run::FinishedRun::open(run)?;
    let path = finished
        .config
        .eval
        .clone()
        .unwrap_or_else(|| finished.config.train.clone());
    let rows = crate::data::jsonl::read(&path)?;
    let mut prompts: Vec<serde_json::Value> = Vec::new();
    for row in &rows {
        if let Some(prompt) = row.fields.get("prompt")
            && !prompts.contains(prompt)
        {
            prompts.push(prompt.clone());
        }
        if prompts.len() == limit {
            break;
        }
    }
    if prompts.is_empty() {
        return Err(Error::input(format!(
            "{}: no \"prompt\" to compare on; give --prompt or --prompts",
            path.display()
        )));
    }
    Ok(prompts)
}

/// `fairtune generate --run OUT --compare`: the run's base model (its `--model`) and its tuned
/// model (`OUT/hf`) answer the same prompts, greedy unless sampling is asked for, printed
/// side by side (or as `{"prompt", "base", "tuned"}` lines with `--jsonl`).
fn compare(request: &Request, device: &Device) -> Result<()> {
    use std::io::Write;
    let Some(run) = &request.run else {
        return Err(Error::input("--compare needs --run OUT (a finished run)"));
    };
    let finished = crate::eval::run::FinishedRun::open(run)?;
    let mut request = request.clone();
    // Held while the prompts are read.
    let mut _scratch = None;
    if request.prompt.is_none() && request.prompts.is_none() {
        let prompts = held_out_prompts(run, request.limit.max(1))?;
        let scratch = crate::fsutil::ScratchDir::new("compare-prompts")?;
        let path = scratch.path().join("prompts.jsonl");
        let text: String = prompts
            .iter()
            .map(|p| format!("{}\n", serde_json::json!({ "prompt": p })))
            .collect();
        std::fs::write(&path, text)
            .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
        request.prompts = Some(path);
        _scratch = Some(scratch);
    }
    let request = &request;
    let base_request = Request {
        model: Some(finished.config.model.clone()),
        run: None,
        adapter: None,
        tokenizer: finished.config.tokenizer.clone(),
        ..request.clone()
    };
    let tuned_request = Request {
        model: None,
        ..request.clone()
    };
    let (base, _) = complete(&base_request, device, |_, _| {})?;
    let (tuned, tuned_raw) = complete(&tuned_request, device, |_, _| {})?;
    let mut out = std::io::stdout().lock();
    for ((prompt, base), tuned) in tuned_raw.iter().zip(&base).zip(&tuned) {
        let line = if request.jsonl {
            serde_json::json!({
                "prompt": prompt, "base": base.completion, "tuned": tuned.completion,
            })
            .to_string()
        } else {
            let shown = match prompt {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            format!(
                "### {}\nbase:  {}\ntuned: {}\n",
                shown.trim(),
                base.completion.trim(),
                tuned.completion.trim()
            )
        };
        writeln!(out, "{line}").map_err(|e| Error::runtime(format!("stdout: {e}")))?;
    }
    Ok(())
}

/// Load what `request` names and generate for its prompts (blocking): the completions, and
/// each prompt as given. `on_text` streams as [`generate`]'s does.
pub fn complete(
    request: &Request,
    device: &Device,
    on_text: impl FnMut(usize, &str),
) -> Result<(Vec<Generation>, Vec<serde_json::Value>)> {
    let (lm, tokenizer, source) = load(request, device)?;
    let (prompts, raw, chatted) = encode_prompts(request, &tokenizer)?;
    let mut options = request.options.clone();
    let eos = match source.arch(tokenizer.vocab_size())? {
        crate::model::ArchConfig::Llama(config) => config.eos_token_id,
        _ => None,
    };
    options.stop_ids = stop_ids(&tokenizer, &source, eos, chatted);
    let generations = pollster::block_on(generate(
        &lm, &tokenizer, &prompts, &options, device, on_text,
    ))?;
    Ok((generations, raw))
}

/// `fairtune generate`: load, generate, print (the text, streamed for one prompt; or one JSON
/// object per prompt with `--jsonl`).
pub fn run(request: &Request, device: &Device) -> Result<()> {
    use std::io::Write;
    if request.compare {
        return compare(request, device);
    }
    let one = request.prompt.is_some();
    let stream = !request.jsonl && one;
    let started = web_time::Instant::now();
    let (generations, raw) = complete(request, device, |_, text| {
        if stream {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let tokens: usize = generations.iter().map(|g| g.completion_ids.len()).sum();
    let mut out = std::io::stdout().lock();
    for (index, (generation, prompt)) in generations.iter().zip(raw).enumerate() {
        if request.jsonl {
            let line = serde_json::json!({
                "prompt": prompt,
                "completion": generation.completion,
                "prompt_ids": generation.prompt_ids,
                "completion_ids": generation.completion_ids,
                "finish": generation.finish,
            });
            writeln!(out, "{line}").map_err(|e| Error::runtime(format!("stdout: {e}")))?;
        } else if stream {
            writeln!(out).ok();
        } else {
            writeln!(out, "### prompt {}\n{}\n", index + 1, generation.completion).ok();
        }
    }
    eprintln!(
        "{tokens} tokens for {} prompt(s) in {seconds:.2} s ({:.1} tokens/s)",
        generations.len(),
        tokens as f64 / seconds.max(1e-9)
    );
    Ok(())
}
