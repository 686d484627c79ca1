//! Which examples a training step sees, as a pure function of (seed, step).
//!
//! Because the order depends on nothing else, a resumed run sees exactly the batches the
//! uninterrupted run would have seen: no sampler state needs to be checkpointed.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// The order in which training walks its examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataOrder {
    /// A fresh permutation every epoch (from the seed).
    #[default]
    Shuffled,
    /// File order, every epoch (transformers' `train_sampling_strategy="sequential"`).
    Sequential,
}

/// An endless stream of epochs, each a fresh permutation of `0..len`; step `s` takes items
/// `[s·batch, (s+1)·batch)` of that stream (batches may straddle an epoch boundary).
#[derive(Debug, Clone)]
pub struct EpochSampler {
    len: usize,
    seed: u64,
    order: DataOrder,
    cached_epoch: Option<(usize, Vec<usize>)>,
}

impl EpochSampler {
    pub fn new(len: usize, seed: u64) -> Self {
        assert!(len > 0, "EpochSampler over an empty set");
        Self {
            len,
            seed,
            order: DataOrder::Shuffled,
            cached_epoch: None,
        }
    }

    pub fn with_order(mut self, order: DataOrder) -> Self {
        self.order = order;
        self.cached_epoch = None;
        self
    }

    fn permutation(&mut self, epoch: usize) -> &[usize] {
        if self.cached_epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut order: Vec<usize> = (0..self.len).collect();
            let mix = self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if self.order == DataOrder::Shuffled {
                order.shuffle(&mut StdRng::seed_from_u64(mix));
            }
            self.cached_epoch = Some((epoch, order));
        }
        &self.cached_epoch.as_ref().expect("just cached").1
    }

    /// Items `[start, start + count)` of the endless stream.
    pub fn take(&mut self, start: usize, count: usize) -> Vec<usize> {
        let len = self.len;
        (start..start + count)
            .map(|k| self.permutation(k / len)[k % len])
            .collect()
    }

    /// The examples of training step `step` (0-based) for batches of `batch_size`.
    pub fn batch(&mut self, step: usize, batch_size: usize) -> Vec<usize> {
        self.take(step * batch_size, batch_size)
    }
}

/// The most tokens a batch of `batch` consecutive items of an [`EpochSampler`]'s stream can hold,
/// where item i holds `lengths[i]`: whatever the permutations, a batch is the end of one epoch,
/// whole epochs (a batch larger than the set repeats items), and the start of the next, so at
/// worst the longest items of the two ends plus the whole epochs between.
pub fn most_tokens_in_a_batch(mut lengths: Vec<usize>, batch: usize) -> usize {
    let n = lengths.len();
    if n == 0 {
        return 0;
    }
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    let total: usize = lengths.iter().sum();
    // longest[k]: the k longest together.
    let longest: Vec<usize> = std::iter::once(0)
        .chain(lengths.iter().scan(0, |sum, &l| {
            *sum += l;
            Some(*sum)
        }))
        .collect();
    (0..n.min(batch + 1))
        .map(|end| {
            let rest = batch - end;
            rest / n * total + longest[end] + longest[rest % n]
        })
        .max()
        .unwrap_or(0)
}

/// Group-balanced batches for a separate fairness set (as MinDiff draws them): every step takes
/// `per_group` examples from each group's own endless shuffled stream, so every group is present
/// in every batch and small groups are not drowned out.
#[derive(Debug, Clone)]
pub struct BalancedSampler {
    members: Vec<Vec<usize>>,
    samplers: Vec<EpochSampler>,
    per_group: usize,
}

impl BalancedSampler {
    /// `groups[i]` is example i's group id; `batch_size` is split evenly (rounded up) over groups.
    ///
    /// Every group's sampler shares `seed`, so groups of equal size are drawn at the same
    /// positions: a counterfactual set (the same template sentences in every group, in the same
    /// order) gives matched batches, and F then measures what the identity term changes rather
    /// than which sentences happened to be drawn for each group.
    pub fn new(groups: &[usize], num_groups: usize, batch_size: usize, seed: u64) -> Self {
        let mut members = vec![Vec::new(); num_groups];
        for (index, &group) in groups.iter().enumerate() {
            members[group].push(index);
        }
        members.retain(|m| !m.is_empty());
        let samplers = members
            .iter()
            .map(|m| EpochSampler::new(m.len(), seed))
            .collect();
        let per_group = batch_size.div_ceil(members.len().max(1)).max(1);
        Self {
            members,
            samplers,
            per_group,
        }
    }

    /// The most tokens one of this sampler's batches can hold, where example i holds
    /// `lengths[i]`: each group's own stream at its worst ([`most_tokens_in_a_batch`]).
    pub fn most_tokens(&self, lengths: &[usize]) -> usize {
        self.members
            .iter()
            .map(|m| {
                most_tokens_in_a_batch(m.iter().map(|&i| lengths[i]).collect(), self.per_group)
            })
            .sum()
    }

    pub fn batch(&mut self, step: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.per_group * self.members.len());
        for (members, sampler) in self.members.iter().zip(&mut self.samplers) {
            out.extend(
                sampler
                    .batch(step, self.per_group)
                    .into_iter()
                    .map(|i| members[i]),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_batch_holds_more_tokens_than_the_bound() {
        let lengths = vec![90, 12, 40, 7, 55, 31, 64];
        // Across an epoch boundary the longest of each end (90 twice); a batch larger than the
        // set, the 4 longest ending one epoch and the 5 longest starting the next; whole epochs
        // between the ends of a larger one still.
        assert_eq!(most_tokens_in_a_batch(lengths.clone(), 1), 90);
        assert_eq!(most_tokens_in_a_batch(lengths.clone(), 2), 180);
        assert_eq!(most_tokens_in_a_batch(lengths.clone(), 3), 90 + 90 + 64);
        assert_eq!(most_tokens_in_a_batch(lengths.clone(), 9), 249 + 280);
        assert_eq!(most_tokens_in_a_batch(lengths.clone(), 16), 299 + 249 + 280);
        for batch in 1..20 {
            let bound = most_tokens_in_a_batch(lengths.clone(), batch);
            for seed in 0..20 {
                let mut sampler = EpochSampler::new(lengths.len(), seed);
                for step in 0..12 {
                    let tokens: usize =
                        sampler.batch(step, batch).iter().map(|&i| lengths[i]).sum();
                    assert!(
                        tokens <= bound,
                        "batch {batch} step {step}: {tokens} > {bound}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_balanced_batch_holds_more_tokens_than_its_bound() {
        // A group of one repeats its only (and longest) example in every batch.
        let lengths = [500, 10, 20, 30, 40, 50, 60];
        let groups = [0, 1, 1, 1, 1, 1, 1];
        for batch in [2, 4, 8] {
            let mut sampler = BalancedSampler::new(&groups, 2, batch, 3);
            let bound = sampler.most_tokens(&lengths);
            let per_group = batch / 2;
            assert!(bound >= 500 * per_group, "batch {batch}: {bound}");
            for step in 0..12 {
                let tokens: usize = sampler.batch(step).iter().map(|&i| lengths[i]).sum();
                assert!(
                    tokens <= bound,
                    "batch {batch} step {step}: {tokens} > {bound}"
                );
            }
        }
    }

    #[test]
    fn every_epoch_is_a_permutation_and_order_depends_only_on_seed_and_step() {
        let mut a = EpochSampler::new(10, 7);
        let epoch: Vec<usize> = (0..5).flat_map(|s| a.batch(s, 2)).collect();
        let mut sorted = epoch.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        // A fresh sampler (a resumed run) reproduces step 3 without having seen steps 0..3.
        let mut b = EpochSampler::new(10, 7);
        assert_eq!(b.batch(3, 2), epoch[6..8]);
        let mut c = EpochSampler::new(10, 8);
        assert_ne!(
            (0..5).flat_map(|s| c.batch(s, 2)).collect::<Vec<_>>(),
            epoch
        );
    }

    #[test]
    fn sequential_order_walks_the_file_every_epoch() {
        let mut sampler = EpochSampler::new(5, 7).with_order(DataOrder::Sequential);
        let stream: Vec<usize> = (0..6).flat_map(|s| sampler.batch(s, 2)).collect();
        assert_eq!(stream, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]);
    }

    #[test]
    fn balanced_batches_hold_every_group() {
        let groups = [0, 0, 0, 0, 0, 0, 1, 2, 2];
        let mut sampler = BalancedSampler::new(&groups, 3, 6, 1);
        for step in 0..5 {
            let batch = sampler.batch(step);
            assert_eq!(batch.len(), 6);
            for g in 0..3 {
                assert_eq!(batch.iter().filter(|&&i| groups[i] == g).count(), 2);
            }
        }
    }

    #[test]
    fn equal_groups_are_drawn_at_the_same_positions() {
        // Three groups of four, each row k of a group being template k.
        let groups: Vec<usize> = (0..12).map(|i| i % 3).collect();
        let mut sampler = BalancedSampler::new(&groups, 3, 6, 5);
        for step in 0..4 {
            let batch = sampler.batch(step);
            let template = |g: usize| -> Vec<usize> {
                batch
                    .iter()
                    .filter(|&&i| groups[i] == g)
                    .map(|&i| i / 3)
                    .collect()
            };
            assert_eq!(template(0), template(1));
            assert_eq!(template(1), template(2));
        }
    }
}
