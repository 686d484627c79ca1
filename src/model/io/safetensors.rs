//! Loading Hugging Face checkpoints into our modules: `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), mapped by parameter path.
//!
//! Our parameter paths follow the HF state dict, with three documented differences that the map
//! below undoes: Rust-legal names (`self_attn` for BERT's `self`, `layer_norm` for `LayerNorm`),
//! BERT checkpoints saved with or without the `bert.` prefix, and burn's `[in, out]` linear
//! weights (every 2-D weight except embeddings is transposed). A tensor the model needs but the
//! checkpoint lacks is an error naming it — except a task head, which starts from random weights
//! as in `from_pretrained`, and is reported.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};
use safetensors::Dtype;
use safetensors::tensor::TensorInfo;

use crate::error::{Error, Result};
use crate::model::precision::Storage;

/// One checkpoint tensor: its shape, and its values as f32 when they are asked for (read from
/// the file, or dequantized, only then: a checkpoint is never in memory whole).
pub struct Stored {
    pub shape: Vec<usize>,
    read: Box<dyn FnOnce() -> Result<Vec<f32>>>,
}

impl Stored {
    /// A tensor whose values are read by `read` when asked for.
    pub fn lazy(shape: Vec<usize>, read: impl FnOnce() -> Result<Vec<f32>> + 'static) -> Self {
        Self {
            shape,
            read: Box::new(read),
        }
    }

    /// Its values (reading them now).
    pub fn read(self) -> Result<Vec<f32>> {
        (self.read)()
    }
}

/// A checkpoint's tensors by name, read one at a time as they are placed.
pub struct Checkpoint {
    pub tensors: HashMap<String, Stored>,
    /// Non-float tensors (buffers such as position ids), not loadable as parameters.
    pub skipped: Vec<String>,
    pub source: PathBuf,
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let words16 = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => words16()
            .map(|w| half::f16::from_bits(w).to_f32())
            .collect(),
        Dtype::BF16 => words16()
            .map(|w| half::bf16::from_bits(w).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}

impl Checkpoint {
    /// Read `model.safetensors`, or every shard named by `model.safetensors.index.json`, in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        // (Through fsutil: in the browser the page registers the visitor's directory.)
        let files: Vec<PathBuf> = if crate::fsutil::exists(&single) {
            vec![single]
        } else if crate::fsutil::exists(&index) {
            let text = crate::fsutil::read(&index)
                .map_err(|e| Error::input(format!("{}: {e}", index.display())))?;
            let value: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| Error::input(format!("{}: not valid JSON: {e}", index.display())))?;
            let map = value["weight_map"]
                .as_object()
                .ok_or_else(|| Error::input(format!("{}: no \"weight_map\"", index.display())))?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(Error::input(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        let mut tensors = HashMap::new();
        let mut skipped = Vec::new();
        for file in &files {
            read_safetensors(file, &mut tensors, &mut skipped)?;
        }
        Ok(Self {
            tensors,
            skipped,
            source: dir.to_path_buf(),
        })
    }

    /// Read one safetensors file (e.g. a PEFT `adapter_model.safetensors`).
    pub fn from_file(file: &Path) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut skipped = Vec::new();
        read_safetensors(file, &mut tensors, &mut skipped)?;
        Ok(Self {
            tensors,
            skipped,
            source: file.to_path_buf(),
        })
    }
}

/// Index the tensors of one safetensors file into `tensors`, each read (and converted to f32)
/// only when it is placed: loading costs the model and one tensor, never the file's f32 copy.
/// Integer and bool tensors are buffers (e.g. BERT's position_ids), never parameters: their names
/// go to `skipped`, reported as unused.
fn read_safetensors(
    file: &Path,
    tensors: &mut HashMap<String, Stored>,
    skipped: &mut Vec<String>,
) -> Result<()> {
    let unreadable =
        |e: std::io::Error| Error::input(format!("{}: cannot read: {e}", file.display()));
    let invalid =
        |why: String| Error::input(format!("{}: not a safetensors file: {why}", file.display()));
    let (mut reader, size) = crate::fsutil::open(file).map_err(unreadable)?;
    // Layout: u64 header length n, n bytes of JSON, then the data the header's offsets index.
    let mut prefix = [0u8; 8];
    reader
        .read_exact(&mut prefix)
        .map_err(|e| invalid(e.to_string()))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > (100 << 20) || 8 + header_len > size {
        return Err(invalid(format!("header length {header_len}")));
    }
    let mut header = vec![0u8; header_len as usize];
    reader
        .read_exact(&mut header)
        .map_err(|e| invalid(e.to_string()))?;
    let mut entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| invalid(e.to_string()))?;
    entries.remove("__metadata__");
    let data_start = 8 + header_len;
    // In file order, so the reads go forward.
    let mut infos = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        let info: TensorInfo =
            serde_json::from_value(entry).map_err(|e| invalid(format!("{name}: {e}")))?;
        infos.push((name, info));
    }
    infos.sort_by_key(|(_, info)| info.data_offsets.0);
    for (name, info) in infos {
        let (begin, end) = info.data_offsets;
        // A shape whose size overflows is as invalid as one that does not fit the offsets.
        let bytes = info
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|elements| elements.checked_mul(info.dtype.bitsize()))
            .map(|bits| bits.div_ceil(8));
        if end < begin || Some(end - begin) != bytes || data_start + end as u64 > size {
            return Err(invalid(format!(
                "{name}: offsets {begin}..{end} do not fit its shape {:?} or the file",
                info.shape
            )));
        }
        if to_f32(info.dtype, &[]).is_none() {
            skipped.push(name);
            continue;
        }
        let (path, dtype, at) = (file.to_path_buf(), info.dtype, data_start + begin as u64);
        let read = move || -> Result<Vec<f32>> {
            let unreadable =
                |e: std::io::Error| Error::input(format!("{}: cannot read: {e}", path.display()));
            let (mut reader, _) = crate::fsutil::open(&path).map_err(unreadable)?;
            reader.seek(SeekFrom::Start(at)).map_err(unreadable)?;
            let mut raw = vec![0u8; end - begin];
            reader.read_exact(&mut raw).map_err(unreadable)?;
            Ok(to_f32(dtype, &raw).expect("a float dtype, checked above"))
        };
        tensors.insert(name, Stored::lazy(info.shape, read));
    }
    Ok(())
}

/// How our parameter paths are spelled in a checkpoint.
pub trait KeyMap {
    /// Checkpoint names to try for our `path`, in order.
    fn candidates(&self, path: &str) -> Vec<String>;
    /// Whether this 2-D parameter is a linear weight (stored transposed by burn).
    fn is_linear(&self, path: &str) -> bool;
    /// Whether a missing tensor may start from its random init (a fresh task head).
    fn may_be_new(&self, path: &str) -> bool;
}

/// Walks a module, replacing each parameter by its checkpoint tensor.
struct Loader<'a, K: KeyMap> {
    /// What is left of the checkpoint: each tensor is read as it is placed.
    tensors: HashMap<String, Stored>,
    keys: &'a K,
    path: Vec<String>,
    missing: Vec<String>,
    new: Vec<String>,
    mismatched: Vec<String>,
    /// The first tensor that could not be read.
    failed: Option<Error>,
    /// Matrices are stored as this says as they are placed ([`crate::model::precision`]).
    store: Storage,
}

impl<K: KeyMap> ModuleMapper for Loader<'_, K> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let Some((name, entry)) = self
            .keys
            .candidates(&path)
            .into_iter()
            .find_map(|k| self.tensors.remove(&k).map(|t| (k, t)))
        else {
            if self.keys.may_be_new(&path) {
                self.new.push(path);
            } else {
                self.missing.push(path);
            }
            return param;
        };
        let shape = entry.shape.clone();
        let expected: Vec<usize> = param.lazy_shape().iter().copied().collect();
        let transpose = D == 2 && self.keys.is_linear(&path);
        let stored: Vec<usize> = if transpose {
            vec![shape[1.min(shape.len() - 1)], shape[0]]
        } else {
            shape.clone()
        };
        if shape.len() != D || stored != expected {
            self.mismatched.push(format!(
                "{name}: checkpoint {shape:?}, model {expected:?} (as {path})"
            ));
            return param;
        }
        if self.failed.is_some() {
            return param;
        }
        let data = match entry.read() {
            Ok(data) => data,
            Err(e) => {
                self.failed = Some(e);
                return param;
            }
        };
        let device = param.lazy_device();
        // Transposed on the host into a contiguous tensor: `Tensor::transpose` would leave a
        // strided view in the parameter, which the CPU backend copies whole at every use.
        let (data, shape) = if transpose {
            (transpose_2d(&data, shape[0], shape[1]), stored)
        } else {
            (data, shape)
        };
        let tensor = Tensor::<D>::from_data(TensorData::new(data, shape), &device);
        let tensor = self.store.store(&path, tensor);
        let require_grad = param.is_require_grad();
        Param::initialized(param.id, tensor.set_require_grad(require_grad))
    }
}

/// `[rows, cols]` row-major data as `[cols, rows]` row-major.
fn transpose_2d(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    // In tiles, so both sides stay in cache.
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

/// What loading did besides succeeding.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Parameters left at their random init (task heads).
    pub newly_initialized: Vec<String>,
    /// Checkpoint tensors the model has no place for (e.g. a pretraining head).
    pub unused: Vec<String>,
}

/// Load `checkpoint` into `module`. Missing or misshapen tensors are one error naming them.
pub fn load<M: Module, K: KeyMap>(
    module: M,
    checkpoint: Checkpoint,
    keys: &K,
) -> Result<(M, LoadReport)> {
    load_stored(module, checkpoint, keys, Storage::default())
}

/// [`load`], every matrix stored as `store` says as it is placed (the default: f32).
pub fn load_stored<M: Module, K: KeyMap>(
    module: M,
    checkpoint: Checkpoint,
    keys: &K,
    store: Storage,
) -> Result<(M, LoadReport)> {
    let Checkpoint {
        tensors,
        skipped,
        source,
    } = checkpoint;
    let mut loader = Loader {
        tensors,
        keys,
        path: Vec::new(),
        missing: Vec::new(),
        new: Vec::new(),
        mismatched: Vec::new(),
        failed: None,
        store,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.failed.take() {
        return Err(e);
    }
    let source = source.display();
    if !loader.mismatched.is_empty() {
        return Err(Error::input(format!(
            "{source}: tensor shapes do not fit the config: {}",
            loader.mismatched.join("; ")
        )));
    }
    if !loader.missing.is_empty() {
        let shown: Vec<&str> = loader.missing.iter().take(8).map(String::as_str).collect();
        return Err(Error::input(format!(
            "{source}: the checkpoint lacks {} tensor(s) the model needs: {}{}",
            loader.missing.len(),
            shown.join(", "),
            if loader.missing.len() > 8 {
                ", …"
            } else {
                ""
            }
        )));
    }
    let mut unused: Vec<String> = loader.tensors.into_keys().chain(skipped).collect();
    unused.sort();
    Ok((
        module,
        LoadReport {
            newly_initialized: loader.new,
            unused,
        },
    ))
}

/// BERT: `bert.` prefix optional, `self` / `LayerNorm` (or `gamma`/`beta`) spellings.
pub struct BertKeys;

impl KeyMap for BertKeys {
    fn candidates(&self, path: &str) -> Vec<String> {
        let hf = path
            .replace(".self_attn.", ".self.")
            .replace("layer_norm", "LayerNorm");
        let mut out = vec![hf.clone()];
        if let Some(stripped) = hf.strip_prefix("bert.") {
            out.push(stripped.to_string());
        }
        // Old checkpoints name LayerNorm's parameters gamma/beta.
        for name in out.clone() {
            if let Some(base) = name.strip_suffix("LayerNorm.weight") {
                out.push(format!("{base}LayerNorm.gamma"));
            }
            if let Some(base) = name.strip_suffix("LayerNorm.bias") {
                out.push(format!("{base}LayerNorm.beta"));
            }
        }
        out
    }

    fn is_linear(&self, path: &str) -> bool {
        !path.contains("embeddings")
    }

    fn may_be_new(&self, path: &str) -> bool {
        path.starts_with("classifier.") || path.starts_with("bert.pooler.")
    }
}

/// Llama: the HF names as they are.
pub struct LlamaKeys;

impl KeyMap for LlamaKeys {
    fn candidates(&self, path: &str) -> Vec<String> {
        vec![path.to_string()]
    }

    fn is_linear(&self, path: &str) -> bool {
        !path.contains("embed_tokens")
    }

    fn may_be_new(&self, _path: &str) -> bool {
        false
    }
}
