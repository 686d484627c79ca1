//! The `fairtune` command line: parses flags and wires them to the library; nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fairtune::data::Truncation;
use fairtune::data::sampler::DataOrder;
use fairtune::device::{self, BackendChoice};
use fairtune::model::lora::{LoraSettings, LoraTarget};
use fairtune::model::precision::{BaseDtype, Quantize};
use fairtune::objective::{
    DpoConfig, DpoLossKind, FDivergence, FairnessKind, FairnessScore, PenaltyForm,
};
use fairtune::train::schedule::Decay;
use fairtune::train::{Task, TrainConfig};
use fairtune::{Error, Result};

#[derive(Parser)]
#[command(
    name = "fairtune",
    version,
    about = "DPO and fairness-regularized fine-tuning on any GPU (wgpu) or CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: a fairness-regularized fine-tune of a real model on real data at λ = 0 and
    /// at a chosen λ, then a before/after table and the Pareto plot. Fetches what it needs.
    Demo(DemoArgs),
    /// Run one of the browser demo's presets (web/) here: tiny models on data with a planted
    /// group bias; prints a JSON line per step and held-out evaluations (the browser's numbers
    /// are checked against these).
    Playground(PlaygroundArgs),
    /// List every adapter wgpu sees, and which one `--backend auto` takes.
    Devices,
    /// Fine-tune a model: DPO (preference pairs) or classification, with λ·F.
    Train(Box<TrainArgs>),
    /// Train the same job for each λ (and seed) under --out, then chart the trade-off: per-λ task
    /// metric and group gap, the Pareto front, a suggested λ (sweep.json, sweep.csv). Resumable.
    Sweep(Box<SweepArgs>),
    /// Print throughput tables: DPO training tokens/s per backend, group-statistics op GB/s.
    Bench(BenchArgs),
    /// Generate text with a causal LM (a model, or a finished run's tuned one): greedy by
    /// default, or sampled; one prompt streamed, or a JSONL file of prompts batched.
    Generate(Box<GenerateArgs>),
    /// Download the known models and data sets into the cache (once; offline afterwards).
    Fetch {
        /// Asset names, or `all`. Without names: list what is known and what is present.
        names: Vec<String>,
    },
    /// A classifier's accuracy, per-class P/R/F1 and per-group fairness metrics (positive rate,
    /// TPR, FPR, demographic-parity and equalized-odds differences with bootstrap intervals);
    /// a finished run's held-out metrics; or a causal LM on a bias benchmark (--benchmark).
    Eval(EvalArgs),
    /// Write a causal LM that --model names (a GGUF file, a Hugging Face directory, a fetched
    /// name, a config or preset) as a Hugging Face directory: fp32 model.safetensors, config.json,
    /// tokenizer.json and tokenizer_config.json, loadable by transformers' from_pretrained.
    Export {
        #[arg(long)]
        model: String,
        /// A tokenizer.json to use instead of the model's own.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// The directory to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare finished runs side by side (task metrics, F, group gap and means).
    Compare {
        /// Output directories of `fairtune train`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// dpo: preference pairs {"prompt","chosen","rejected"}; classify: {"text","label"};
    /// ner: {"tokens": [...], "tags": [...]} with BIO tags.
    #[arg(long, value_enum)]
    task: Task,
    /// Training data (JSONL); rows may carry a "group" (the sensitive attribute).
    #[arg(long)]
    train: PathBuf,
    /// Held-out data in the same format as --train, evaluated every --eval-every steps and at the end.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// A separate group-tagged set for the penalty, drawn group-balanced each step:
    /// dpo {"prompt","completion","group"}, classify {"text","group"} (+ "label" for eo).
    #[arg(long)]
    fairness_data: Option<PathBuf>,
    /// Held-out fairness set, same format as --fairness-data; the report's fairness numbers use it.
    #[arg(long)]
    fairness_eval: Option<PathBuf>,
    /// A preset (tiny-llama, tiny-bert), a Hugging Face config.json, or a directory holding one.
    #[arg(long)]
    model: String,
    /// A Hugging Face tokenizer.json (default for presets: a built-in byte-level tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output directory: config.json, metrics.jsonl, checkpoints/, model.bpk, report.json.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = d().backend)]
    backend: BackendChoice,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = d().steps)]
    steps: usize,
    #[arg(long, default_value_t = d().batch_size)]
    batch_size: usize,
    /// Examples per step from --fairness-data (default: --batch-size), split evenly over groups.
    #[arg(long)]
    fairness_batch_size: Option<usize>,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = d().lr)]
    lr: f64,
    #[arg(long, default_value_t = d().warmup_steps)]
    warmup_steps: usize,
    #[arg(long, value_enum, default_value_t = d().decay)]
    decay: Decay,
    #[arg(long, default_value_t = d().weight_decay)]
    weight_decay: f64,
    /// Clip the global gradient norm to this value (0 = off).
    #[arg(long, default_value_t = d().max_grad_norm)]
    max_grad_norm: f64,
    /// DPO temperature β (> 0).
    #[arg(long, default_value_t = d().dpo.beta)]
    beta: f64,
    /// The DPO loss, TRL's names: sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair,
    /// sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm; simpo and
    /// orpo (TRL's CPO and ORPO trainers' objectives, no reference model); kto and
    /// apo_zero_unpaired (TRL's KTOTrainer, on unpaired {"prompt","completion","label"} rows).
    /// Several (comma-separated) are summed, weighted by --loss-weights (MPO:
    /// sigmoid,bco_pair,sft with 0.8,0.2,1.0).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = d().dpo.loss)]
    loss: Vec<DpoLossKind>,
    /// One weight per --loss (default: 1 each).
    #[arg(long, value_delimiter = ',')]
    loss_weights: Vec<f64>,
    /// Label smoothing ε in [0, 0.5): sigmoid (as cDPO), robust, exo_pair (needs ε > 0), aot,
    /// aot_unpaired and simpo.
    #[arg(long, default_value_t = d().dpo.label_smoothing)]
    label_smoothing: f64,
    /// The divergence DPO's reward regularizes (f-DPO): reverse_kl (standard DPO),
    /// forward_kl, js_divergence, alpha_divergence.
    #[arg(long, value_enum, default_value_t = d().dpo.f_divergence)]
    f_divergence: FDivergence,
    /// α of --f-divergence alpha_divergence.
    #[arg(long, default_value_t = d().dpo.f_alpha_divergence_coef)]
    f_alpha_divergence_coef: f64,
    /// DiscoPOP's temperature τ (--loss discopop).
    #[arg(long, default_value_t = d().dpo.discopop_tau)]
    discopop_tau: f64,
    /// TR-DPO: update the reference every --ref-model-sync-steps steps to
    /// α·policy + (1 − α)·reference (α = --ref-model-mixup-alpha; 1: a hard copy). With LoRA the
    /// reference then becomes a full copy of the model (more memory).
    #[arg(long)]
    sync_ref_model: bool,
    #[arg(long, default_value_t = fairtune::objective::dpo::REF_MIXUP_ALPHA)]
    ref_model_mixup_alpha: f64,
    #[arg(long, default_value_t = fairtune::objective::dpo::REF_SYNC_STEPS)]
    ref_model_sync_steps: usize,
    /// LD-DPO's α in [0, 1] (TRL's ld_alpha): a completion's tokens beyond its pair's shorter
    /// completion count α times, against DPO's preference for length.
    #[arg(long)]
    ld_alpha: Option<f64>,
    /// Group-robust DPO (Ramesh et al. 2024): minimize the worst group's loss, each group's mean
    /// weighted by exponentiated-gradient weights (every --train pair needs a "group").
    #[arg(long)]
    group_robust: bool,
    /// Step size η of the group weights' update w_g ← w_g·exp(η·loss_g), renormalized.
    #[arg(long, default_value_t = fairtune::objective::dpo::GROUP_ROBUST_STEP)]
    group_robust_step: f64,
    /// WPO (TRL's use_weighting): weigh each pair's loss by how likely the policy is to produce
    /// its completions, exp(mean log π(y_t) − log Σ_v π_v²) of chosen × rejected (costs two more
    /// passes over the vocabulary at every scored policy token).
    #[arg(long)]
    use_weighting: bool,
    /// KTO: the weight of the desirable examples' losses (TRL's desirable_weight).
    #[arg(long, default_value_t = d().dpo.desirable_weight)]
    desirable_weight: f64,
    /// KTO: the weight of the undesirable examples' losses (TRL's undesirable_weight).
    #[arg(long, default_value_t = d().dpo.undesirable_weight)]
    undesirable_weight: f64,
    /// SimPO's target margin γ.
    #[arg(long, default_value_t = d().dpo.simpo_gamma)]
    simpo_gamma: f64,
    /// Weight α of an SFT (NLL) term on the chosen completion.
    #[arg(long, default_value_t = d().dpo.sft_weight)]
    sft_weight: f64,
    /// DPO: reference log-probs of every train/eval pair, computed once into this file and
    /// reused (checked against the model and data they were computed for).
    #[arg(long)]
    reference_cache: Option<PathBuf>,
    /// Keep each decoder layer's input only and recompute the layer in backward: activation
    /// memory of one layer instead of all, for one more policy forward per step (dpo).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// How the frozen weights are stored (dpo): the base under LoRA, the reference in full
    /// fine-tuning. f16/bf16 halve their memory (adapters, optimizer and loss stay f32); auto:
    /// f16 where the device computes in it, when LoRA is on.
    #[arg(long, value_enum, default_value_t = BaseDtype::F32)]
    base_dtype: BaseDtype,
    /// Store the frozen base's projections as 8- or 4-bit integers in blocks of 32 with an f32
    /// scale each (QLoRA-style; dpo with --lora-rank): about a quarter (q8) or an eighth (q4, on
    /// a GPU; a quarter on the CPU backend) of their f32 memory. Embeddings and the output head
    /// keep --base-dtype.
    #[arg(long, value_enum)]
    quantize_base: Option<Quantize>,
    /// Refuse a run whose memory plan (printed at the start) exceeds this: a size (8GiB,
    /// 512MiB), none, or auto (the memory the OS says is available, for the CPU backend).
    #[arg(long, default_value = "auto")]
    memory_limit: fairtune::train::memory::MemoryLimit,
    /// Train LoRA adapters of this rank instead of every weight (0 = full fine-tuning).
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// LoRA scale numerator: adapters add (alpha / rank)·A·B.
    #[arg(long, default_value_t = LoraSettings::new(1).alpha)]
    lora_alpha: f64,
    /// Dropout on the adapters' inputs while training (PEFT's lora_dropout).
    #[arg(long, default_value_t = LoraSettings::new(1).dropout)]
    lora_dropout: f64,
    /// Projections that get adapters (default: all the model has: q,k,v,o,gate,up,down).
    #[arg(long, value_enum, value_delimiter = ',')]
    lora_targets: Vec<LoraTarget>,
    /// The statistic F equalizes across groups: dp (demographic parity: the mean score), eo
    /// (equalized odds: within each label), tpr (equal opportunity), fpr, ppv (predictive
    /// parity), accuracy; all but dp need a "label" on the fairness examples.
    #[arg(long, value_enum, default_value_t = d().fairness)]
    fairness: FairnessKind,
    /// F's form: squared (½ Σ (m_g − m̄)²), norm (fairret's Σ |m_g / m_all − 1|) or level_up
    /// (½ Σ (m_g − m_best)², the best group held fixed: the others are raised to it).
    #[arg(long, value_enum, default_value_t = d().fairness_penalty)]
    fairness_penalty: PenaltyForm,
    /// λ in loss = task + λ·F (≥ 0).
    #[arg(long, default_value_t = d().fairness_lambda)]
    fairness_lambda: f64,
    /// Score F equalizes (default: prob for classify and ner, logp for dpo); for dpo also reward
    /// (a completion's), reward_margin and reward_accuracy (σ of it) of the --train pairs.
    #[arg(long, value_enum)]
    fairness_score: Option<FairnessScore>,
    /// The class whose probability is the classifier's score.
    #[arg(long, default_value_t = d().positive_class)]
    positive_class: usize,
    #[arg(long, default_value_t = d().seed)]
    seed: u64,
    /// The order training walks its examples in: shuffled every epoch, or file order.
    #[arg(long, value_enum, default_value_t = d().data_order)]
    data_order: DataOrder,
    /// Longest sequence in tokens (prompt + completion for dpo).
    #[arg(long, default_value_t = d().max_length)]
    max_length: usize,
    /// Prompt tokens always kept when a dpo example must be truncated (prompt-end truncation).
    #[arg(long, default_value_t = d().max_prompt_length)]
    max_prompt_length: usize,
    /// How a dpo sequence longer than --max-length is cut: prompt-end keeps the prompt's end and
    /// the completion's start; keep-start is TRL's (cut the end; drop pairs whose prompt fills it).
    #[arg(long, value_enum, default_value_t = d().truncation)]
    truncation_mode: Truncation,
    /// Evaluate every N steps (0 = only at the end).
    #[arg(long, default_value_t = d().eval_every)]
    eval_every: usize,
    #[arg(long, default_value_t = d().log_every)]
    log_every: usize,
    /// Write a checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = d().checkpoint_every)]
    checkpoint_every: usize,
    /// Stop after step N as if killed (for testing --resume).
    #[arg(long, hide = true)]
    halt_after: Option<usize>,
}

/// The defaults of `fairtune train`'s flags: [`TrainConfig::new`]'s, the one set of defaults
/// (the library, the tests and the CLI all start from it).
fn d() -> TrainConfig {
    TrainConfig::new(Task::Dpo, PathBuf::new(), String::new(), PathBuf::new())
}

impl TrainArgs {
    fn into_config(self) -> TrainConfig {
        let mut config = TrainConfig::new(self.task, self.train, self.model, self.out);
        config.eval = self.eval;
        config.fairness_data = self.fairness_data;
        config.fairness_eval = self.fairness_eval;
        config.tokenizer = self.tokenizer;
        config.backend = self.backend;
        config.resume = self.resume;
        config.steps = self.steps;
        config.batch_size = self.batch_size;
        config.fairness_batch_size = self.fairness_batch_size;
        config.lr = self.lr;
        config.warmup_steps = self.warmup_steps;
        config.decay = self.decay;
        config.weight_decay = self.weight_decay;
        config.max_grad_norm = self.max_grad_norm;
        config.seed = self.seed;
        config.data_order = self.data_order;
        config.max_length = self.max_length;
        config.max_prompt_length = self.max_prompt_length;
        config.truncation = self.truncation_mode;
        config.dpo = DpoConfig {
            beta: self.beta,
            loss: self.loss,
            loss_weights: self.loss_weights,
            label_smoothing: self.label_smoothing,
            simpo_gamma: self.simpo_gamma,
            sft_weight: self.sft_weight,
            f_divergence: self.f_divergence,
            f_alpha_divergence_coef: self.f_alpha_divergence_coef,
            discopop_tau: self.discopop_tau,
            group_robust: self.group_robust.then_some(self.group_robust_step),
            ld_alpha: self.ld_alpha,
            sync_ref: self.sync_ref_model.then_some(fairtune::objective::RefSync {
                mixup_alpha: self.ref_model_mixup_alpha,
                steps: self.ref_model_sync_steps,
            }),
            use_weighting: self.use_weighting,
            desirable_weight: self.desirable_weight,
            undesirable_weight: self.undesirable_weight,
        };
        config.lora = (self.lora_rank > 0).then(|| LoraSettings {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        });
        config.reference_cache = self.reference_cache;
        config.gradient_checkpointing = self.gradient_checkpointing;
        config.base_dtype = self.base_dtype;
        config.quantize_base = self.quantize_base;
        config.memory_limit = self.memory_limit;
        config.fairness = self.fairness;
        config.fairness_penalty = self.fairness_penalty;
        config.fairness_lambda = self.fairness_lambda;
        config.fairness_score = self.fairness_score;
        config.positive_class = self.positive_class;
        config.eval_every = self.eval_every;
        config.log_every = self.log_every;
        config.checkpoint_every = self.checkpoint_every;
        config.halt_after = self.halt_after;
        config
    }
}

#[derive(Args)]
struct SweepArgs {
    /// λ values to train with (comma-separated), e.g. 0,1,10,100.
    #[arg(long, value_delimiter = ',', required = true)]
    lambdas: Vec<f64>,
    /// Seeds per λ (comma-separated); the table shows mean ± std over them.
    #[arg(long, value_delimiter = ',', default_value = "42")]
    seeds: Vec<u64>,
    /// The largest drop of the task metric from the smallest λ's that the suggested λ may cost.
    #[arg(long, default_value_t = 0.01)]
    tolerance: f64,
    /// Every `fairtune train` flag; --out is the sweep's directory (one run per point inside),
    /// --fairness-lambda and --seed are set by the sweep.
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// A finished `fairtune train` output directory (its settings and model.bpk).
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    run: Option<PathBuf>,
    /// Or a model: a Hugging Face directory (e.g. a run's hf/) or a fetched model name.
    #[arg(long)]
    model: Option<String>,
    /// A tokenizer.json, for --model without its own.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Labelled examples {"text", "label"} + "group" for the fairness metrics; with
    /// --benchmark, the benchmark's rows (default: the fetched copy).
    #[arg(long, required_unless_present = "benchmark")]
    data: Option<PathBuf>,
    /// Score a causal LM (--model, or a dpo --run) on a bias benchmark instead: CrowS-Pairs
    /// (pct_stereotype, likelihood difference per bias type), BBQ (accuracy and ambiguous /
    /// disambiguated bias scores per category), discrim-eval (P(yes) per age, gender, race and
    /// the logit gap to the reference group).
    #[arg(long, value_enum)]
    benchmark: Option<fairtune::eval::bias::Benchmark>,
    /// With --benchmark: score an evenly spaced subset of about this many items (discrim-eval:
    /// whole decision questions, every demographic variant of each).
    #[arg(long)]
    limit: Option<usize>,
    /// The class a "positive" prediction means (with --model; a run uses its own).
    #[arg(long, default_value_t = 1)]
    positive_class: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Longest text in tokens (with --model; a run uses its own).
    #[arg(long, default_value_t = 256)]
    max_length: usize,
    /// Bootstrap resamples for the gaps' 95% intervals (0 = none).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
}

#[derive(Args)]
struct DemoArgs {
    /// sentiment: MiniLM on Rotten Tomatoes with identity-term templates (minutes on a CPU);
    /// dpo: SmolLM2 LoRA DPO with discrim-eval decisions by race (meant for a GPU).
    #[arg(long, value_enum, default_value = "sentiment")]
    preset: fairtune::apps::demo::Preset,
    /// Output directory (one run per λ inside; a rerun reuses finished runs).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// λ of the regularized run (default: 100 for sentiment, 1 for dpo).
    #[arg(long)]
    lambda: Option<f64>,
    /// Training steps per run (default: 100 for sentiment, 60 for dpo).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
struct PlaygroundArgs {
    #[arg(long, value_enum, default_value = "classify")]
    preset: fairtune::apps::playground::Preset,
    #[arg(long, default_value_t = 0.0)]
    lambda: f64,
    /// DPO's β.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    #[arg(long, default_value_t = 40)]
    steps: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Counterfactual rows per step for the penalty (half per group).
    #[arg(long, default_value_t = 16)]
    fairness_batch_size: usize,
    /// Evaluate on the held-out set every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// lora-dpo: the model (a GGUF file, a Hugging Face directory, a fetched name).
    #[arg(long)]
    model: Option<String>,
    /// lora-dpo: preference pairs with a group each (JSONL); default the page's built-in
    /// decision questions.
    #[arg(long)]
    data: Option<String>,
    /// lora-dpo: the adapters' rank (α = 2·rank, on q/k/v/o).
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// lora-dpo: tokens of a prompt and its answer together.
    #[arg(long, default_value_t = 96)]
    max_length: usize,
    /// lora-dpo: after training, print the base and the tuned model's greedy answers to this
    /// many held-out prompts (0: none).
    #[arg(long, default_value_t = 0)]
    answers: usize,
    /// Tokens of each answer at most.
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// lora-dpo: how the frozen base is stored (as `fairtune train --base-dtype`).
    #[arg(long, value_enum, default_value_t = BaseDtype::F32)]
    base_dtype: BaseDtype,
    /// lora-dpo: the base's projections in 8- or 4-bit blocks (as `fairtune train`).
    #[arg(long, value_enum)]
    quantize_base: Option<Quantize>,
    /// lora-dpo: recompute each layer in backward (as `fairtune train`).
    #[arg(long)]
    gradient_checkpointing: bool,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
}

#[derive(Args)]
struct GenerateArgs {
    /// A preset, fetched name, Hugging Face directory, GGUF file or config.json.
    #[arg(long)]
    model: Option<String>,
    /// A finished `fairtune train` run: its tuned model (OUT/hf, adapters merged).
    #[arg(long)]
    run: Option<PathBuf>,
    /// PEFT LoRA adapters (a LoRA run's OUT/adapter, or PEFT's own) on the --model base.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// A tokenizer.json to use instead of the model's own.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The prompt, as plain text (tokenized as the tokenizer does, BOS by its own rule).
    #[arg(long)]
    prompt: Option<String>,
    /// A JSONL file of {"prompt": text or [{"role", "content"}, …]} rows, generated as a batch.
    #[arg(long)]
    prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 (the default) is greedy; above 0, sample at this temperature.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample from the most likely tokens whose probability adds up to p (1: all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop a completion at this text (repeatable); EOS and end-of-turn tokens always stop it.
    #[arg(long)]
    stop: Vec<String>,
    /// Render plain-text prompts as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// One JSON object per prompt on stdout: {"prompt", "completion", "prompt_ids",
    /// "completion_ids", "finish"}.
    #[arg(long)]
    jsonl: bool,
    /// With --run: the run's base model and its tuned model answer the same prompts, side by
    /// side (default prompts: the first --limit distinct prompts of the run's --eval file).
    #[arg(long)]
    compare: bool,
    /// How many held-out prompts --compare takes.
    #[arg(long, default_value_t = 5)]
    limit: usize,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
}

#[derive(Args)]
struct BenchArgs {
    /// Which backends to measure (auto: the CPU, and wgpu when an adapter exists).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Smaller sizes and fewer repetitions (a smoke run).
    #[arg(long)]
    quick: bool,
}

fn devices() -> Result<()> {
    let adapters = device::list_adapters();
    if adapters.is_empty() {
        println!("wgpu sees no adapter; --backend auto will use the CPU backend");
        return Ok(());
    }
    println!(
        "{:<3} {:<40} {:<8} {:<14} driver",
        "#", "adapter", "api", "type"
    );
    for (index, adapter) in adapters.iter().enumerate() {
        println!(
            "{index:<3} {:<40} {:<8} {:<14} {}",
            adapter.name, adapter.api, adapter.device_type, adapter.driver
        );
    }
    match device::auto_adapter(&device::usable_adapters())? {
        Ok(adapter) => println!("--backend auto takes: {adapter}"),
        Err(reason) => println!("--backend auto takes: the CPU backend ({reason})"),
    }
    Ok(())
}

fn fetch(names: &[String]) -> Result<()> {
    use fairtune::fetch;
    let cache = fetch::cache_dir()?;
    if names.is_empty() {
        println!("cache: {}", cache.display());
        for asset in fetch::ASSETS {
            let state = if asset.is_ready(&cache) {
                "present"
            } else {
                "-"
            };
            println!(
                "{:<22} {:<8} {} ({})",
                asset.name, state, asset.description, asset.license
            );
        }
        return Ok(());
    }
    let wanted: Vec<&fetch::Asset> = if names.iter().any(|n| n == "all") {
        fetch::ASSETS.iter().collect()
    } else {
        names
            .iter()
            .map(|name| {
                fetch::asset(name).ok_or_else(|| {
                    let known: Vec<&str> = fetch::ASSETS.iter().map(|a| a.name).collect();
                    Error::input(format!(
                        "unknown asset {name:?} (known: {}, or all)",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    for asset in wanted {
        let (dir, summary) = fetch::fetch(asset, &cache)?;
        println!("{:<22} {} — {summary}", asset.name, dir.display());
    }
    Ok(())
}

fn sweep(args: SweepArgs) -> Result<()> {
    let config = args.train.into_config();
    config.validate()?;
    let options = fairtune::sweep::SweepOptions {
        lambdas: args.lambdas,
        seeds: args.seeds,
        tolerance: args.tolerance,
    };
    let selected = device::select(config.backend)?;
    eprintln!("device: {}", selected.describe());
    let report = fairtune::sweep::run(&config, &options, &selected)?;
    print!("{}", fairtune::sweep::table(&report));
    eprintln!("wrote {}", config.out.join("sweep.json").display());
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let selected = device::select(args.backend)?;
    eprintln!("device: {}", selected.describe());
    let report = match args.benchmark {
        Some(benchmark) => {
            let options = fairtune::eval::bias::BenchmarkOptions {
                benchmark,
                run: args.run,
                model: args.model,
                tokenizer: args.tokenizer,
                data: args.data,
                limit: args.limit,
                batch_size: args.batch_size.max(1),
                max_length: args.max_length,
            };
            let report = fairtune::eval::bias::run(&options, &selected)?;
            print!("{}", fairtune::eval::bias::table(&report));
            report
        }
        None => {
            if args.limit.is_some() {
                return Err(Error::input("--limit applies to --benchmark only"));
            }
            let options = fairtune::eval::EvalOptions {
                run: args.run,
                model: args.model,
                tokenizer: args.tokenizer,
                data: args.data.expect("clap requires --data without --benchmark"),
                positive_class: args.positive_class,
                batch_size: args.batch_size.max(1),
                max_length: args.max_length,
                bootstrap: args.bootstrap,
                seed: args.seed,
            };
            let report = fairtune::eval::run(&options, &selected)?;
            print!("{}", fairtune::eval::table(&report));
            report
        }
    };
    if let Some(path) = &args.out {
        fairtune::eval::write(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn demo(args: DemoArgs) -> Result<()> {
    let options = fairtune::apps::demo::DemoOptions {
        preset: args.preset,
        out: args.out,
        backend: args.backend,
        lambda: args.lambda,
        steps: args.steps,
        seed: args.seed,
    };
    let selected = device::select(options.backend)?;
    eprintln!("device: {}", selected.describe());
    let report = fairtune::apps::demo::run(&options, &selected)?;
    println!();
    print!("{}", fairtune::apps::demo::table(&report));
    println!(
        "\nPareto plot: {}  (and .svg; sweep.json, demo.json beside it)",
        options.out.join("pareto.png").display()
    );
    Ok(())
}

fn playground(args: PlaygroundArgs) -> Result<()> {
    let options = fairtune::apps::playground::Options {
        preset: args.preset,
        lambda: args.lambda,
        beta: args.beta,
        steps: args.steps,
        seed: args.seed,
        lr: args.lr,
        batch_size: args.batch_size,
        fairness_batch_size: args.fairness_batch_size,
        model: args.model,
        data: args.data,
        lora_rank: args.lora_rank,
        max_length: args.max_length,
        base_dtype: args.base_dtype,
        quantize_base: args.quantize_base,
        gradient_checkpointing: args.gradient_checkpointing,
    };
    let selected = device::select(args.backend)?;
    eprintln!("device: {}", selected.describe());
    let answers = (args.answers > 0).then_some((args.answers, args.max_new_tokens));
    fairtune::apps::playground::run(&options, &selected, args.eval_every, answers)
}

fn train(args: TrainArgs) -> Result<()> {
    let config = args.into_config();
    config.validate()?;
    let selected = device::select(config.backend)?;
    eprintln!("device: {}", selected.describe());
    let report = fairtune::train::run(&config, &selected)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("report serializes")
    );
    eprintln!("wrote {}", config.out.join("report.json").display());
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    let request = fairtune::generate::Request {
        model: args.model,
        run: args.run,
        adapter: args.adapter,
        tokenizer: args.tokenizer,
        prompt: args.prompt,
        prompts: args.prompts,
        chat: args.chat,
        jsonl: args.jsonl,
        compare: args.compare,
        limit: args.limit,
        options: fairtune::generate::GenerateOptions {
            max_new_tokens: args.max_new_tokens,
            sampling: fairtune::generate::Sampling {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
                seed: args.seed,
            },
            stop_ids: Vec::new(),
            stop_strings: args.stop,
        },
    };
    request.options.sampling.validate()?;
    let selected = device::select(args.backend)?;
    eprintln!("device: {}", selected.describe());
    fairtune::generate::run(&request, &selected.device)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo(args),
        Command::Playground(args) => playground(args),
        Command::Devices => devices(),
        Command::Train(args) => train(*args),
        Command::Bench(args) => {
            let options = fairtune::throughput::BenchOptions {
                backend: args.backend,
                quick: args.quick,
            };
            fairtune::throughput::run(&options).map(|table| println!("{table}"))
        }
        Command::Generate(args) => generate(*args),
        Command::Fetch { names } => fetch(&names),
        Command::Eval(args) => eval(args),
        Command::Sweep(args) => sweep(*args),
        Command::Export {
            model,
            tokenizer,
            out,
        } => fairtune::train::export_model(&model, tokenizer, &out).map(|line| println!("{line}")),
        Command::Compare { runs } => {
            let runs: Vec<&std::path::Path> = runs.iter().map(PathBuf::as_path).collect();
            fairtune::eval::compare::table(&runs).map(|table| print!("{table}"))
        }
    }
}

/// On a headless Linux machine Mesa's Vulkan device-select layer tries to reach a Wayland
/// session and prints `error: XDG_RUNTIME_DIR is invalid` on stderr — noise that reads like our
/// own errors. The layer only reorders adapters, and we choose ours explicitly, so without a
/// session we turn it off (Mesa's documented `NODEVICE_SELECT`), unless the user set it.
fn quiet_mesa_device_select() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn main() -> ExitCode {
    quiet_mesa_device_select();
    let cli = Cli::parse();
    // A panic is a bug, but the user still gets one line and a failing exit code, not a trace.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let location = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        // The full message (wgpu validation errors span many lines) when RUST_BACKTRACE is set.
        let message = if std::env::var_os("RUST_BACKTRACE").is_some() {
            message.as_str()
        } else {
            message.lines().next().unwrap_or("")
        };
        eprintln!("error: internal failure{location}: {message}");
    }));
    let outcome = std::panic::catch_unwind(|| run(cli));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
        Err(_) => ExitCode::from(Error::runtime("").exit_code() as u8),
    }
}
