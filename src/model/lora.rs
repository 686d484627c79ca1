//! LoRA (Hu et al. 2021): frozen base weights plus trainable low-rank adapters `W + (α/r)·A·B`
//! on the chosen projections, through burn's own `Module::apply_lora`. The models' projections go
//! through [`super::layers::project`], which keeps each adapter apart from its weight, as PEFT
//! does (`x·W₀ + s·(dropout(x)·A)·B`), so training never forms the dense weight gradient. The
//! frozen base is the model as loaded, so the DPO reference model is the same weights with the
//! adapters off: no second copy of the model.
//!
//! Adapters are saved in PEFT's layout (`adapter_model.safetensors` + `adapter_config.json`),
//! which `peft.PeftModel.from_pretrained` loads and `merge_and_unload` merges; a full export
//! merges them first.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Lora, LoraAdapter, Module, Param, ParamGroup, Reparameterizer};
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ArchConfig;
use super::io::export::{
    HostTensor, hf_name, parameters, parameters_async, safetensors_bytes, transposed,
    write_dir_atomic,
};
use crate::error::{Error, Result};

/// A projection LoRA can adapt, in PEFT's short names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    /// Phi-3's fused q/k/v projection (`qkv_proj`).
    Qkv,
    /// Phi-3's fused gate/up projection (`gate_up_proj`).
    GateUp,
}

impl LoraTarget {
    /// The projection's module under a Llama-family layer.
    fn decoder_module(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
            LoraTarget::Qkv => "self_attn.qkv_proj",
            LoraTarget::GateUp => "mlp.gate_up_proj",
        }
    }

    /// PEFT's name of it (the module path's last part).
    fn decoder_name(self) -> &'static str {
        self.decoder_module()
            .rsplit_once('.')
            .map_or("", |(_, name)| name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
    /// Dropout on the adapters' inputs during training (PEFT's `lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// Empty: every projection the architecture has.
    pub targets: Vec<LoraTarget>,
}

impl LoraSettings {
    /// Adapters of `rank` with the defaults of `fairtune train`: α = 16, no dropout, on every
    /// projection the architecture has.
    pub fn new(rank: usize) -> Self {
        Self {
            rank,
            alpha: 16.0,
            dropout: 0.0,
            targets: Vec::new(),
        }
    }

    /// The adapters' scale α/r (`base + scale·A·B`).
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::input("--lora-rank must be at least 1"));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(Error::input(format!(
                "--lora-dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::input(format!(
                "--lora-alpha must be positive, got {}",
                self.alpha
            )));
        }
        Ok(())
    }

    /// The targets, or when none were named, every projection `arch` has.
    fn targets_for(&self, arch: &ArchConfig) -> Vec<LoraTarget> {
        use LoraTarget::*;
        match (self.targets.is_empty(), arch) {
            (false, _) => self.targets.clone(),
            (true, ArchConfig::Llama(config)) if config.family.fused_projections() => {
                vec![Qkv, O, GateUp, Down]
            }
            (true, ArchConfig::Llama(_)) => vec![Q, K, V, O, Gate, Up, Down],
            (true, ArchConfig::Bert(_)) => vec![Q, K, V, O, Up, Down],
        }
    }

    /// Our parameter paths of every adapted weight of `arch`.
    pub fn weight_paths(&self, arch: &ArchConfig) -> Result<Vec<String>> {
        let mut paths = Vec::new();
        match arch {
            ArchConfig::Llama(config) => {
                let fused = config.family.fused_projections();
                for target in self.targets_for(arch) {
                    use LoraTarget::*;
                    let name = config.family.model_type();
                    match (fused, target) {
                        (true, Q | K | V) => {
                            return Err(Error::input(format!(
                                "--lora-targets {}: {name} has one qkv_proj for q, k and v \
                                 (use qkv)",
                                target.decoder_name().trim_end_matches("_proj")
                            )));
                        }
                        (true, Gate | Up) => {
                            return Err(Error::input(format!(
                                "--lora-targets {}: {name} has one gate_up_proj for gate and \
                                 up (use gate-up)",
                                target.decoder_name().trim_end_matches("_proj")
                            )));
                        }
                        (false, Qkv | GateUp) => {
                            return Err(Error::input(format!(
                                "--lora-targets {}: only Phi-3 fuses its projections; {name} \
                                 has q, k, v, o, gate, up, down",
                                if target == Qkv { "qkv" } else { "gate-up" }
                            )));
                        }
                        _ => {}
                    }
                }
                for layer in 0..config.num_hidden_layers {
                    for target in &self.targets_for(arch) {
                        let module = target.decoder_module();
                        paths.push(format!("model.layers.{layer}.{module}.weight"));
                    }
                }
            }
            ArchConfig::Bert(config) => {
                for layer in 0..config.num_hidden_layers {
                    for target in &self.targets_for(arch) {
                        let module = match target {
                            LoraTarget::Q => "attention.self_attn.query",
                            LoraTarget::K => "attention.self_attn.key",
                            LoraTarget::V => "attention.self_attn.value",
                            LoraTarget::O => "attention.output.dense",
                            LoraTarget::Up => "intermediate.dense",
                            LoraTarget::Down => "output.dense",
                            LoraTarget::Gate | LoraTarget::Qkv | LoraTarget::GateUp => {
                                return Err(Error::input(
                                    "--lora-targets: BERT has no gate or fused projections \
                                     (use q, k, v, o, up, down)",
                                ));
                            }
                        };
                        paths.push(format!("bert.encoder.layer.{layer}.{module}.weight"));
                    }
                }
            }
        }
        Ok(paths)
    }

    /// Attach adapters to `module` and freeze everything else except `trainable` (paths of
    /// parameters trained in full, e.g. a fresh classification head).
    pub fn apply<M: Module>(&self, module: M, arch: &ArchConfig, trainable: &[&str]) -> Result<M> {
        let paths = self.weight_paths(arch)?;
        let adapted = module.apply_reparameterization(PeftInit(
            Lora::new(self.rank, self.alpha).set_param_group(ParamGroup::from_paths(paths)),
        ));
        Ok(if trainable.is_empty() {
            adapted
        } else {
            adapted.unfreeze_group(ParamGroup::from_paths(trainable.to_vec()))
        })
    }

    /// PEFT's `target_modules` names for `arch`.
    fn peft_targets(&self, arch: &ArchConfig) -> Vec<&'static str> {
        self.targets_for(arch)
            .iter()
            .map(|t| match (arch, t) {
                (ArchConfig::Llama(_), target) => target.decoder_name(),
                (ArchConfig::Bert(_), LoraTarget::Q) => "query",
                (ArchConfig::Bert(_), LoraTarget::K) => "key",
                (ArchConfig::Bert(_), LoraTarget::V) => "value",
                (ArchConfig::Bert(_), LoraTarget::O) => "attention.output.dense",
                (ArchConfig::Bert(_), LoraTarget::Up) => "intermediate.dense",
                (
                    ArchConfig::Bert(_),
                    LoraTarget::Down | LoraTarget::Gate | LoraTarget::Qkv | LoraTarget::GateUp,
                ) => "output.dense",
            })
            .collect()
    }
}

/// burn's LoRA adapters with PEFT's initialization (`LoraLayer.reset_lora_parameters`):
/// `lora_A` Kaiming-uniform with a = √5, i.e. A ~ U(−1/√d_in, 1/√d_in), and B = 0 (burn draws
/// A from N(0, 1/r): about 5× PEFT's scale for r = 8, d_in = 576, so the same learning rate
/// trained differently than with PEFT).
struct PeftInit(Lora);

impl Reparameterizer for PeftInit {
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        let (base, adapter) = self.0.reparameterize(path, param);
        let adapter = adapter.map(|adapter| {
            let a = adapter.a.val();
            let [d_in, _] = a.dims();
            let bound = 1.0 / (d_in.max(1) as f64).sqrt();
            // Always f32: burn makes the factors in the base's precision, and a base stored in
            // half (`--base-dtype`) still trains f32 adapters.
            let a =
                Tensor::<2>::random(a.dims(), Distribution::Uniform(-bound, bound), &a.device());
            let b = adapter.b.val();
            let b = if b.dtype() == burn::tensor::DType::F32 {
                adapter.b
            } else {
                // B starts at zero (PEFT's and burn's init alike).
                Param::from_tensor(Tensor::<2>::zeros(b.dims(), &b.device()))
            };
            LoraAdapter {
                a: Param::from_tensor(a),
                b,
                ..adapter
            }
        });
        (base, adapter)
    }
}

/// PEFT's names of a checkpoint's LoRA factors: our `…q_proj.weight.lora.a` is
/// `base_model.model.…q_proj.lora_A.weight`, stored transposed (`[r, in]`, `[out, r]`); every
/// other parameter keeps the base model's value.
struct PeftKeys;

impl super::io::safetensors::KeyMap for PeftKeys {
    fn candidates(&self, path: &str) -> Vec<String> {
        match path.rsplit_once(".lora.") {
            Some((weight, factor)) => {
                let module = weight.strip_suffix(".weight").unwrap_or(weight);
                let peft = if factor == "a" { "lora_A" } else { "lora_B" };
                vec![format!("base_model.model.{module}.{peft}.weight")]
            }
            None => Vec::new(),
        }
    }

    fn is_linear(&self, path: &str) -> bool {
        path.contains(".lora.")
    }

    fn may_be_new(&self, path: &str) -> bool {
        !path.contains(".lora.")
    }
}

/// A PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`, as
/// `save_adapters` and PEFT write them) attached to `model`: its rank, α and target modules
/// from the config, its factors from the weights. Refused when the config is not a LoRA of
/// projections this architecture has, or a factor is missing or of the wrong shape.
pub fn load_adapters<M: Module>(model: M, arch: &ArchConfig, dir: &Path) -> Result<M> {
    let config_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        Error::input(format!(
            "{}: cannot read ({e}); is {} a PEFT adapter directory?",
            config_path.display(),
            dir.display()
        ))
    })?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::input(format!("{}: not valid JSON: {e}", config_path.display())))?;
    let bad = |why: &str| Error::input(format!("{}: {why}", config_path.display()));
    if config["peft_type"].as_str() != Some("LORA") {
        return Err(bad("not a LoRA adapter (peft_type must be \"LORA\")"));
    }
    let rank = config["r"]
        .as_u64()
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("\"r\" must be a positive integer"))? as usize;
    let alpha = config["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("\"lora_alpha\" must be a number"))?;
    let names = config["target_modules"]
        .as_array()
        .ok_or_else(|| bad("\"target_modules\" must be a list of module names"))?;
    let mut targets = Vec::new();
    for name in names {
        let name = name.as_str().unwrap_or("");
        let target = match name {
            "q_proj" => LoraTarget::Q,
            "k_proj" => LoraTarget::K,
            "v_proj" => LoraTarget::V,
            "o_proj" => LoraTarget::O,
            "gate_proj" => LoraTarget::Gate,
            "up_proj" => LoraTarget::Up,
            "down_proj" => LoraTarget::Down,
            "qkv_proj" => LoraTarget::Qkv,
            "gate_up_proj" => LoraTarget::GateUp,
            other => {
                return Err(bad(&format!(
                    "target module {other:?} is not one fairtune adapts (q_proj, k_proj, \
                     v_proj, o_proj, gate_proj, up_proj, down_proj; Phi-3's qkv_proj, \
                     gate_up_proj)"
                )));
            }
        };
        targets.push(target);
    }
    let settings = LoraSettings {
        rank,
        alpha,
        dropout: 0.0,
        targets,
    };
    let adapted = settings.apply(model, arch, &[])?;
    let checkpoint =
        super::io::safetensors::Checkpoint::from_file(&dir.join("adapter_model.safetensors"))?;
    let (adapted, report) = super::io::safetensors::load(adapted, checkpoint, &PeftKeys)?;
    if !report.unused.is_empty() {
        let shown: Vec<&str> = report.unused.iter().take(4).map(String::as_str).collect();
        return Err(Error::input(format!(
            "{}: tensors this model has no adapter for: {}",
            dir.display(),
            shown.join(", ")
        )));
    }
    Ok(adapted)
}

/// Save the adapters of `module` in PEFT's layout at `dir`: for each adapted `W [in, out]`
/// (burn's layout) with factors `A [in, r]`, `B [r, out]`, PEFT's `lora_A.weight = Aᵀ [r, in]`
/// and `lora_B.weight = Bᵀ [out, r]`, under `base_model.model.<HF module path>`.
pub fn save_adapters<M: Module>(
    module: &M,
    arch: &ArchConfig,
    settings: &LoraSettings,
    base_model: &str,
    dir: &Path,
) -> Result<usize> {
    let (files, count) = adapter_files(module, arch, settings, base_model)?;
    write_dir_atomic(dir, &files)?;
    Ok(count)
}

/// Files by name, as bytes.
pub type Files = Vec<(&'static str, Vec<u8>)>;

/// The files [`save_adapters`] writes — `adapter_model.safetensors` and `adapter_config.json` —
/// as bytes (the browser offers them as downloads), and the number of adapted matrices.
pub fn adapter_files<M: Module>(
    module: &M,
    arch: &ArchConfig,
    settings: &LoraSettings,
    base_model: &str,
) -> Result<(Files, usize)> {
    // The factors alone: reading the rest would copy the frozen base to the host whole.
    let factors = parameters(module, |path| path.contains(".lora."))?;
    peft_files(factors, arch, settings, base_model)
}

/// [`adapter_files`] with awaited device reads (the browser cannot block on a GPU).
pub async fn adapter_files_async<M: Module>(
    module: &M,
    arch: &ArchConfig,
    settings: &LoraSettings,
    base_model: &str,
) -> Result<(Files, usize)> {
    let factors = parameters_async(module, |path| path.contains(".lora.")).await?;
    peft_files(factors, arch, settings, base_model)
}

/// PEFT's two files from the LoRA factors on the host.
fn peft_files(
    factors: Vec<HostTensor>,
    arch: &ArchConfig,
    settings: &LoraSettings,
    base_model: &str,
) -> Result<(Files, usize)> {
    let mut tensors = BTreeMap::new();
    for t in factors {
        let Some((weight, factor)) = t.name.rsplit_once(".lora.") else {
            continue;
        };
        let (hf_weight, _) = hf_name(arch, weight);
        let module_path = hf_weight.strip_suffix(".weight").unwrap_or(&hf_weight);
        let peft = match factor {
            "a" => "lora_A",
            "b" => "lora_B",
            other => {
                return Err(Error::runtime(format!("unexpected LoRA factor {other:?}")));
            }
        };
        tensors.insert(
            format!("base_model.model.{module_path}.{peft}.weight"),
            transposed(&t.shape, &t.data),
        );
    }
    if tensors.is_empty() {
        return Err(Error::runtime("the model has no LoRA adapters to save"));
    }
    let config = json!({
        "peft_type": "LORA",
        "task_type": match arch { ArchConfig::Llama(_) => "CAUSAL_LM", ArchConfig::Bert(_) => "SEQ_CLS" },
        "base_model_name_or_path": base_model,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": settings.peft_targets(arch),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    });
    let count = tensors.len() / 2;
    let files = vec![
        ("adapter_model.safetensors", safetensors_bytes(&tensors)?),
        (
            "adapter_config.json",
            serde_json::to_vec_pretty(&config).expect("json"),
        ),
    ];
    Ok((files, count))
}
