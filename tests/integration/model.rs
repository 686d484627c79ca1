//! Properties of the architectures themselves, independent of any checkpoint.

use burn::tensor::{Int, Tensor, TensorData};
use fairtune::model::{self, ArchConfig};

use crate::common::{self, to_vec};

/// Causal: changing a later token leaves every earlier position's logits unchanged.
#[test]
fn llama_is_causal() {
    let device = common::cpu();
    let (ArchConfig::Llama(config), _) = model::resolve("tiny-llama", 264).unwrap() else {
        unreachable!()
    };
    let llama = config.init(&device);
    let ids = |last: i64| {
        Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 50, 90, 130, last], [1, 5]),
            &device,
        )
    };
    let a = llama.forward(ids(20));
    let b = llama.forward(ids(77));
    assert_eq!(
        to_vec(a.clone().narrow(1, 0, 4)),
        to_vec(b.clone().narrow(1, 0, 4))
    );
    assert_ne!(
        to_vec(a.narrow(1, 4, 1)),
        to_vec(b.narrow(1, 4, 1)),
        "the last position sees its own token"
    );
}
