//! GGUF (llama.cpp's model file): header, metadata, and tensors dequantized to f32 on request.
//! The floor of the house (it imports only the error type): the tokenizer in a file's metadata
//! is read by `tokenizer::gguf`, its Llama weights by `model::io::gguf`.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Supported tensor types:
//! F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K; the dequantizers follow ggml's reference C
//! (`dequantize_row_*`) and are held to gguf-py's by tests/fixtures/gguf.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// ggml tensor types we read: (id, name, elements per block, bytes per block).
const TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (8, "Q8_0", 32, 34),
    (12, "Q4_K", 256, 144),
    (14, "Q6_K", 256, 210),
    (30, "BF16", 1, 2),
];

/// ggml type names by id, for errors about types we do not read.
fn ggml_type_name(id: u32) -> String {
    const NAMES: &[&str] = &[
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES
        .get(id as usize)
        .map_or_else(|| format!("type {id}"), |n| n.to_string())
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest. The row-major (PyTorch) shape is the reverse.
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    /// From the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The row-major shape, as PyTorch and safetensors write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file, its tensor data kept as bytes until asked for.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated: needed {n} bytes at offset {}, the file has {}",
                self.at,
                self.bytes.len()
            ));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn len(&mut self, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        // Every element takes at least one byte: a larger count is a corrupt file, and refusing
        // it here keeps a bad length from allocating gigabytes.
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(format!("truncated: {what} length {n} exceeds the file"));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.len("string")?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn value(&mut self, kind: u32, depth: usize) -> std::result::Result<Value, String> {
        Ok(match kind {
            0 => Value::U64(u64::from(self.array::<1>()?[0])),
            1 => Value::I64(i64::from(i8::from_le_bytes(self.array()?))),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.array()?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.array()?))),
            4 => Value::U64(u64::from(self.u32()?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.array()?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.array()?))),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth < 4 => {
                let item = self.u32()?;
                let n = self.len("array")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        // (Through fsutil: in the browser the page registers the visitor's file under a path.)
        let bytes = crate::fsutil::read(path)
            .map_err(|e| Error::input(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(bytes, path, true)
            .map_err(|e| Error::input(format!("{}: not a usable GGUF file: {e}", path.display())))
    }

    /// Metadata and tensor infos only, reading just the file's head (config, tokenizer and chat
    /// template need no tensor data; a multi-GB model is read once, by [`Gguf::open`]).
    /// Tensor data is not available from the result.
    pub fn open_metadata(path: &Path) -> Result<Self> {
        use std::io::Read;
        let fail = |e: &dyn std::fmt::Display| {
            Error::input(format!("{}: cannot read: {e}", path.display()))
        };
        if crate::fsutil::is_registered(path) {
            let bytes = crate::fsutil::read(path).map_err(|e| fail(&e))?;
            return Self::parse(bytes, path, false).map_err(|e| {
                Error::input(format!("{}: not a usable GGUF file: {e}", path.display()))
            });
        }
        let size = std::fs::metadata(path).map_err(|e| fail(&e))?.len();
        let mut head = Vec::new();
        let mut want: u64 = 16 << 20;
        loop {
            head.clear();
            std::fs::File::open(path)
                .and_then(|f| f.take(want).read_to_end(&mut head))
                .map_err(|e| fail(&e))?;
            match Self::parse(head.clone(), path, false) {
                Ok(gguf) => return Ok(gguf),
                // A header longer than what was read: read more, up to the whole file.
                Err(e) if e.starts_with("truncated") && want < size => {
                    want = want.saturating_mul(4)
                }
                Err(e) => {
                    return Err(Error::input(format!(
                        "{}: not a usable GGUF file: {e}",
                        path.display()
                    )));
                }
            }
        }
    }

    fn parse(bytes: Vec<u8>, path: &Path, check_data: bool) -> std::result::Result<Self, String> {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.take(4).map_err(|_| "too short")? != b"GGUF" {
            return Err("no GGUF magic".into());
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} (supported: 2, 3)"));
        }
        let tensor_count = r.len("tensor count")?;
        let kv_count = r.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r
                .value(kind, 0)
                .map_err(|e| format!("metadata {key:?}: {e}"))?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims > 4 {
                return Err(format!("tensor {name:?} has {n_dims} dimensions"));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64().map(|d| d as usize))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let ggml_type = r.u32()?;
            let offset = r.u64()? as usize;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32) as usize;
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(format!(
                "general.alignment {alignment} is not a power of two"
            ));
        }
        let data_start = r.at.next_multiple_of(alignment);
        let gguf = Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes,
            data_start,
        };
        if check_data {
            for info in &gguf.tensors {
                gguf.raw(info)?;
            }
        }
        Ok(gguf)
    }

    /// The tensor's bytes, checked against its type and the file's size.
    /// Whether `info`'s data can be read (a supported type, inside the file).
    pub fn check_readable(&self, info: &TensorInfo) -> Result<()> {
        self.raw(info)
            .map(|_| ())
            .map_err(|e| Error::input(format!("{}: {e}", self.path.display())))
    }

    fn raw(&self, info: &TensorInfo) -> std::result::Result<&[u8], String> {
        let name = &info.name;
        let Some(&(_, type_name, block, block_bytes)) =
            TYPES.iter().find(|t| t.0 == info.ggml_type)
        else {
            return Err(format!(
                "tensor {name:?} is {}, which fairtune does not read (supported: {})",
                ggml_type_name(info.ggml_type),
                TYPES.iter().map(|t| t.1).collect::<Vec<_>>().join(", ")
            ));
        };
        // Sizes come from the file: checked arithmetic, so a corrupt header is an error, not an
        // overflow.
        let n = info
            .dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor {name:?}: dimensions {:?} overflow", info.dims))?;
        if info.dims.first().is_some_and(|d| d % block != 0) {
            return Err(format!(
                "tensor {name:?}: rows of {} elements are not whole {type_name} blocks of {block}",
                info.dims[0]
            ));
        }
        let past_end = || format!("tensor {name:?} lies past the end of the file");
        let len = (n / block).checked_mul(block_bytes).ok_or_else(past_end)?;
        let start = self
            .data_start
            .checked_add(info.offset)
            .ok_or_else(past_end)?;
        let end = start.checked_add(len).ok_or_else(past_end)?;
        self.bytes.get(start..end).ok_or_else(past_end)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A metadata value that must be there: missing is one error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| {
            Error::input(format!(
                "{}: metadata {key:?} is missing",
                self.path.display()
            ))
        })
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor as f32 in row-major order, with its row-major shape.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<(Vec<usize>, Vec<f32>)> {
        let raw = self
            .raw(info)
            .map_err(|e| Error::input(format!("{}: {e}", self.path.display())))?;
        Ok((
            info.shape(),
            dequantize(info.ggml_type, raw, info.elements()),
        ))
    }
}

fn f16(bytes: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}

/// `n` values of type `ggml_type` from `raw` (type and size checked by [`Gguf::raw`]).
fn dequantize(ggml_type: u32, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ggml_type {
        0 => out.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        1 => out.extend(raw.chunks_exact(2).map(f16)),
        30 => out.extend(
            raw.chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        // Q8_0: f16 scale, 32 × i8.
        8 => {
            for block in raw.chunks_exact(34) {
                let d = f16(block);
                out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        // Q4_0: f16 scale, 16 bytes of nibbles (low nibbles are the first 16 values), offset 8.
        2 => {
            for block in raw.chunks_exact(18) {
                let d = f16(block);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| d * (f32::from(q & 0xF) - 8.0)));
                out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) - 8.0)));
            }
        }
        // Q4_1: f16 scale, f16 min, 16 bytes of nibbles.
        3 => {
            for block in raw.chunks_exact(20) {
                let (d, m) = (f16(block), f16(&block[2..]));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * f32::from(q & 0xF) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
        }
        // Q4_K: super-block of 8 × 32, f16 d and dmin, 6-bit scales and mins packed in 12 bytes.
        12 => {
            for block in raw.chunks_exact(144) {
                let (d, dmin) = (f16(block), f16(&block[2..]));
                let scales = &block[4..16];
                let qs = &block[16..];
                let scale_min = |j: usize| -> (f32, f32) {
                    let (sc, m) = if j < 4 {
                        (scales[j] & 63, scales[j + 4] & 63)
                    } else {
                        (
                            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
                            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                        )
                    };
                    (f32::from(sc), f32::from(m))
                };
                for chunk in 0..4 {
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    let (sc1, m1) = scale_min(2 * chunk);
                    let (sc2, m2) = scale_min(2 * chunk + 1);
                    out.extend(q.iter().map(|&v| d * sc1 * f32::from(v & 0xF) - dmin * m1));
                    out.extend(q.iter().map(|&v| d * sc2 * f32::from(v >> 4) - dmin * m2));
                }
            }
        }
        // Q6_K: super-block of 16 × 16: 4 low bits, 2 high bits, i8 scales, f16 d.
        14 => {
            for block in raw.chunks_exact(210) {
                let d = f16(&block[208..]);
                for half in 0..2 {
                    let ql = &block[half * 64..half * 64 + 64];
                    let qh = &block[128 + half * 32..128 + half * 32 + 32];
                    let sc = &block[192 + half * 8..192 + half * 8 + 8];
                    let mut y = [0.0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, shift: u32| -> f32 {
                            f32::from(((low | (((qh[l] >> shift) & 3) << 4)) as i8) - 32)
                        };
                        let s = |k: usize| f32::from(sc[is + k] as i8);
                        y[l] = d * s(0) * q(ql[l] & 0xF, 0);
                        y[l + 32] = d * s(2) * q(ql[l + 32] & 0xF, 2);
                        y[l + 64] = d * s(4) * q(ql[l] >> 4, 4);
                        y[l + 96] = d * s(6) * q(ql[l + 32] >> 4, 6);
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
        other => unreachable!("type {other} passed the TYPES check"),
    }
    debug_assert_eq!(out.len(), n);
    out
}
