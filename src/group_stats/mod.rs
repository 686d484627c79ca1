//! The group-statistics op: per-group sums and counts of a score vector, and its gradient.
//!
//! `stats = group_stats(scores [N], groups [N], G)` is a `[2, G]` tensor: row 0 holds
//! `Σ_{i: groups[i] = g} scores[i]`, row 1 the count of examples in group g. Group ids outside
//! `[0, G)` — by convention `-1` for "no group" — are skipped. The op is differentiable in
//! `scores`: `∂L/∂scores[i] = ∂L/∂stats[0, groups[i]]`.
//!
//! Two implementations with one contract:
//! - [`wgsl`]: hand-written WGSL compute shaders (`shaders/group_stats*.wgsl`) launched on burn-wgpu
//!   tensors and wired into burn's autodiff as a custom op. Deterministic (no float atomics).
//! - [`reference`]: plain tensor ops (`select_assign` with add), used on every other backend and
//!   held up by the tests as the truth the WGSL must match.
//!
//! The op knows nothing of models or fairness: `objective::fairness` builds F on top of it.

pub mod reference;
#[cfg(feature = "gpu")]
pub mod wgsl;

use burn::tensor::{Device, Int, Tensor};

/// The largest number of groups (or, for equalized odds, label × group cells) the op accepts.
pub const MAX_GROUPS: usize = 16_384;

/// Which implementation runs the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GroupStatsImpl {
    /// WGSL on a wgpu device, the tensor-op reference elsewhere.
    #[default]
    Auto,
    /// The hand-written WGSL kernels; only valid on a wgpu device.
    Wgsl,
    /// The tensor-op reference; valid on every device.
    Reference,
}

impl GroupStatsImpl {
    /// The implementation that actually runs for `device`.
    pub fn resolve(self, device: &Device) -> GroupStatsImpl {
        match self {
            GroupStatsImpl::Auto if is_wgpu_device(device) => GroupStatsImpl::Wgsl,
            GroupStatsImpl::Auto => GroupStatsImpl::Reference,
            other => other,
        }
    }
}

/// Per-group sums and counts, `[2, num_groups]`, on whatever implementation suits the device.
pub fn group_stats(scores: Tensor<1>, groups: Tensor<1, Int>, num_groups: usize) -> Tensor<2> {
    group_stats_with(scores, groups, num_groups, GroupStatsImpl::Auto)
}

/// [`group_stats`] with an explicit implementation choice (tests and benchmarks use this).
///
/// # Panics
/// If `num_groups` is 0 or above [`MAX_GROUPS`], if the shapes differ, or if `Wgsl` is asked
/// for on a device that is not a wgpu device. Callers validate user input before this point.
pub fn group_stats_with(
    scores: Tensor<1>,
    groups: Tensor<1, Int>,
    num_groups: usize,
    implementation: GroupStatsImpl,
) -> Tensor<2> {
    assert!(
        (1..=MAX_GROUPS).contains(&num_groups),
        "group_stats: num_groups must be in 1..={MAX_GROUPS}, got {num_groups}"
    );
    assert_eq!(
        scores.dims(),
        groups.dims(),
        "group_stats: scores and groups must have the same length"
    );
    match implementation.resolve(&scores.device()) {
        #[cfg(feature = "gpu")]
        GroupStatsImpl::Wgsl => wgsl::group_stats(scores, groups, num_groups),
        #[cfg(not(feature = "gpu"))]
        GroupStatsImpl::Wgsl => panic!("group_stats: this build has no wgpu for the WGSL kernels"),
        _ => reference::group_stats(scores, groups, num_groups),
    }
}

/// Whether `device` is a wgpu device (never in a build without wgpu).
pub fn is_wgpu_device(device: &Device) -> bool {
    #[cfg(feature = "gpu")]
    return wgsl::is_wgpu_device(device);
    #[cfg(not(feature = "gpu"))]
    {
        let _ = device;
        false
    }
}
