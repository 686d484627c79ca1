//! Activation checkpointing per decoder layer (Chen et al. 2016, "Training Deep Nets with
//! Sublinear Memory Cost"; transformers' `gradient_checkpointing`): a packed forward keeps only
//! each layer's input, and backward recomputes one layer at a time under autodiff, so the
//! activations of a single layer are alive at once instead of every layer's.
//!
//! burn's own `gradient_checkpointing()` recomputes only element-wise ops (DESIGN.md §4), and its
//! graph internals are not public, so the block-level backward runs here, outside the graph, as
//! backpropagation by hand between layers:
//!
//! 1. the forward runs every layer untracked (no graph, no saved activations) and records each
//!    layer's input; the last layer's output enters the graph as a fresh leaf `top`;
//! 2. `loss.backward()` then reaches `top` (through the final norm, the output projection and the
//!    loss), giving ∂loss/∂top and the gradients of everything above the layers;
//! 3. from the last layer down, the layer is run again from its recorded input, now tracked, and
//!    `Σ y ⊙ ḡ` (ḡ = ∂loss/∂y, a constant) is backpropagated: its gradient is the layer's share of
//!    ∂loss/∂params, and ∂loss/∂x is the ḡ of the layer below; the embeddings last.
//!
//! The forward is the same ops in the same order, so losses are identical; gradients agree with
//! the plain path up to summation order where a parameter's gradient has several sources (tied
//! embeddings, several forwards in one step). LoRA dropout draws its masks from the device's
//! generator, reseeded before each layer in both passes, so the recomputed layer drops what the
//! first pass dropped.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor};

use super::llama::{LlamaForCausalLM, SegmentBatch};
use crate::data::batch::Packing;

/// What a step's checkpointed forwards kept, for [`LayerTape::backward`]. One tape serves every
/// policy forward of a step (DPO pairs, the fairness set), each recorded by
/// [`LlamaForCausalLM::packed_hidden_states_recomputed`].
pub struct LayerTape {
    /// Seeds the dropout masks of each recorded layer (unused without dropout).
    seed: u64,
    forwards: Vec<Recorded>,
}

/// One packed forward: its tokens, its segment layout, every layer's (untracked) input, and the
/// leaf standing for the last layer's output.
struct Recorded {
    ids: Tensor<2, Int>,
    batch: SegmentBatch,
    inputs: Vec<Tensor<3>>,
    top: Tensor<3>,
}

impl LlamaForCausalLM {
    /// [`Self::packed_hidden_states`] with activation checkpointing: the layers run untracked and
    /// `tape` keeps their inputs, to recompute them one at a time in [`LayerTape::backward`],
    /// which must then stand in for `loss.backward()`.
    pub fn packed_hidden_states_recomputed(
        &self,
        packing: &Packing,
        device: &Device,
        tape: &mut LayerTape,
    ) -> Tensor<2> {
        self.packed_with_layers(packing, device, |ids, batch| {
            tape.record(self, ids, batch, device)
        })
    }
}

impl LayerTape {
    /// An empty tape; `seed` decides the dropout masks of the layers it records.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            forwards: Vec::new(),
        }
    }

    /// The dropout seed of layer `layer` of recorded forward `forward`.
    fn layer_seed(&self, forward: usize, layer: usize) -> u64 {
        let index = ((forward as u64) << 32) | layer as u64;
        // SplitMix64's finalizer: nearby indices get unrelated seeds.
        let mut z = self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The layers of a packed forward, untracked, each layer's input kept; returns the leaf that
    /// stands for the last layer's output (its gradient starts [`Self::backward`]'s descent).
    fn record(
        &mut self,
        model: &LlamaForCausalLM,
        ids: Tensor<2, Int>,
        batch: SegmentBatch,
        device: &Device,
    ) -> Tensor<3> {
        let forward = self.forwards.len();
        let dropout = has_dropout(model);
        let embed = model.model.embed_tokens.clone().no_grad();
        let looked_up = super::precision::full(embed.forward(ids.clone()));
        let mut x = model.scale_embeddings(looked_up).detach();
        let mut inputs = Vec::with_capacity(model.model.layers.len());
        for (index, layer) in model.model.layers.iter().enumerate() {
            if dropout {
                device.seed(self.layer_seed(forward, index));
            }
            inputs.push(x.clone());
            x = layer.clone().no_grad().forward_packed(x, &batch).detach();
        }
        let top = x.require_grad();
        self.forwards.push(Recorded {
            ids,
            batch,
            inputs,
            top: top.clone(),
        });
        top
    }

    /// Backward of `loss` through the recorded forwards, one layer recomputed at a time: the
    /// gradients of `model`'s trainable parameters, as `GradientsParams::from_grads(loss.backward(),
    /// model)` gives them without checkpointing.
    pub fn backward(self, model: &LlamaForCausalLM, loss: &Tensor<1>) -> GradientsParams {
        let mut grads = loss.backward();
        let tops: Vec<Option<Tensor<3>>> = self
            .forwards
            .iter()
            .map(|recorded| recorded.top.grad_remove(&mut grads))
            .collect();
        let mut total = GradientsParams::from_grads(grads, model);
        let dropout = has_dropout(model);
        let weight = &model.model.embed_tokens.weight;
        // Frozen embeddings (LoRA) need no ∂loss/∂x below the first layer.
        let embeddings_train = weight.is_require_grad();
        for (forward, (recorded, grad)) in self.forwards.iter().zip(tops).enumerate() {
            // A forward the loss does not depend on (e.g. a fairness term weighted 0) needs none.
            let Some(mut grad) = grad else { continue };
            for (index, layer) in model.model.layers.iter().enumerate().rev() {
                let needs_input = index > 0 || embeddings_train;
                let x = recorded.inputs[index].clone().set_require_grad(needs_input);
                if dropout {
                    x.device().seed(self.layer_seed(forward, index));
                }
                let y = layer.forward_packed(x.clone(), &recorded.batch);
                let mut grads = (y * Tensor::from_inner(grad.clone())).sum().backward();
                if needs_input {
                    grad = x
                        .grad_remove(&mut grads)
                        .expect("a layer's output depends on its input");
                }
                accumulate(&mut total, GradientsParams::from_grads(grads, layer), layer);
            }
            if !embeddings_train {
                continue;
            }
            // The embeddings' gradient: each token's row gets its ∂loss/∂x, added in place into
            // the gradient already there (the tied output projection's), not formed densely.
            let [_, total_tokens, width] = grad.dims();
            let ids = recorded.ids.clone().reshape([total_tokens]);
            // Gemma scales the looked-up rows: its ∂loss/∂row carries the scale too.
            let rows = model.scale_embeddings(grad.reshape([total_tokens, width]));
            let sum = match total.remove::<2>(weight.id) {
                Some(earlier) => earlier,
                None => Tensor::zeros(weight.lazy_shape(), &rows.device()),
            };
            total.register(
                weight.id,
                sum.select_assign(0, ids, rows, IndexingUpdateOp::Add),
            );
        }
        total
    }
}

fn has_dropout(model: &LlamaForCausalLM) -> bool {
    model
        .model
        .layers
        .iter()
        .any(|l| l.self_attn.lora_dropout > 0.0 || l.mlp.lora_dropout > 0.0)
}

/// Adds the gradients of `module`'s parameters in `part` to `total`.
fn accumulate<M: Module>(total: &mut GradientsParams, part: GradientsParams, module: &M) {
    struct Add<'a> {
        total: &'a mut GradientsParams,
        part: GradientsParams,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(grad) = self.part.remove::<D>(param.id) else {
                return;
            };
            let sum = match self.total.remove::<D>(param.id) {
                Some(earlier) => earlier + grad,
                None => grad,
            };
            self.total.register(param.id, sum);
        }
    }
    module.visit(&mut Add { total, part });
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

    use super::LayerTape;
    use crate::data::LmSequence;
    use crate::data::batch::{Packing, pack};
    use crate::model::llama::{LlamaForCausalLM, SegmentBatch};
    use crate::model::lora::{LoraSettings, LoraTarget};
    use crate::model::{self, ArchConfig};

    /// The CPU backend's random generator is one per process: these tests seed it and rely on
    /// the draws that follow, so they take turns.
    fn tiny(device: &Device) -> (LlamaForCausalLM, ArchConfig) {
        let (arch, _) = model::resolve("tiny-llama", 264).expect("tiny-llama");
        let ArchConfig::Llama(config) = &arch else {
            unreachable!()
        };
        device.seed(11);
        (config.init(device), arch)
    }

    /// Two packed forwards: pairs sharing their prompts, and sequences on their own.
    fn packings() -> (Packing, Packing) {
        let sequence = |prompt: &[u32], completion: &[u32]| LmSequence {
            tokens: prompt.iter().chain(completion).copied().collect(),
            completion: (0..prompt.len() + completion.len())
                .map(|i| i >= prompt.len())
                .collect(),
        };
        let tokens =
            |n: u32, k: u32| -> Vec<u32> { (0..n).map(|i| 8 + (i * 37 + k) % 250).collect() };
        let (p1, p2) = (tokens(5, 1), tokens(3, 9));
        let pairs = [
            sequence(&p1, &tokens(7, 3)),
            sequence(&p2, &tokens(4, 5)),
            sequence(&p1, &tokens(4, 11)),
            sequence(&p2, &tokens(6, 2)),
        ];
        let singles = [
            sequence(&tokens(4, 7), &tokens(5, 1)),
            sequence(&p2, &tokens(2, 8)),
        ];
        let refs: Vec<&LmSequence> = pairs.iter().collect();
        let first = pack(&refs, &[vec![0, 2], vec![1, 3]]);
        let refs: Vec<&LmSequence> = singles.iter().collect();
        (first, pack(&refs, &[vec![0], vec![1]]))
    }

    /// A loss of both forwards' hidden states that weighs every element differently.
    fn loss(a: Tensor<2>, b: Tensor<2>, device: &Device) -> Tensor<1> {
        device.seed(3);
        let wa = Tensor::<2>::random(a.dims(), Distribution::Normal(0.0, 1.0), device);
        let wb = Tensor::<2>::random(b.dims(), Distribution::Normal(0.0, 1.0), device);
        (a * wa).sum() + (b.clone() * b * wb).sum() * 0.1
    }

    /// Every gradient of `grads`, parameter by parameter, in `model`'s order.
    fn all_grads(model: &LlamaForCausalLM, grads: &GradientsParams) -> Vec<(String, Vec<f32>)> {
        struct Collect<'a> {
            grads: &'a GradientsParams,
            out: Vec<(String, Vec<f32>)>,
        }
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(grad) = self.grads.get::<D>(param.id) {
                    let values = grad.into_data().try_to_vec::<f32>().expect("f32");
                    self.out.push((param.id.to_string(), values));
                }
            }
        }
        let mut visitor = Collect {
            grads,
            out: Vec::new(),
        };
        model.visit(&mut visitor);
        visitor.out
    }

    fn parameter_count(model: &LlamaForCausalLM) -> usize {
        struct Count(usize);
        impl ModuleVisitor for Count {
            fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
                self.0 += 1;
            }
        }
        let mut count = Count(0);
        model.visit(&mut count);
        count.0
    }

    fn assert_same_grads(got: &[(String, Vec<f32>)], want: &[(String, Vec<f32>)], what: &str) {
        assert_eq!(
            got.len(),
            want.len(),
            "{what}: the same parameters get gradients"
        );
        for ((id, g), (_, w)) in got.iter().zip(want) {
            let scale = w.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let worst = g
                .iter()
                .zip(w)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                worst <= 1e-5 * scale,
                "{what}: parameter {id} off by {worst} (scale {scale})"
            );
        }
    }

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32")
    }

    /// Full fine-tuning, tied embeddings, two forwards into one loss: the recomputed backward
    /// gives the plain backward's gradients for every parameter, and the forward the same loss.
    #[test]
    fn recomputed_layers_give_the_plain_gradients() {
        let _turn = crate::seeded_rng_turn();
        let device = Device::flex().autodiff();
        let (model, _) = tiny(&device);
        let (first, second) = packings();

        let plain = loss(
            model.packed_hidden_states(&first, &device),
            model.packed_hidden_states(&second, &device),
            &device,
        );
        let plain_grads = GradientsParams::from_grads(plain.backward(), &model);

        let mut tape = LayerTape::new(7);
        let a = model.packed_hidden_states_recomputed(&first, &device, &mut tape);
        let b = model.packed_hidden_states_recomputed(&second, &device, &mut tape);
        let recomputed = loss(a, b, &device);
        assert_eq!(
            values(recomputed.clone()),
            values(plain.clone()),
            "the same loss"
        );
        let grads = tape.backward(&model, &recomputed);
        let want = all_grads(&model, &plain_grads);
        assert_eq!(
            want.len(),
            parameter_count(&model),
            "every parameter has a gradient"
        );
        assert_same_grads(&all_grads(&model, &grads), &want, "full");
    }

    /// With LoRA and adapter dropout, the recomputed layers drop what the first pass dropped:
    /// the gradients equal a plain backward through layers seeded the tape's way (and differ
    /// from one seeded otherwise, so the masks matter here).
    #[test]
    fn recomputed_layers_redraw_the_same_dropout_masks() {
        let _turn = crate::seeded_rng_turn();
        let device = Device::flex().autodiff();
        let (base, arch) = tiny(&device);
        let lora = LoraSettings {
            rank: 4,
            alpha: 8.0,
            dropout: 0.3,
            targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
        };
        let model = lora.apply(base, &arch, &[]).expect("adapters");
        // burn's adapters start with B = 0; move them off it so every factor has a gradient.
        let model = model
            .map(&mut Perturb(device.clone()))
            .with_lora_dropout(0.3);
        let (first, _) = packings();

        let mut tape = LayerTape::new(99);
        let hidden = model.packed_hidden_states_recomputed(&first, &device, &mut tape);
        let seeds: Vec<u64> = (0..model.model.layers.len())
            .map(|l| tape.layer_seed(0, l))
            .collect();
        let zeros = Tensor::<2>::zeros(hidden.dims(), &device);
        let recomputed = loss(hidden, zeros.clone(), &device);
        let got = all_grads(&model, &tape.backward(&model, &recomputed));

        let by_hand = |seeds: &[u64]| {
            let h = plain_seeded(&model, &first, &device, seeds);
            let grads = loss(h, zeros.clone(), &device).backward();
            all_grads(&model, &GradientsParams::from_grads(grads, &model))
        };
        assert!(!got.is_empty());
        assert_same_grads(&got, &by_hand(&seeds), "lora + dropout");
        let other: Vec<u64> = seeds.iter().map(|s| s ^ 1).collect();
        let differs = by_hand(&other)
            .iter()
            .zip(&got)
            .any(|((_, a), (_, b))| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-4));
        assert!(differs, "other masks give other gradients");
    }

    /// The plain packed forward, the device reseeded before each layer.
    fn plain_seeded(
        model: &LlamaForCausalLM,
        packing: &Packing,
        device: &Device,
        seeds: &[u64],
    ) -> Tensor<2> {
        let total = packing.tokens.len();
        let ids: Vec<i64> = packing.tokens.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, total]), device);
        let batch = SegmentBatch::of(model, packing, device);
        let mut x = model.embed(ids);
        for (layer, &seed) in model.model.layers.iter().zip(seeds) {
            device.seed(seed);
            x = layer.forward_packed(x, &batch);
        }
        let [_, _, hidden] = x.dims();
        model.model.norm.forward(x).reshape([total, hidden])
    }

    /// Adds small noise to every trainable parameter (keeps it trainable).
    struct Perturb(Device);

    impl burn::module::ModuleMapper for Perturb {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                if !t.is_require_grad() {
                    return t;
                }
                let noise = Tensor::random(t.dims(), Distribution::Normal(0.0, 0.05), &self.0);
                (t.detach() + noise).detach().require_grad()
            })
        }
    }
}
