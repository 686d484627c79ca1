//! The tensor-op reference of the group-statistics op: runs on any backend, differentiable
//! through burn's own autodiff, and the truth the WGSL kernels are tested against.

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

/// `[2, G]`: row 0 per-group sums of `scores`, row 1 per-group counts; ids outside `[0, G)` skipped.
pub fn group_stats(scores: Tensor<1>, groups: Tensor<1, Int>, num_groups: usize) -> Tensor<2> {
    let device = scores.device();
    let [n] = scores.dims();
    if n == 0 {
        // Keep the graph connected so a backward pass through an empty batch is still valid.
        let zero = scores.sum().reshape([1]).mul_scalar(0.0);
        return Tensor::zeros([2, num_groups], &device) + zero.reshape([1, 1]);
    }
    let valid = groups
        .clone()
        .greater_equal_elem(0)
        .bool_and(groups.clone().lower_elem(num_groups as i64));
    let valid_f = valid.clone().float();
    // Invalid ids are routed to group 0 with a weight of zero.
    let index = groups.mask_fill(valid.bool_not(), 0);
    let sums = Tensor::<1>::zeros([num_groups], &device).select_assign(
        0,
        index.clone(),
        scores * valid_f.clone(),
        IndexingUpdateOp::Add,
    );
    let counts = Tensor::<1>::zeros([num_groups], &device).select_assign(
        0,
        index,
        valid_f,
        IndexingUpdateOp::Add,
    );
    Tensor::stack(vec![sums, counts.detach()], 0)
}
