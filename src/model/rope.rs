//! Rotary position embeddings (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary
//! Position Embedding") in Hugging Face's half-split layout, and the frequency scalings
//! transformers 5 applies to them (`modeling_rope_utils.py`): `linear` (Chen et al. 2023,
//! position interpolation), `llama3` (Llama 3.1's band-wise scaling), `dynamic` (NTK-aware) and
//! `longrope` (Ding et al. 2024, "LongRoPE"; Phi-3's 128k models). With a
//! `partial_rotary_factor` only the first dimensions of each head rotate (the rest pass as
//! they are); Gemma 3 has two settings, one per layer type ([`Ropes`]).
//!
//! A config gives them as transformers 5 writes them, one `rope_parameters` object with
//! `rope_theta`, `rope_type` and the type's own keys, or as transformers 4 did, a top-level
//! `rope_theta` and a `rope_scaling` object (`type` or `rope_type`).

use burn::tensor::{Device, Tensor};
use serde_json::Value;

/// How the rotary frequencies are scaled.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, the band between
    /// interpolated (`_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// NTK-aware scaling: transformers grows the base only once a sequence is longer than
    /// `max_position_embeddings`; within it (every sequence fairtune trains or scores: longer
    /// ones are refused) the frequencies are the default ones.
    Dynamic {
        factor: f64,
    },
    /// Each frequency divided by its own divisor: llama.cpp's `rope_freqs` tensor, the form a
    /// GGUF gives Llama 3.1's scaling in (from its factors, baked per dimension).
    Divisors(Vec<f64>),
    /// LongRoPE within the pretraining length (`original_max_position_embeddings`, which
    /// fairtune does not exceed under it): each frequency divided by its short factor, cos and
    /// sin multiplied by `attention_factor` (given, else √(1 + ln s / ln L) for the extension
    /// s = max / original length L, 1 when s ≤ 1).
    LongRope {
        short_factor: Vec<f64>,
        attention_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The base and scaling of a model's rotary embeddings.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeSpec {
    /// The rotary settings of a config: transformers 5's `rope_parameters`, else transformers 4's
    /// top-level `rope_theta` and `rope_scaling`. A scaling fairtune does not implement is named.
    pub fn from_config(
        rope_theta: f64,
        rope_parameters: Option<&Value>,
        rope_scaling: Option<&Value>,
    ) -> Result<Self, String> {
        let params = rope_parameters
            .filter(|v| !v.is_null())
            .or(rope_scaling.filter(|v| !v.is_null()));
        let Some(params) = params else {
            return Ok(Self {
                theta: rope_theta,
                scaling: RopeScaling::None,
            });
        };
        let object = params
            .as_object()
            .ok_or("rope_parameters must be an object")?;
        let theta = match object.get("rope_theta") {
            Some(v) => v.as_f64().ok_or("rope_theta must be a number")?,
            None => rope_theta,
        };
        let kind = object
            .get("rope_type")
            .or_else(|| object.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let number = |key: &str| -> Result<f64, String> {
            object
                .get(key)
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("rope type {kind:?} needs a number {key:?}"))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: number("factor")?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: number("factor")?,
            },
            "longrope" => {
                let short_factor = object
                    .get("short_factor")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                    .ok_or("rope type \"longrope\" needs a list of numbers \"short_factor\"")?;
                let original = number("original_max_position_embeddings")?;
                let factor = match object.get("factor").and_then(Value::as_f64) {
                    Some(factor) => factor,
                    None => number("max_position_embeddings")? / original,
                };
                let attention_factor = match object.get("attention_factor").and_then(Value::as_f64)
                {
                    Some(given) => given,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / original.ln()).sqrt(),
                };
                RopeScaling::LongRope {
                    short_factor,
                    attention_factor,
                    original_max_position_embeddings: original as usize,
                }
            }
            "llama3" => RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            },
            other => {
                return Err(format!(
                    "rope type {other:?} is not supported (supported: default, linear, \
                     dynamic, llama3, longrope)"
                ));
            }
        };
        let spec = Self { theta, scaling };
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.theta) {
            return Err("rope_theta must be positive".into());
        }
        match &self.scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::LongRope {
                short_factor,
                attention_factor,
                original_max_position_embeddings,
            } => {
                if short_factor.iter().all(|&f| positive(f))
                    && positive(*attention_factor)
                    && *original_max_position_embeddings > 0
                {
                    Ok(())
                } else {
                    Err(
                        "longrope needs positive short factors, attention factor and \
                         original_max_position_embeddings"
                            .into(),
                    )
                }
            }
            RopeScaling::Divisors(divisors) => {
                if divisors.iter().all(|&d| d.is_finite() && d > 0.0) {
                    Ok(())
                } else {
                    Err("rope_freqs divisors must be positive numbers".into())
                }
            }
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
                if positive(*factor) {
                    Ok(())
                } else {
                    Err("the rope scaling factor must be positive".into())
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let all = [
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings,
                ];
                if all.iter().all(|&x| positive(x)) && high_freq_factor > low_freq_factor {
                    Ok(())
                } else {
                    Err("llama3 rope scaling needs positive factors with \
                         high_freq_factor > low_freq_factor"
                        .into())
                }
            }
        }
    }

    /// What cos and sin are multiplied by (LongRoPE's attention factor; else 1).
    pub fn attention_factor(&self) -> f64 {
        match &self.scaling {
            RopeScaling::LongRope {
                attention_factor, ..
            } => *attention_factor,
            _ => 1.0,
        }
    }

    /// The longest sequence the scaling serves as fairtune computes it (LongRoPE: its
    /// pretraining length, beyond which transformers switches to the long factors).
    pub fn max_positions(&self) -> Option<usize> {
        match &self.scaling {
            RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => Some(*original_max_position_embeddings),
            _ => None,
        }
    }

    /// The inverse frequencies θ^(−2i/d) of the `head_dim / 2` rotated pairs, scaled
    /// (`head_dim`: the rotated dimensions).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        match &self.scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => base,
            RopeScaling::Divisors(divisors) => {
                base.iter().zip(divisors).map(|(f, d)| f / d).collect()
            }
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::LongRope { short_factor, .. } => {
                base.iter().zip(short_factor).map(|(f, s)| f / s).collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: original,
            } => base
                .iter()
                .map(|&inv| {
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    let (low_wavelen, high_wavelen) =
                        (original / low_freq_factor, original / high_freq_factor);
                    if wavelen > low_wavelen {
                        inv / factor
                    } else if wavelen < high_wavelen {
                        inv
                    } else {
                        let smooth = (original / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * inv / factor + smooth * inv
                    }
                })
                .collect(),
        }
    }
}

/// Divisors as transformers' `llama3` rope parameters, when they are some: the factor is the
/// largest divisor, and the band between the kept and the divided frequencies fixes the two
/// wavelength bounds (only their ratios to `original_max_position_embeddings` matter, which is
/// set to Llama 3.1's 8192). `None` when the divisors follow no llama3 scaling (checked by
/// recomputing them from the parameters found) or leave its bounds undetermined.
pub fn divisors_as_llama3(theta: f64, head_dim: usize, divisors: &[f64]) -> Option<Value> {
    let factor = divisors.iter().copied().fold(1.0, f64::max);
    let wavelength =
        |i: usize| 2.0 * std::f64::consts::PI * theta.powf((2 * i) as f64 / head_dim as f64);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
    let medium: Vec<(f64, f64)> = divisors
        .iter()
        .enumerate()
        .filter(|(_, d)| !close(**d, 1.0) && !close(**d, factor))
        .map(|(i, &d)| {
            let smooth = (1.0 / d - 1.0 / factor) / (1.0 - 1.0 / factor);
            (1.0 / wavelength(i), smooth)
        })
        .collect();
    let (&(x0, y0), &(x1, y1)) = (medium.first()?, medium.last()?);
    if factor <= 1.0 || (x1 - x0).abs() < f64::EPSILON {
        return None;
    }
    // smooth = a·(1/wavelength) + b, with 1/low_wavelength = −b/a, 1/high_wavelength = (1 − b)/a.
    let a = (y1 - y0) / (x1 - x0);
    let b = y0 - a * x0;
    let original = 8192.0;
    let (low_freq_factor, high_freq_factor) = (original * -b / a, original * (1.0 - b) / a);
    let spec = RopeSpec {
        theta,
        scaling: RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original,
        },
    };
    spec.validate().ok()?;
    let plain = RopeSpec {
        theta,
        scaling: RopeScaling::None,
    };
    let recomputed: Vec<f64> = plain
        .inv_freq(head_dim)
        .iter()
        .zip(spec.inv_freq(head_dim))
        .map(|(base, scaled)| base / scaled)
        .collect();
    if !recomputed.iter().zip(divisors).all(|(r, d)| close(*r, *d)) {
        return None;
    }
    Some(serde_json::json!({
        "rope_type": "llama3", "rope_theta": theta, "factor": factor,
        "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
        "original_max_position_embeddings": original,
    }))
}

/// What a forward's rotations are computed from: the inverse frequencies of the rotated pairs
/// and the factor on cos and sin.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Frequencies {
    pub inv_freq: Vec<f64>,
    pub attention_factor: f64,
}

impl Frequencies {
    pub(super) fn of(spec: &RopeSpec, rotary_dim: usize) -> Self {
        Self {
            inv_freq: spec.inv_freq(rotary_dim),
            attention_factor: spec.attention_factor(),
        }
    }
}

/// The rotations of a forward's layers: one table, or Gemma 3's two (full and sliding layers).
pub(super) struct Ropes {
    global: Rope,
    local: Option<Rope>,
}

impl Ropes {
    /// The rotations at `positions` (see [`Rope::at`]) of each frequency set.
    pub(super) fn at(
        positions: &[usize],
        batch: usize,
        global: &Frequencies,
        local: Option<&Frequencies>,
        device: &Device,
    ) -> Self {
        Self {
            global: Rope::at(positions, batch, global, device),
            local: local.map(|f| Rope::at(positions, batch, f, device)),
        }
    }

    /// The table of a layer with local (sliding, Gemma 3) or global rotations.
    pub(super) fn of(&self, local: bool) -> &Rope {
        match (&self.local, local) {
            (Some(rope), true) => rope,
            _ => &self.global,
        }
    }
}

/// The rotations of a batch of positions: `x·cos + rotate_half(x)·sin`,
/// `rotate_half([a, b]) = [−b, a]`, over the first `2 · inv_freq.len()` dimensions of each head
/// (all of them unless the rotary factor is partial).
pub(super) struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    /// The rotations of tokens at position ids `positions`, `[batch, 1, seq, rotated]` for
    /// `batch` rows of `positions.len() / batch`, `rotated = 2 · inv_freq.len()`.
    pub(super) fn at(
        positions: &[usize],
        batch: usize,
        frequencies: &Frequencies,
        device: &Device,
    ) -> Self {
        let inv_freq = &frequencies.inv_freq;
        let half = inv_freq.len();
        let head_dim = 2 * half;
        let seq = positions.len() / batch.max(1);
        let mut angles = Vec::with_capacity(positions.len() * head_dim);
        for &position in positions {
            for i in 0..head_dim {
                angles.push((position as f64 * inv_freq[i % half.max(1)]) as f32);
            }
        }
        let angles = Tensor::<1>::from_floats(angles.as_slice(), device).reshape([
            batch.max(1),
            1,
            seq,
            head_dim,
        ]);
        let factor = frequencies.attention_factor;
        if factor == 1.0 {
            return Self {
                cos: angles.clone().cos(),
                sin: angles.sin(),
            };
        }
        Self {
            cos: angles.clone().cos() * factor,
            sin: angles.sin() * factor,
        }
    }

    pub(super) fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, head_dim] = x.dims();
        let rotated = self.cos.dims()[3];
        if rotated < head_dim {
            let rest = x.clone().narrow(3, rotated, head_dim - rotated);
            let turned = self.apply(x.narrow(3, 0, rotated));
            return Tensor::cat(vec![turned, rest], 3);
        }
        let half = head_dim / 2;
        let first = x.clone().narrow(3, 0, half);
        let second = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `_compute_llama3_parameters` for Llama 3.1 8B (θ 500,000, factor 8, low 1,
    /// high 4, original 8,192, head_dim 128): the highest frequencies stay, the lowest are divided
    /// by 8, the band between is interpolated.
    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let config: Value = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0,
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let spec = RopeSpec::from_config(10_000.0, Some(&config), None).unwrap();
        let plain = RopeSpec {
            theta: 500_000.0,
            scaling: RopeScaling::None,
        };
        let (scaled, base) = (spec.inv_freq(128), plain.inv_freq(128));
        assert_eq!(scaled[0], base[0]);
        assert!((scaled[63] - base[63] / 8.0).abs() < 1e-18);
        let mid = (0..64)
            .filter(|&i| scaled[i] < base[i] && scaled[i] > base[i] / 8.0)
            .count();
        assert!(mid > 0, "a band is interpolated");
    }

    #[test]
    fn old_and_new_config_layouts_read_the_same() {
        let old = serde_json::json!({"type": "linear", "factor": 2.0});
        let new = serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6});
        let a = RopeSpec::from_config(1e6, None, Some(&old)).unwrap();
        let b = RopeSpec::from_config(10_000.0, Some(&new), None).unwrap();
        assert_eq!(a, b);
        let yarn = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let error = RopeSpec::from_config(1e4, Some(&yarn), None).unwrap_err();
        assert!(error.contains("\"yarn\" is not supported"), "{error}");
    }
}
