// group_stats, backward: the per-example gradient.
//
// stats[0, g] = Σ_{i: groups[i] = g} scores[i] and stats[1, g] (the count) does not depend on the
// scores, so   ∂L/∂scores[i] = ∂L/∂stats[0, groups[i]]   (0 for ids outside [0, G)).
// For the demographic-parity penalty F = ½ Σ_g (m_g − m̄)², autodiff through m_g = sum_g / n_g
// hands this kernel ∂F/∂sum_g = (m_g − m̄) / n_g, so it writes exactly DESIGN.md §3's gradient.
// A grid-stride loop keeps the dispatch under the 65,535-workgroup limit for any N.

@group(0) @binding(0) var<storage, read_write> grad_stats: array<f32>;
@group(0) @binding(1) var<storage, read_write> groups: array<i32>;
@group(0) @binding(2) var<storage, read_write> grad_scores: array<f32>;
// info = [n, num_groups]
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const WG: u32 = {{ workgroup_size }}u;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(global_invocation_id) global_id: vec3<u32>,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
) {
    let n = info[0];
    let num_groups = info[1];
    let stride = num_workgroups.x * WG;
    for (var i = global_id.x; i < n; i += stride) {
        let g = groups[i];
        var value = 0.0;
        if (g >= 0 && u32(g) < num_groups) {
            value = grad_stats[u32(g)];
        }
        grad_scores[i] = value;
    }
}
