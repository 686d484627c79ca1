// group_stats, forward pass 1 of 2, for few groups (G <= 64): per-workgroup partial sums and
// counts, O(1) work per element.
//
//   partial_sums[g * W + w]   = Σ scores[i]  over i in chunk(w) with groups[i] == g
//   partial_counts[g * W + w] = #{i in chunk(w) : groups[i] == g}
//
// Workgroup w walks a contiguous run of tiles; thread t reads element t of every tile (coalesced)
// and adds it to its own private accumulator for that element's group. The WG private partials of
// each group are then folded by a fixed-shape tree in workgroup memory, one group after another.
// No atomics anywhere, so the result is deterministic. Group ids outside [0, G) are skipped.
// (For G > 64 the private arrays would spill; group_stats_many.wgsl takes over.)

@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> groups: array<i32>;
@group(0) @binding(2) var<storage, read_write> partial_sums: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial_counts: array<u32>;
// info = [n, num_groups, num_workgroups]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;
// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu forbids
// one buffer being read-only and read-write in the same dispatch. Loads from read_write storage
// are not uniform in WGSL's analysis, so the launch parameters reach the barrier-bearing loops
// through workgroupUniformLoad.
var<workgroup> params: array<u32, 3>;

const WG: u32 = {{ workgroup_size }}u;
// A power of two >= G: the size of each thread's private accumulators.
const CAPACITY: u32 = {{ group_capacity }}u;

var<workgroup> red_sums: array<f32, WG>;
var<workgroup> red_counts: array<u32, WG>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    if (t == 0u) {
        for (var p = 0u; p < 3u; p++) {
            params[p] = info[p];
        }
    }
    let uniform_params = workgroupUniformLoad(&params);
    let n = uniform_params[0];
    let num_groups = uniform_params[1];
    let num_workgroups = uniform_params[2];

    let w = workgroup_id.x;
    let tiles = (n + WG - 1u) / WG;
    // Contiguous, balanced tile ranges: the first `tiles % W` workgroups take one extra tile.
    // (No w * tiles product, which could overflow u32 for large launches.)
    let base = tiles / num_workgroups;
    let extra = tiles % num_workgroups;
    let tile_begin = w * base + min(w, extra);
    let tile_end = tile_begin + base + select(0u, 1u, w < extra);

    var acc: array<f32, CAPACITY>;
    var cnt: array<u32, CAPACITY>;
    for (var tile = tile_begin; tile < tile_end; tile++) {
        let i = tile * WG + t;
        if (i < n) {
            let g = groups[i];
            if (g >= 0 && u32(g) < num_groups) {
                acc[u32(g)] += scores[i];
                cnt[u32(g)] += 1u;
            }
        }
    }

    for (var g = 0u; g < num_groups; g++) {
        red_sums[t] = acc[g];
        red_counts[t] = cnt[g];
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
            if (t < stride) {
                red_sums[t] += red_sums[t + stride];
                red_counts[t] += red_counts[t + stride];
            }
            workgroupBarrier();
        }
        if (t == 0u) {
            partial_sums[g * num_workgroups + w] = red_sums[0];
            partial_counts[g * num_workgroups + w] = red_counts[0];
        }
        workgroupBarrier();
    }
}
