// group_stats, forward pass 2 of 2: one workgroup per group folds the W per-workgroup partials.
//
//   stats[g]     = Σ_w partial_sums[g * W + w]            (row 0: per-group sum of scores)
//   stats[G + g] = f32(Σ_w partial_counts[g * W + w])     (row 1: per-group count)
//
// Each thread sums a strided subset in order, then a fixed-shape tree reduction: deterministic.
// Counts stay u32 until the very end, so they are exact up to 2^32 before the f32 conversion.

@group(0) @binding(0) var<storage, read_write> partial_sums: array<f32>;
@group(0) @binding(1) var<storage, read_write> partial_counts: array<u32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
// info = [num_groups, num_workgroups_of_pass_1]
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const WG: u32 = {{ workgroup_size }}u;

var<workgroup> red_sums: array<f32, WG>;
var<workgroup> red_counts: array<u32, WG>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let num_groups = info[0];
    let num_partials = info[1];
    let g = workgroup_id.x;

    var s = 0.0;
    var c = 0u;
    for (var w = t; w < num_partials; w += WG) {
        s += partial_sums[g * num_partials + w];
        c += partial_counts[g * num_partials + w];
    }
    red_sums[t] = s;
    red_counts[t] = c;
    workgroupBarrier();

    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (t < stride) {
            red_sums[t] += red_sums[t + stride];
            red_counts[t] += red_counts[t + stride];
        }
        workgroupBarrier();
    }

    if (t == 0u && g < num_groups) {
        stats[g] = red_sums[0];
        stats[num_groups + g] = f32(red_counts[0]);
    }
}
