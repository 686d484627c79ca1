//! GGUF: the dequantizers against gguf-py's (tests/fixtures/gguf, made by make_quants.py), bad
//! files refused with a message, and SmolLM2-135M-Instruct loaded from its Q4_1 GGUF matching
//! transformers' logits, tokenizer and chat template (tests/fixtures/parity).

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use fairtune::gguf::{Gguf, Value};
use fairtune::model::io::gguf::{GgufLlama, unpermute_rows};
use fairtune::tokenizer::TextTokenizer;
use fairtune::tokenizer::chat::{ChatTemplate, Message};
use serde_json::Value as Json;

use crate::common::{self, to_vec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn dequantizers_match_gguf_py() {
    let gguf = Gguf::open(&fixtures().join("gguf/quants.gguf")).unwrap();
    let expected = common::read_json(&fixtures().join("gguf/quants.json"));
    let expected = expected.as_object().unwrap();
    assert_eq!(gguf.tensors.len(), expected.len());
    for (name, want) in expected {
        let info = gguf
            .tensor(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let (shape, got) = gguf.tensor_f32(info).unwrap();
        let want_shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(want["values"].clone()).unwrap();
        assert_eq!(shape, want_shape, "{name}: shape");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{name}: relative difference {worst}");
        assert!(got.iter().any(|&v| v != 0.0), "{name}: all zeros");
    }
}

#[test]
fn metadata_values_are_read() {
    let gguf = Gguf::open(&fixtures().join("gguf/quants.gguf")).unwrap();
    assert_eq!(gguf.version, 3);
    assert_eq!(gguf.get("test.u32"), Some(&Value::U64(7)));
    assert_eq!(gguf.get("test.i32"), Some(&Value::I64(-3)));
    assert_eq!(gguf.get("test.f32"), Some(&Value::F64(0.25)));
    assert_eq!(gguf.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(gguf.get("test.string"), Some(&Value::Str("héllo".into())));
    assert_eq!(gguf.get("test.u64"), Some(&Value::U64(1 << 40)));
    assert_eq!(gguf.get("test.f64"), Some(&Value::F64(-1.5)));
    let strings: Vec<&str> = gguf
        .get("test.strings")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(strings, ["a", "bc", ""]);
    assert_eq!(gguf.architecture(), Some("llama"));
    let head = Gguf::open_metadata(&fixtures().join("gguf/quants.gguf")).unwrap();
    assert_eq!(head.metadata, gguf.metadata);
    assert_eq!(head.tensors.len(), gguf.tensors.len());
}

/// A minimal GGUF v3: no metadata, one tensor of `ggml_type` with `dims` and `data`.
fn one_tensor_file(ggml_type: u32, dims: &[u64], data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(1u64.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    let name = b"t";
    out.extend((name.len() as u64).to_le_bytes());
    out.extend(name);
    out.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend(d.to_le_bytes());
    }
    out.extend(ggml_type.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.resize(out.len().next_multiple_of(32), 0);
    out.extend(data);
    out
}

#[test]
fn bad_files_are_refused_with_a_reason() {
    let dir = common::tempdir();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "too short"),
        ("magic", b"GGML\x03\0\0\0".to_vec(), "no GGUF magic"),
        (
            "version",
            [b"GGUF".as_slice(), &9u32.to_le_bytes()].concat(),
            "version 9",
        ),
        (
            "q2k",
            one_tensor_file(10, &[256], &[0; 84]),
            "Q2_K, which fairtune does not read",
        ),
        (
            "short",
            one_tensor_file(0, &[16], &[0; 40]),
            "past the end of the file",
        ),
        (
            "blocks",
            one_tensor_file(8, &[40], &[0; 68]),
            "not whole Q8_0 blocks",
        ),
    ];
    let whole = std::fs::read(fixtures().join("gguf/quants.gguf")).unwrap();
    let mut cases = cases;
    cases.push(("truncated", whole[..whole.len() / 3].to_vec(), "truncated"));
    for (name, bytes, reason) in cases {
        let path = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let message = match Gguf::open(&path) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(reason), "{name}: {message}");
        assert!(
            message.contains(&path.display().to_string()),
            "{name}: {message}"
        );
    }
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    // llama.cpp convert: w.reshape(heads, 2, rows/heads/2, width).swapaxes(1, 2).reshape(rows, width)
    let (heads, head_dim, width) = (3, 8, 5);
    let rows = heads * head_dim;
    let original: Vec<f32> = (0..rows * width).map(|v| v as f32).collect();
    let mut permuted = vec![0.0; original.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..head_dim / 2 {
                let src = h * head_dim + j * head_dim / 2 + i;
                let dst = h * head_dim + i * 2 + j;
                permuted[dst * width..(dst + 1) * width]
                    .copy_from_slice(&original[src * width..(src + 1) * width]);
            }
        }
    }
    assert_ne!(permuted, original);
    assert_eq!(
        unpermute_rows(&permuted, &[rows, width], heads).unwrap(),
        original
    );
    assert!(unpermute_rows(&permuted, &[rows, width], 5).is_err());
}

pub fn smollm2() -> Option<(PathBuf, Json)> {
    let dir = common::fetched("smollm2-135m-instruct")?;
    let expected = common::read_json(&fixtures().join("parity/smollm2-135m-instruct.json"));
    Some((dir.join("model.gguf"), expected))
}

/// SmolLM2's Q4_1 GGUF, dequantized and un-permuted, gives transformers' logits.
#[test]
fn smollm2_gguf_matches_transformers() {
    let Some((file, expected)) = smollm2() else {
        return;
    };
    let argmax: Vec<i64> = serde_json::from_value(expected["argmax"].clone()).unwrap();
    let mut devices = vec![("cpu", common::cpu())];
    if let Some(wgpu) = common::wgpu() {
        devices.push(("wgpu", wgpu.device));
    }
    for (name, device) in devices {
        let (model, report) = fairtune::model::load_llama_gguf(&file, &device).unwrap();
        assert!(report.unused.is_empty(), "{:?}", report.unused);
        let (worst, ours) = probe_smollm2(&model, &expected, &device);
        eprintln!("smollm2 GGUF logits on {name}: max abs difference {worst:.2e}");
        assert!(worst <= 1e-3, "{name}: max abs difference {worst}");
        assert_eq!(ours, argmax, "{name}: greedy next tokens");
    }
}

/// `model`'s logits on the SmolLM2 fixture's input: the largest distance from transformers' at
/// the probed vocabulary entries, and the greedy next token at every position.
pub fn probe_smollm2(
    model: &fairtune::model::LlamaForCausalLM,
    expected: &Json,
    device: &burn::tensor::Device,
) -> (f32, Vec<i64>) {
    let ids: Vec<i64> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
    let probe: Vec<usize> = serde_json::from_value(expected["probe_ids"].clone()).unwrap();
    let want: Vec<f32> = serde_json::from_value(expected["probe_logits"].clone()).unwrap();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), device);
    let logits = model.forward(input);
    let vocab = logits.dims()[2];
    let all = to_vec(logits);
    let worst = (0..ids.len())
        .flat_map(|t| probe.iter().map(move |&v| (t, v)))
        .map(|(t, v)| all[t * vocab + v])
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let argmax = all
        .chunks(vocab)
        .map(|row| {
            let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
            best.unwrap().0 as i64
        })
        .collect();
    (worst, argmax)
}

#[test]
fn smollm2_gguf_tokenizer_and_chat_template_match_transformers() {
    let Some((file, expected)) = smollm2() else {
        return;
    };
    // What training uses for the tokenizer: the metadata alone, not the 98 MB of weights.
    let gguf = Gguf::open_metadata(&file).unwrap();
    assert_eq!(
        gguf.llama_config().unwrap(),
        Gguf::open(&file).unwrap().llama_config().unwrap()
    );
    let tokenizer = TextTokenizer::from_gguf(&gguf).unwrap();
    let text = expected["text"].as_str().unwrap();
    let ids: Vec<u32> = tokenizer
        .encode(text)
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let want: Vec<u32> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
    assert_eq!(ids, want);
    // Digits split one by one (the "smollm" pre-tokenizer), special tokens kept whole.
    let digits: Vec<u32> = tokenizer
        .encode("2024")
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(digits.len(), 4);
    let special = tokenizer.encode("<|im_start|>user").unwrap();
    assert_eq!(special[0].id, 1);
    // The BOS transformers names (`<|im_start|>`), which encoding does not add: the file says
    // add_bos_token = false, so the post-processor adds nothing.
    let tokens = tokenizer.special();
    assert_eq!((tokens.bos, tokens.eos, tokens.pad), (Some(1), Some(2), 2));
    assert_eq!(
        tokenizer.encode_ids("Hi", true).unwrap(),
        tokenizer.encode_ids("Hi", false).unwrap()
    );

    let template =
        ChatTemplate::new(gguf.chat_template().unwrap(), "<|im_start|>", "<|im_end|>").unwrap();
    let hi = [Message {
        role: "user".into(),
        content: "Hi!".into(),
    }];
    assert_eq!(
        template.render(&hi, true).unwrap(),
        expected["chat_template_example"].as_str().unwrap()
    );
}

#[test]
fn chat_template_errors_are_reported() {
    assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    let strict = ChatTemplate::new(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok",
        "",
        "",
    )
    .unwrap();
    let system = [Message {
        role: "system".into(),
        content: "x".into(),
    }];
    let message = strict.render(&system, false).unwrap_err().to_string();
    assert!(message.contains("user first"), "{message}");
}

/// SentencePiece tokenizers from GGUF metadata (`tokenizer.ggml.model = llama`), built for each
/// architecture as transformers 5.24 builds them (tests/fixtures/make_spm_gguf.py): Llama's
/// Metaspace, Gemma's space replacement with merges in file order, Phi-3's prepend-and-replace;
/// the merges recovered from the scores, byte fallback for characters the vocabulary lacks,
/// control and user-defined tokens kept whole, BOS added. The ids of every text, and its decoded
/// text (special tokens kept), equal transformers'.
#[test]
fn sentencepiece_gguf_tokenizers_match_transformers() {
    let fixture = common::read_json(&fixtures().join("parity/spm_gguf.json"));
    let files = fixture["files"].as_object().unwrap();
    assert_eq!(files.len(), 3);
    for (file, expected) in files {
        let gguf = Gguf::open(&fixtures().join("gguf").join(file)).unwrap();
        let tokenizer = TextTokenizer::from_gguf(&gguf).unwrap();
        let raw =
            tokenizers::Tokenizer::from_bytes(gguf.tokenizer_json().unwrap().to_string()).unwrap();
        let cases = expected["cases"].as_array().unwrap();
        let mut byte_fallbacks = 0;
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let ids = tokenizer.encode_ids(text, true).unwrap();
            assert_eq!(ids, want, "{file}: ids of {text:?}");
            let decoded = raw.decode(&ids, false).unwrap();
            assert_eq!(
                decoded,
                case["decoded"].as_str().unwrap(),
                "{file}: decode of {text:?}"
            );
            // <0x..> tokens: the byte-fallback ids (the 256 after the three specials and the
            // control and user-defined tokens).
            byte_fallbacks += ids.iter().filter(|&&id| (6..262).contains(&id)).count();
        }
        assert!(byte_fallbacks > 0, "{file}: some text falls back to bytes");
        // A loaded SentencePiece model runs with it: the tiny random model of that file.
        let device = common::cpu();
        let (lm, _) = fairtune::model::load_llama_gguf(&gguf.path, &device).unwrap();
        assert_eq!(lm.vocab_size(), raw.get_vocab_size(false));
    }
}
