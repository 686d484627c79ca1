// group_stats, forward pass 1 of 2, for many groups (G > 64): per-workgroup partial sums and
// counts. (For G <= 64, group_stats_few.wgsl does O(1) work per element instead.)
//
//   partial_sums[g * W + w]   = Σ scores[i]  over i in chunk(w) with groups[i] == g
//   partial_counts[g * W + w] = #{i in chunk(w) : groups[i] == g}
//
// Workgroup w owns a contiguous run of tiles (WG elements each) and reads every element once.
// Inside a workgroup there are no float atomics (WGSL has none) and no atomics at all, so the
// result is deterministic: a tile is staged in workgroup memory, and each thread owns one
// (group lane, tile slice) pair. With G <= WG there are `lanes = G` lanes and `slices = WG / G`
// slices, so a thread scans about G staged elements per tile; with G > WG a thread owns the
// K = ceil(G / WG) groups g ≡ lane (mod WG) and scans the whole tile. The slices of a lane are then
// summed in a fixed order. Group ids outside [0, G) (e.g. -1, "no group") are skipped.

@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> groups: array<i32>;
@group(0) @binding(2) var<storage, read_write> partial_sums: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial_counts: array<u32>;
// info = [n, num_groups, num_workgroups, lanes, slices]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;
// read_write and workgroupUniformLoad: see group_stats_few.wgsl.
var<workgroup> params: array<u32, 5>;

const WG: u32 = {{ workgroup_size }}u;
const K: u32 = {{ groups_per_lane }}u;

var<workgroup> tile_scores: array<f32, WG>;
var<workgroup> tile_groups: array<i32, WG>;
var<workgroup> red_sums: array<f32, WG>;
var<workgroup> red_counts: array<u32, WG>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    if (t == 0u) {
        for (var p = 0u; p < 5u; p++) {
            params[p] = info[p];
        }
    }
    let uniform_params = workgroupUniformLoad(&params);
    let n = uniform_params[0];
    let num_groups = uniform_params[1];
    let num_workgroups = uniform_params[2];
    let lanes = uniform_params[3];
    let slices = uniform_params[4];

    let w = workgroup_id.x;
    let tiles = (n + WG - 1u) / WG;
    // Contiguous, balanced tile ranges: the first `tiles % W` workgroups take one extra tile.
    // (No w * tiles product, which could overflow u32 for large launches.)
    let base = tiles / num_workgroups;
    let extra = tiles % num_workgroups;
    let tile_begin = w * base + min(w, extra);
    let tile_end = tile_begin + base + select(0u, 1u, w < extra);

    let lane = t % lanes;
    let slice = t / lanes;
    let in_slice = slice < slices;
    let slice_len = (WG + slices - 1u) / slices;
    let j_begin = min(slice * slice_len, WG);
    let j_end = min(j_begin + slice_len, WG);

    var acc: array<f32, K>;
    var cnt: array<u32, K>;

    for (var tile = tile_begin; tile < tile_end; tile++) {
        let i = tile * WG + t;
        if (i < n) {
            tile_scores[t] = scores[i];
            tile_groups[t] = groups[i];
        } else {
            tile_scores[t] = 0.0;
            tile_groups[t] = -1;
        }
        workgroupBarrier();
        if (in_slice) {
            for (var j = j_begin; j < j_end; j++) {
                let g = tile_groups[j];
                if (g >= 0 && u32(g) < num_groups && u32(g) % lanes == lane) {
                    let k = u32(g) / lanes;
                    acc[k] += tile_scores[j];
                    cnt[k] += 1u;
                }
            }
        }
        workgroupBarrier();
    }

    // Sum the slices of each lane in a fixed order and write this workgroup's partials.
    for (var k = 0u; k < K; k++) {
        red_sums[t] = acc[k];
        red_counts[t] = cnt[k];
        workgroupBarrier();
        let g = lane + k * lanes;
        if (slice == 0u && g < num_groups) {
            var s = 0.0;
            var c = 0u;
            for (var q = 0u; q < slices; q++) {
                s += red_sums[q * lanes + lane];
                c += red_counts[q * lanes + lane];
            }
            partial_sums[g * num_workgroups + w] = s;
            partial_counts[g * num_workgroups + w] = c;
        }
        workgroupBarrier();
    }
}
