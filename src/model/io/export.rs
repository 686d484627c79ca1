//! Saving a model as a Hugging Face directory that transformers loads with `from_pretrained`:
//! `model.safetensors` (f32, HF names, linear weights back to `[out, in]`), `config.json`, and the
//! tokenizer (`tokenizer.json`, plus `tokenizer_config.json` with the special tokens and chat
//! template). LoRA adapters are merged into their weights as each is written (see [`save_hf`]);
//! the adapters alone are saved by `lora::save_adapters` in PEFT's layout.
//!
//! The weights are written one tensor at a time ([`write_safetensors`]): the file's header from
//! the parameters' shapes alone, then each tensor read from the device, converted and written, so
//! an export holds one tensor's bytes on the host, not a second and third copy of the model.
//!
//! The directory is built beside its destination and renamed into place, so an existing export
//! is replaced whole or not at all.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::ArchConfig;
use crate::tokenizer::TextTokenizer;

/// A named f32 tensor on the host.
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Collects the parameters whose module path `wanted` accepts (an adapted weight's path names
/// its stored base; its LoRA factors come apart, at `….lora.a` and `….lora.b`), flattened, still
/// on the device. The others are never read.
struct Collect<F> {
    wanted: F,
    path: Vec<String>,
    tensors: Vec<(String, Vec<usize>, Tensor<1>)>,
}

impl<F: Fn(&str) -> bool> ModuleVisitor for Collect<F> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.path.join(".");
        if !(self.wanted)(&name) {
            return;
        }
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let n = shape.iter().product::<usize>();
        self.tensors.push((name, shape, tensor.reshape([n])));
    }
}

/// The parameters of `module` that `wanted` accepts, by module path, on the device.
fn collect<M: Module>(
    module: &M,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(String, Vec<usize>, Tensor<1>)> {
    let mut collect = Collect {
        wanted,
        path: Vec::new(),
        tensors: Vec::new(),
    };
    module.visit(&mut collect);
    collect.tensors
}

/// A tensor's values on the host, as f32.
fn host_values<const D: usize>(tensor: Tensor<D>) -> std::result::Result<Vec<f32>, String> {
    f32_values(tensor.try_into_data().map_err(|e| format!("{e:?}")))
}

/// Read data as f32 values.
fn f32_values(
    data: std::result::Result<TensorData, String>,
) -> std::result::Result<Vec<f32>, String> {
    data.and_then(|d| {
        d.convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| format!("{e:?}"))
    })
}

fn read_failed(name: &str, e: String) -> Error {
    Error::runtime(format!("reading {name} failed: {e}"))
}

/// The parameters of `module` whose path `wanted` accepts, on the host, by module path (one
/// at a time would do for a whole model: this is for parts, such as LoRA's factors).
pub fn parameters<M: Module>(module: &M, wanted: impl Fn(&str) -> bool) -> Result<Vec<HostTensor>> {
    collect(module, wanted)
        .into_iter()
        .map(|(name, shape, tensor)| {
            let data = host_values(tensor).map_err(|e| read_failed(&name, e))?;
            Ok(HostTensor { name, shape, data })
        })
        .collect()
}

/// [`parameters`], each read with an awaited device read (the browser cannot block on a GPU).
pub async fn parameters_async<M: Module>(
    module: &M,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<HostTensor>> {
    let mut read = Vec::new();
    for (name, shape, tensor) in collect(module, wanted) {
        let data = f32_values(tensor.into_data_async().await.map_err(|e| format!("{e:?}")))
            .map_err(|e| read_failed(&name, e))?;
        read.push(HostTensor { name, shape, data });
    }
    Ok(read)
}

/// Every parameter's path and shape, without reading any data.
#[derive(Default)]
struct Shapes {
    path: Vec<String>,
    found: Vec<(String, Vec<usize>)>,
}

impl ModuleVisitor for Shapes {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.lazy_shape().iter().copied().collect();
        self.found.push((self.path.join("."), shape));
    }
}

/// The parameter at `wanted`, and its LoRA factors if it has any: burn's visitors see an adapted
/// weight's stored base (without its reparameterization) and then its factors at
/// `wanted.lora.a` / `wanted.lora.b`.
struct Fetch<'a> {
    path: Vec<String>,
    wanted: &'a str,
    base: Option<Tensor<2>>,
    a: Option<Tensor<2>>,
    b: Option<Tensor<2>>,
}

impl ModuleVisitor for Fetch<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        let Some(rest) = path.strip_prefix(self.wanted) else {
            return;
        };
        let as_matrix = |tensor: Tensor<D>| {
            let dims = tensor.dims();
            let cols = dims.last().copied().unwrap_or(1);
            let rows = dims.iter().product::<usize>() / cols.max(1);
            tensor.reshape([rows, cols])
        };
        match rest {
            "" if self.base.is_none() => {
                self.base = Some(as_matrix(param.val()));
            }
            ".lora.a" => self.a = Some(as_matrix(param.val())),
            ".lora.b" => self.b = Some(as_matrix(param.val())),
            _ => {}
        }
    }
}

/// The parameter at `path` of `module`, to be read in parts: its stored value as a matrix
/// (`[rows, cols]`, the last dimension kept) and, when LoRA adapts it, its factors.
struct Fetched {
    base: Tensor<2>,
    lora: Option<(Tensor<2>, Tensor<2>, f64)>,
}

impl Fetched {
    fn of<M: Module>(module: &M, path: &str, lora_scale: Option<f64>) -> Result<Self> {
        let mut fetch = Fetch {
            path: Vec::new(),
            wanted: path,
            base: None,
            a: None,
            b: None,
        };
        module.visit(&mut fetch);
        let Some(mut base) = fetch.base else {
            return Err(Error::runtime(format!("{path}: no such parameter")));
        };
        // A quantized matrix is dequantized whole, once: a slice of its packed blocks would be
        // requantized along other block boundaries. (Half ones are widened part by part.)
        if matches!(base.dtype(), burn::tensor::DType::QFloat(_)) {
            base = base.dequantize();
        }
        let lora = match (fetch.a, fetch.b, lora_scale) {
            (None, None, _) => None,
            (Some(a), Some(b), Some(scale)) => Some((a, b, scale)),
            (Some(_), Some(_), None) => {
                return Err(Error::runtime(format!(
                    "{path}: LoRA adapters without their scale to merge them with"
                )));
            }
            _ => return Err(Error::runtime(format!("{path}: a LoRA factor is missing"))),
        };
        Ok(Self { base, lora })
    }

    /// Rows `start..start + len` of the effective value (`base + s·A·B`, in f32), or with
    /// `columns` its columns (a burn `[in, out]` linear weight's, which are the rows of the
    /// `[out, in]` it is written as), transposed into rows.
    fn rows(&self, columns: bool, start: usize, len: usize) -> Tensor<2> {
        let axis = usize::from(columns);
        let base = crate::model::precision::full(self.base.clone().narrow(axis, start, len));
        let value = match &self.lora {
            None => base,
            Some((a, b, scale)) => {
                let delta = if columns {
                    a.clone().matmul(b.clone().narrow(1, start, len))
                } else {
                    a.clone().narrow(0, start, len).matmul(b.clone())
                };
                base + delta.mul_scalar(*scale)
            }
        };
        if columns { value.transpose() } else { value }
    }
}

/// Values written per part of a tensor: the export holds one part on the host (and its f32
/// copy on the device), not the largest tensor whole — a 150k-token embedding is 0.5–1 GiB.
const EXPORT_PART: usize = 1 << 22;

/// Write a safetensors file (f32) at `path`: the header from `tensors`' names and shapes (built by
/// the safetensors crate's own `Metadata`), then the data of tensor `i`, which `data(i, write)`
/// hands to `write` in parts, in order, read only when it is written. Names must be sorted, as
/// the format's writers order them.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    mut data: impl FnMut(usize, &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()>,
) -> Result<()> {
    use safetensors::tensor::{Metadata, TensorInfo};
    use std::io::Write;
    let fail = |e: &dyn std::fmt::Display| {
        Error::runtime(format!("{}: cannot write: {e}", path.display()))
    };
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|(name, shape)| {
            let bytes = shape.iter().product::<usize>() * 4;
            let info = TensorInfo {
                dtype: Dtype::F32,
                shape: shape.clone(),
                data_offsets: (offset, offset + bytes),
            };
            offset += bytes;
            (name.clone(), info)
        })
        .collect();
    // transformers checks the "format" metadata entry when it loads the file.
    let format = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    let metadata = Metadata::new(Some(format), infos).map_err(|e| fail(&e))?;
    let mut header = serde_json::to_vec(&metadata).map_err(|e| fail(&e))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let file = std::fs::File::create(path).map_err(|e| fail(&e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .map_err(|e| fail(&e))?;
    for (index, (name, shape)) in tensors.iter().enumerate() {
        let mut written = 0;
        data(index, &mut |values| {
            written += values.len();
            for chunk in values.chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                out.write_all(&bytes).map_err(|e| fail(&e))?;
            }
            Ok(())
        })?;
        if written != shape.iter().product::<usize>() {
            return Err(Error::runtime(format!(
                "{name}: {written} values for shape {shape:?}"
            )));
        }
    }
    let file = out.into_inner().map_err(|e| fail(&e))?;
    file.sync_all().map_err(|e| fail(&e))
}

/// A row-major 2-D tensor transposed: `([rows, cols], data)` → `([cols, rows], dataᵀ)`.
pub(crate) fn transposed(shape: &[usize], data: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (rows, cols) = (shape[0], shape[1]);
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    (vec![cols, rows], out)
}

/// Our parameter path → (HF name, whether it is a burn `[in, out]` linear weight).
pub(crate) fn hf_name(arch: &ArchConfig, path: &str) -> (String, bool) {
    match arch {
        ArchConfig::Llama(_) => (path.to_string(), !path.contains("embed_tokens")),
        ArchConfig::Bert(_) => (
            path.replace(".self_attn.", ".self.")
                .replace("layer_norm", "LayerNorm"),
            !path.contains("embeddings"),
        ),
    }
}

/// safetensors bytes of `tensors` (f32), names sorted as the format wants.
pub fn safetensors_bytes(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<Vec<u8>> {
    let bytes: BTreeMap<&str, Vec<u8>> = tensors
        .iter()
        .map(|(name, (_, data))| {
            (
                name.as_str(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(name, (shape, _))| {
            TensorView::new(Dtype::F32, shape.clone(), &bytes[name.as_str()])
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::runtime(format!("safetensors: {e}")))?;
    // transformers checks the "format" metadata entry when it loads the file.
    let metadata = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| Error::runtime(format!("safetensors: {e}")))
}

/// What sits on top of the model, which names its transformers class.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportHead {
    /// `LlamaForCausalLM`.
    CausalLm,
    /// `BertForSequenceClassification`, with the label names.
    Sequence(Vec<String>),
    /// `BertForTokenClassification`, with the label names.
    Token(Vec<String>),
}

impl ExportHead {
    /// A sequence classifier with `n` unnamed labels (`LABEL_0`…, transformers' default).
    pub fn sequence(n: usize) -> Self {
        ExportHead::Sequence((0..n).map(|i| format!("LABEL_{i}")).collect())
    }
}

/// The config.json transformers needs for `arch` under `head`.
pub fn config_json(arch: &ArchConfig, head: &ExportHead) -> Value {
    let mut value = serde_json::to_value(arch).expect("configs serialize");
    let object = value.as_object_mut().expect("an object");
    let (architecture, labels) = match (head, arch) {
        (ExportHead::CausalLm, ArchConfig::Llama(config)) => {
            // The family's own model_type and class (the decoder's fields keep their HF names).
            object.insert("model_type".into(), json!(config.family.model_type()));
            object.remove("family");
            // A GGUF's rope_freqs as the llama3 parameters they come from (save_hf refuses
            // divisors that follow none).
            if let Some(divisors) = object.remove("rope_divisors") {
                let divisors: Vec<f64> = serde_json::from_value(divisors).unwrap_or_default();
                if let Some(params) = crate::model::rope::divisors_as_llama3(
                    config.rope_theta,
                    config.head_dim(),
                    &divisors,
                ) {
                    object.insert("rope_parameters".into(), params);
                }
            }
            (config.family.causal_lm_class(), None)
        }
        (ExportHead::CausalLm, _) => ("LlamaForCausalLM", None),
        (ExportHead::Sequence(labels), _) => ("BertForSequenceClassification", Some(labels)),
        (ExportHead::Token(labels), _) => ("BertForTokenClassification", Some(labels)),
    };
    object.insert("architectures".into(), json!([architecture]));
    object.insert("torch_dtype".into(), json!("float32"));
    if let Some(labels) = labels {
        let id2label: BTreeMap<String, &String> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l))
            .collect();
        let label2id: BTreeMap<&String, usize> =
            labels.iter().enumerate().map(|(i, l)| (l, i)).collect();
        object.insert("id2label".into(), json!(id2label));
        object.insert("label2id".into(), json!(label2id));
    }
    // Drop unset optional ids rather than writing nulls transformers would keep.
    object.retain(|_, v| !v.is_null());
    // Except where the family's config class has other defaults: Gemma 2's soft caps (50 and
    // 30), Gemma's and Phi-3's token ids (Phi-3's pad 32000, past a small vocabulary).
    if let ArchConfig::Llama(config) = arch {
        use crate::model::Family;
        let mut keep_null: Vec<&str> = Vec::new();
        if config.family == Family::Gemma2 {
            keep_null.extend(["attn_logit_softcapping", "final_logit_softcapping"]);
        }
        if matches!(
            config.family,
            Family::Gemma2 | Family::Gemma3 | Family::Phi3
        ) {
            keep_null.extend(["bos_token_id", "eos_token_id", "pad_token_id"]);
        }
        for key in keep_null {
            object.entry(key).or_insert(Value::Null);
        }
    }
    value
}

/// Write `module` (of architecture `arch`) as a Hugging Face directory at `dir`. LoRA adapters
/// still on `module` are merged into their weights as each is written (`lora_scale` is their
/// α/r), so the export never holds a merged copy of the model beside it.
pub fn save_hf<M: Module>(
    module: &M,
    lora_scale: Option<f64>,
    arch: &ArchConfig,
    head: &ExportHead,
    tokenizer: &TextTokenizer,
    dir: &Path,
) -> Result<()> {
    save_hf_in_parts(module, lora_scale, arch, head, tokenizer, dir, EXPORT_PART)
}

/// [`save_hf`], reading the tensors in parts of about `part` values.
fn save_hf_in_parts<M: Module>(
    module: &M,
    lora_scale: Option<f64>,
    arch: &ArchConfig,
    head: &ExportHead,
    tokenizer: &TextTokenizer,
    dir: &Path,
    part: usize,
) -> Result<()> {
    if let ArchConfig::Llama(config) = arch
        && let Some(divisors) = &config.rope_divisors
        && crate::model::rope::divisors_as_llama3(config.rope_theta, config.head_dim(), divisors)
            .is_none()
    {
        return Err(Error::input(
            "the model's rope scaling came from a GGUF's rope_freqs that follow no llama3 \
             scaling, which a Hugging Face config.json cannot state; export it from the \
             model's Hugging Face directory instead",
        ));
    }
    let mut shapes = Shapes::default();
    module.visit(&mut shapes);
    // (HF name, stored shape, our path, whether a burn [in, out] linear weight to transpose)
    let mut tensors: Vec<(String, Vec<usize>, String, bool)> = Vec::new();
    for (path, shape) in shapes.found {
        // A LoRA factor: its weight is written merged (see `fetch`).
        if path.contains(".lora.") {
            continue;
        }
        let (name, linear) = hf_name(arch, &path);
        let transpose = linear && shape.len() == 2;
        let stored = if transpose {
            vec![shape[1], shape[0]]
        } else {
            shape
        };
        tensors.push((name, stored, path, transpose));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let header: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(n, s, _, _)| (n.clone(), s.clone()))
        .collect();
    let mut files: Vec<(&str, Vec<u8>)> = vec![(
        "config.json",
        serde_json::to_vec_pretty(&config_json(arch, head)).expect("json"),
    )];
    // The built-in byte-level tokenizer has no files: the export is weights and config alone.
    if let Some(hf) = tokenizer.hf() {
        let json = hf
            .to_string(true)
            .map_err(|e| Error::runtime(format!("cannot serialize the tokenizer: {e}")))?;
        files.push(("tokenizer.json", json.into_bytes()));
        let mut config = serde_json::Map::new();
        config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        let texts = tokenizer.special_texts();
        for (key, token) in [
            ("bos_token", texts.bos),
            ("eos_token", texts.eos),
            ("pad_token", texts.pad),
        ] {
            if let Some(token) = token {
                config.insert(key.into(), json!(token));
            }
        }
        if let Some(template) = tokenizer.chat_template_source() {
            config.insert("chat_template".into(), json!(template));
        }
        files.push((
            "tokenizer_config.json",
            serde_json::to_vec_pretty(&config).expect("json"),
        ));
    }
    build_dir_atomic(dir, &files, |tmp| {
        write_safetensors(&tmp.join("model.safetensors"), &header, |index, write| {
            let (_, stored, path, transpose) = &tensors[index];
            let fetched = Fetched::of(module, path, lora_scale)?;
            // The rows as written (a linear weight's `[out, in]`: burn's columns), in parts.
            let [rows, cols] = fetched.base.dims();
            let (rows, cols) = if *transpose {
                (cols, rows)
            } else {
                (rows, cols)
            };
            debug_assert_eq!(rows * cols, stored.iter().product::<usize>());
            let step = (part / cols.max(1)).max(1);
            for start in (0..rows).step_by(step) {
                let part = fetched.rows(*transpose, start, step.min(rows - start));
                let values = host_values(part)
                    .map_err(|e| Error::runtime(format!("reading {path} failed: {e}")))?;
                write(&values)?;
            }
            Ok(())
        })
    })
}

/// Create `dir` holding exactly `files`, replacing any previous `dir` only once all are written.
pub fn write_dir_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    build_dir_atomic(dir, files, |_| Ok(()))
}

/// [`write_dir_atomic`], with `more` writing further files into the directory being built.
fn build_dir_atomic(
    dir: &Path,
    files: &[(&str, Vec<u8>)],
    more: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let io = |path: &Path, what: &str, e: std::io::Error| {
        Error::runtime(format!("{}: cannot {what}: {e}", path.display()))
    };
    let name = dir
        .file_name()
        .ok_or_else(|| Error::input(format!("{}: not a directory name", dir.display())))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, "create", e))?;
    let tmp = parent.join(format!(".{}.tmp", name.to_string_lossy()));
    let old = parent.join(format!(".{}.old", name.to_string_lossy()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io(&tmp, "create", e))?;
    for (file, bytes) in files {
        let path = tmp.join(file);
        std::fs::write(&path, bytes).map_err(|e| io(&path, "write", e))?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&path, "sync", e))?;
    }
    more(&tmp)?;
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| io(dir, "move aside", e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, "rename into place", e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::{Device, Distribution, FloatDType, Tensor};

    use super::{ExportHead, save_hf_in_parts};
    use crate::model::lora::LoraSettings;
    use crate::model::{self, ArchConfig};
    use crate::tokenizer::TextTokenizer;

    /// Every LoRA `B` drawn at random (they start at zero, which would merge to the base).
    struct DrawB(Vec<String>);

    impl ModuleMapper for DrawB {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.0.push(name.to_string());
        }

        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.0.pop();
        }

        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if !self.0.join(".").ends_with(".lora.b") {
                return param;
            }
            param.map(|b| b.random_like(Distribution::Normal(0.0, 0.5)))
        }
    }

    fn weights(dir: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut out: Vec<_> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Written in parts of 7 values (rows of every tensor split mid-way, linear weights read
    /// by columns), a half-stored base with LoRA adapters is the file written whole, and the
    /// file burn's own merge (`materialize`) gives.
    #[test]
    fn parts_write_the_merged_model_whole() {
        let _turn = crate::seeded_rng_turn();
        let device = Device::flex();
        let (arch, _) = model::resolve("tiny-llama", 264).expect("tiny-llama");
        let ArchConfig::Llama(config) = &arch else {
            unreachable!()
        };
        device.seed(5);
        let base = crate::model::precision::store_matrices(
            config.init(&device),
            crate::model::precision::Storage::half(FloatDType::F16),
        );
        let settings = LoraSettings::new(4);
        let adapted = settings
            .apply(base.clone(), &arch, &[])
            .unwrap()
            .map(&mut DrawB(Vec::new()));
        let dir =
            std::env::temp_dir().join(format!("fairtune-export-parts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |name: &str, module: &crate::model::LlamaForCausalLM, part: usize| {
            let out = dir.join(name);
            let scale = Some(settings.scale());
            let (head, bytes) = (ExportHead::CausalLm, TextTokenizer::Bytes);
            save_hf_in_parts(module, scale, &arch, &head, &bytes, &out, part).unwrap();
            weights(&out)
        };
        let parts = write("parts", &adapted, 7);
        let whole = write("whole", &adapted, usize::MAX);
        let plain = write("plain", &base, 7);
        let merged = write(
            "merged",
            &crate::model::precision::widen(adapted.clone()).materialize(),
            7,
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parts.len(), whole.len());
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let mut changed = Vec::new();
        for (((p, w), m), b) in parts.iter().zip(&whole).zip(&merged).zip(&plain) {
            assert_eq!((&p.0, &p.1), (&w.0, &w.1));
            assert_eq!((&p.0, &p.1), (&m.0, &m.1));
            let (p, w, m) = (floats(&p.2), floats(&w.2), floats(&m.2));
            for ((a, b), c) in p.iter().zip(&w).zip(&m) {
                assert!(
                    (a - b).abs() <= 1e-6 && (a - c).abs() <= 1e-5,
                    "{a} {b} {c}"
                );
            }
            if p != floats(&b.2) {
                changed.push(b.0.clone());
            }
        }
        // The adapted projections (q, k, v, o, gate, up, down of 2 layers) and nothing else.
        assert_eq!(changed.len(), 14, "{changed:?}");
        assert!(changed.iter().all(|name| name.ends_with("_proj.weight")));
    }
}
