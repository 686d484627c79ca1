//! The group-statistics op as hand-written WGSL, launched on burn-wgpu and wired into autodiff.
//!
//! Forward and backward sit side by side, each with its shader:
//! - forward  `shaders/group_stats_few.wgsl` (G ≤ 64) or `shaders/group_stats_many.wgsl` (one
//!   pass over the data → per-workgroup partials), then `shaders/group_stats_reduce.wgsl` (one
//!   workgroup per group folds the partials);
//! - backward `shaders/group_stats_grad.wgsl` (gathers ∂L/∂sum_g back to every example).
//!
//! burn routes the op through its `#[backend_extension]` machinery: `Cube` is the cubecl backend
//! (our kernels run on its wgpu runtime, whose WGSL compiler takes raw WGSL text), `Fusion`
//! registers the op lazily in burn's fusion stream, and `Autodiff` records our backward step.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate};
use burn::backend::{AutodiffBackend, Backend, Dispatch, DispatchDevice, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::cubecl::server::KernelArguments;
use burn::cubecl::{CubeCount, CubeDim};
use burn::tensor::{DType, Device, Int, IntDType, Shape, Tensor};

/// Threads per workgroup for every kernel (WebGPU's default limit is 256).
const WORKGROUP_SIZE: usize = 256;
/// The most workgroups the few-groups pass 1 launches; each walks a contiguous run of tiles.
/// 1024 × 256 threads fill even the largest GPUs. A fixed cap (not a device query) keeps the
/// summation order — and so the result — the same on every device for a given N.
const MAX_PARTIAL_WORKGROUPS: usize = 1024;
/// Each pass-1 workgroup walks at least max(this, G) tiles, so that its fixed cost — G tree
/// reductions of WG partials for the few-groups shader — is spread over many elements. (Measured
/// on llvmpipe, G = 64, N = 1M: one tile per workgroup 1.6 s, 16 tiles 0.43 s, 64 tiles 0.1 s.)
const MIN_TILES_PER_WORKGROUP: usize = 16;
/// Up to this many groups, pass 1 keeps every group's partial sum in each thread's registers.
const FEW_GROUPS: usize = 64;
/// llvmpipe (Mesa's gallivm) silently ends every loop of a shader invocation once that invocation
/// has run 65,535 loop iterations in total (`LP_MAX_TGSI_LOOP_ITERATIONS`, "shared between every
/// loop in a shader") — the cause of the wrong long reductions seen on llvmpipe. Every launch here
/// is planned to stay under half of that per invocation.
const LOOP_BUDGET: usize = 32_768;
/// Bytes of per-workgroup partials one launch may allocate; longer inputs run in chunks.
const PARTIALS_BUDGET: usize = 256 << 20;
/// wgpu's limit on workgroups per dispatch dimension.
const MAX_DISPATCH: usize = 65_535;
/// The most workgroups the backward launches (a grid-stride loop covers the rest; at 2^30
/// elements that is 1,024 iterations per invocation, well inside the loop budget).
const MAX_GRAD_WORKGROUPS: usize = 4096;
/// Elements per launch, so that `tile * WG + t` stays inside u32 in the shaders.
const MAX_ELEMENTS: usize = 1 << 30;

/// True when `device` (with or without autodiff) runs on burn-wgpu, where the WGSL kernels apply.
pub fn is_wgpu_device(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Cube(burn::cubecl::Device::Wgpu(_))
    )
}

/// `[2, G]` per-group sums and counts through the WGSL kernels. `scores` must live on a wgpu device.
pub fn group_stats(scores: Tensor<1>, groups: Tensor<1, Int>, num_groups: usize) -> Tensor<2> {
    group_stats_chunked(scores, groups, num_groups, max_launch_elements(num_groups))
}

/// [`group_stats`] over chunks of at most `chunk` elements, one launch each, summed (public so
/// the tests can exercise chunking at small sizes).
pub fn group_stats_chunked(
    scores: Tensor<1>,
    groups: Tensor<1, Int>,
    num_groups: usize,
    chunk: usize,
) -> Tensor<2> {
    assert!(
        is_wgpu_device(&scores.device()),
        "the WGSL group_stats kernel needs a wgpu device"
    );
    assert!(chunk > 0, "group_stats: empty chunks");
    let [n] = scores.dims();
    let groups = groups.cast(IntDType::I32);
    let launch = |scores: Tensor<1>, groups: Tensor<1, Int>| -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as GroupStatsBackend>::group_stats(
            scores.into_dispatch(),
            groups.into_dispatch(),
            num_groups,
        ))
    };
    if n <= chunk {
        return launch(scores, groups);
    }
    (0..n)
        .step_by(chunk)
        .map(|start| {
            let len = chunk.min(n - start);
            launch(
                scores.clone().narrow(0, start, len),
                groups.clone().narrow(0, start, len),
            )
        })
        .reduce(|total, part| total + part)
        .expect("n > 0")
}

/// The longest input one launch takes for `num_groups` groups.
fn max_launch_elements(num_groups: usize) -> usize {
    if num_groups <= FEW_GROUPS {
        return MAX_ELEMENTS;
    }
    let (_, _, max_tiles) = many_groups_layout(num_groups);
    let workgroups = (PARTIALS_BUDGET / (8 * num_groups)).min(MAX_DISPATCH);
    (workgroups * max_tiles * WORKGROUP_SIZE).min(MAX_ELEMENTS)
}

/// The op as a backend extension. Implemented by hand for the cubecl backend and for autodiff;
/// the Fusion implementation is generated (opaque to fusion, executed in stream order).
#[backend_extension(Autodiff, Cube, Fusion)]
pub trait GroupStatsBackend: Backend {
    /// Forward: `[2, num_groups]` sums and counts. `groups` are I32 ids.
    #[fusion(dtype = scores, shape = Shape::new([2, *num_groups]))]
    fn group_stats(
        scores: FloatTensor<Self>,
        groups: IntTensor<Self>,
        num_groups: usize,
    ) -> FloatTensor<Self>;

    /// Backward: `grad_scores[i] = grad_stats[0, groups[i]]` (0 for ids outside `[0, G)`).
    #[fusion(dtype = grad_stats, shape = groups)]
    fn group_stats_backward(
        grad_stats: FloatTensor<Self>,
        groups: IntTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// One of our shaders, with its compile-time constants filled in.
#[derive(Debug, Clone, Copy)]
enum Shader {
    /// Forward pass 1 for G ≤ 64; `group_capacity` = the next power of two ≥ G.
    PartialsFew { group_capacity: u32 },
    /// Forward pass 1 for G > 64; `groups_per_lane` = K = ceil(G / WG).
    PartialsMany { groups_per_lane: u32 },
    /// Forward pass 2.
    Reduce,
    /// Backward.
    Grad,
}

impl KernelSource for Shader {
    fn source(&self) -> SourceTemplate {
        let template = match self {
            Shader::PartialsFew { group_capacity } => {
                SourceTemplate::new(include_str!("../../shaders/group_stats_few.wgsl"))
                    .register("group_capacity", group_capacity.to_string())
            }
            Shader::PartialsMany { groups_per_lane } => {
                SourceTemplate::new(include_str!("../../shaders/group_stats_many.wgsl"))
                    .register("groups_per_lane", groups_per_lane.to_string())
            }
            Shader::Reduce => {
                SourceTemplate::new(include_str!("../../shaders/group_stats_reduce.wgsl"))
            }
            Shader::Grad => {
                SourceTemplate::new(include_str!("../../shaders/group_stats_grad.wgsl"))
            }
        };
        template.register("workgroup_size", WORKGROUP_SIZE.to_string())
    }

    fn id(&self) -> KernelId {
        let (which, k) = match self {
            Shader::PartialsFew { group_capacity } => (0u32, *group_capacity),
            Shader::PartialsMany { groups_per_lane } => (1, *groups_per_lane),
            Shader::Reduce => (2, 0),
            Shader::Grad => (3, 0),
        };
        KernelId::new::<Self>().info((which, k, WORKGROUP_SIZE as u32))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

fn cube_dim() -> CubeDim {
    CubeDim::new_1d(WORKGROUP_SIZE as u32)
}

fn contiguous_f32(tensor: CubeTensor) -> CubeTensor {
    assert_eq!(
        tensor.dtype,
        DType::F32,
        "the WGSL group_stats kernels take f32 scores"
    );
    burn::backend::wgpu::into_contiguous(tensor)
}

fn contiguous_i32(tensor: CubeTensor) -> CubeTensor {
    let tensor = if tensor.dtype == DType::I32 {
        tensor
    } else {
        <CubeBackend as burn::backend::ops::IntTensorOps<CubeBackend>>::int_cast(
            tensor,
            IntDType::I32,
        )
    };
    burn::backend::wgpu::into_contiguous(tensor)
}

fn info_buffer(tensor: &CubeTensor, values: &[u32]) -> burn::cubecl::server::Handle {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor.client.create_from_slice(&bytes)
}

/// The many-groups shader's thread layout: `lanes` group lanes × `slices` tile slices (each
/// thread scans `WG / slices` staged elements per tile), and the most tiles one workgroup may
/// walk within the loop budget.
fn many_groups_layout(num_groups: usize) -> (usize, usize, usize) {
    let lanes = num_groups.min(WORKGROUP_SIZE);
    let slices = (WORKGROUP_SIZE / lanes).max(1);
    let groups_per_lane = num_groups.div_ceil(lanes);
    let slice_len = WORKGROUP_SIZE.div_ceil(slices);
    // Per invocation: (1 + slice_len) iterations per tile, plus the final per-lane folds.
    let max_tiles = (LOOP_BUDGET - groups_per_lane * (1 + slices) - 16) / (1 + slice_len);
    (lanes, slices, max_tiles)
}

/// How pass 1 runs for `n` elements: the shader, its workgroup count, and the parameters the
/// shader reads from its `info` buffer.
fn plan_pass_one(n: usize, num_groups: usize) -> (Shader, usize, Vec<u32>) {
    let tiles = n.div_ceil(WORKGROUP_SIZE);
    let amortized = tiles.div_ceil(MIN_TILES_PER_WORKGROUP.max(num_groups));
    if num_groups <= FEW_GROUPS {
        // Per invocation: one iteration per tile, plus G tree reductions of 1 + log2(WG) steps.
        let max_tiles = LOOP_BUDGET - 16 * FEW_GROUPS;
        let workgroups = amortized
            .min(MAX_PARTIAL_WORKGROUPS)
            .max(tiles.div_ceil(max_tiles));
        let group_capacity = num_groups.next_power_of_two() as u32;
        let params = vec![n as u32, num_groups as u32, workgroups as u32];
        return (Shader::PartialsFew { group_capacity }, workgroups, params);
    }
    let (lanes, slices, max_tiles) = many_groups_layout(num_groups);
    let workgroups = amortized
        .min(MAX_PARTIAL_WORKGROUPS)
        .max(tiles.div_ceil(max_tiles));
    let groups_per_lane = num_groups.div_ceil(lanes) as u32;
    let params = vec![
        n as u32,
        num_groups as u32,
        workgroups as u32,
        lanes as u32,
        slices as u32,
    ];
    (Shader::PartialsMany { groups_per_lane }, workgroups, params)
}

impl GroupStatsBackend for CubeBackend {
    // Forward: stats[0, g] = Σ_{i: g_i = g} s_i,  stats[1, g] = #{i: g_i = g}.
    fn group_stats(
        scores: FloatTensor<Self>,
        groups: IntTensor<Self>,
        num_groups: usize,
    ) -> FloatTensor<Self> {
        let scores = contiguous_f32(scores);
        let groups = contiguous_i32(groups);
        let n = scores.meta.shape().num_elements();
        let client = scores.client.clone();
        if n == 0 {
            return <Self as burn::backend::ops::FloatTensorOps<Self>>::float_zeros(
                Shape::new([2, num_groups]),
                &scores.device,
                burn::tensor::FloatDType::F32,
            );
        }
        let stats = CubeTensor::new_contiguous(
            client.clone(),
            scores.device.clone(),
            Shape::new([2, num_groups]),
            client.empty(2 * num_groups * size_of::<f32>()),
            DType::F32,
        );

        let (shader, num_workgroups, params) = plan_pass_one(n, num_groups);
        debug_assert!(num_workgroups <= MAX_DISPATCH && n <= MAX_ELEMENTS);
        let partial_sums = client.empty(num_groups * num_workgroups * size_of::<f32>());
        let partial_counts = client.empty(num_groups * num_workgroups * size_of::<u32>());

        let info = info_buffer(&scores, &params);
        client.launch(
            Box::new(SourceKernel::new(shader, cube_dim())),
            CubeCount::Static(num_workgroups as u32, 1, 1),
            KernelArguments::new().with_buffers(vec![
                scores.handle.clone().binding(),
                groups.handle.clone().binding(),
                partial_sums.clone().binding(),
                partial_counts.clone().binding(),
                info.binding(),
            ]),
        );

        let info = info_buffer(&scores, &[num_groups as u32, num_workgroups as u32]);
        client.launch(
            Box::new(SourceKernel::new(Shader::Reduce, cube_dim())),
            CubeCount::Static(num_groups as u32, 1, 1),
            KernelArguments::new().with_buffers(vec![
                partial_sums.binding(),
                partial_counts.binding(),
                stats.handle.clone().binding(),
                info.binding(),
            ]),
        );
        stats
    }

    // Backward: ∂L/∂s_i = ∂L/∂stats[0, g_i]  (the counts row carries no gradient).
    fn group_stats_backward(
        grad_stats: FloatTensor<Self>,
        groups: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        let grad_stats = contiguous_f32(grad_stats);
        let groups = contiguous_i32(groups);
        let n = groups.meta.shape().num_elements();
        let num_groups = grad_stats.meta.shape()[1];
        let client = grad_stats.client.clone();
        let output = CubeTensor::new_contiguous(
            client.clone(),
            grad_stats.device.clone(),
            Shape::new([n]),
            client.empty(n.max(1) * size_of::<f32>()),
            DType::F32,
        );
        if n == 0 {
            return output;
        }
        let num_workgroups = n.div_ceil(WORKGROUP_SIZE).min(MAX_GRAD_WORKGROUPS);
        let info = info_buffer(&grad_stats, &[n as u32, num_groups as u32]);
        client.launch(
            Box::new(SourceKernel::new(Shader::Grad, cube_dim())),
            CubeCount::Static(num_workgroups as u32, 1, 1),
            KernelArguments::new().with_buffers(vec![
                grad_stats.handle.clone().binding(),
                groups.handle.clone().binding(),
                output.handle.clone().binding(),
                info.binding(),
            ]),
        );
        output
    }
}

#[derive(Debug)]
struct GroupStatsBackward;

impl<B: GroupStatsBackend> Backward<B, 1> for GroupStatsBackward {
    /// The group ids: all the backward needs besides the incoming gradient.
    type State = IntTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_scores] = ops.parents;
        let grad_stats = grads.consume::<B>(&ops.node);
        if let Some(node) = node_scores {
            grads.register::<B>(node.id, B::group_stats_backward(grad_stats, ops.state));
        }
    }
}

impl<B: GroupStatsBackend, C: CheckpointStrategy> GroupStatsBackend for Autodiff<B, C> {
    fn group_stats(
        scores: FloatTensor<Self>,
        groups: IntTensor<Self>,
        num_groups: usize,
    ) -> FloatTensor<Self> {
        let (scores, guard) = scores.into_parts();
        match GroupStatsBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let stats = B::group_stats(scores, groups.clone(), num_groups);
                prep.finish(groups, stats)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::group_stats(scores, groups, num_groups)),
        }
    }

    fn group_stats_backward(
        grad_stats: FloatTensor<Self>,
        groups: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        // Only reached when someone differentiates the gradient itself; we do not record a
        // second-order graph, so the result is a constant.
        <Self as AutodiffBackend>::from_inner(B::group_stats_backward(
            grad_stats.into_primitive(),
            groups,
        ))
    }
}
