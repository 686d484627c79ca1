"""The memory table: peak resident memory of LoRA DPO in TRL and in fairtune, for SmolLM2-135M and
for random-init Llama-shaped models of 0.5B and 1.5B parameters (Qwen2.5-0.5B's and -1.5B's
dimensions with Llama's layers; no download), one program after the other. Run it through
bench/trl/memory.sh, which sets everything up first.

The work is the race's (race.py): the LLaMA-Factory demo pairs under --max-length tokens, 2 pairs a
step, β 0.1, sigmoid loss, LoRA r 8, α 16 on q/k/v/o, the reference being the adapters off; --steps
steps (peaks come in the first). TRL runs with gradient checkpointing, in fp32 and with the model
in bf16 (bf16 mixed precision on); fairtune with its frozen base in f32 and f16 (`--base-dtype`;
bf16 takes the same two bytes), f16 with `--gradient-checkpointing`, and that with the decoder's
projections in 8- and 4-bit blocks (`--quantize-base`). Peak RSS is each process's own (the
kernel's accounting of the finished child): weights, activations, and for fairtune also the
checkpoint and export it writes at the end. fairtune's own plan (the `memory:` line it prints
before it loads the model) is kept beside it.

The random-init models: TRL builds them from their config (`--random-init`); fairtune reads the
same architecture's random weights from a safetensors directory that `fairtune export` writes once
from the config, as a user's run reads a downloaded model (a LoRA run on a model from a file
checkpoints its adapters alone; on a model drawn at random it records the whole base).
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from race import HERE, cpu_pressure_total, prepare, run

SIZES = {
    # Qwen2.5-0.5B / 1.5B dimensions (tied embeddings, 151,936 tokens) with Llama's layers.
    "0.5B": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
             "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2},
    "1.5B": {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
             "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2},
}

TRL_MODES = [("TRL fp32 + gc", "fp32"), ("TRL bf16 + gc", "bf16")]
# bf16 stores what f16 does in the same two bytes: one half-precision column stands for both.
FAIRTUNE_MODES = [("fairtune f32", "f32", False), ("fairtune f16", "f16", False),
                  ("fairtune f16 + gc", "f16", True), ("fairtune q8 + gc", "q8", True),
                  ("fairtune q4 + gc", "q4", True)]


def random_model(work, name, smollm2):
    """A directory with a Llama config of `name`'s size and SmolLM2's tokenizer files."""
    path = work / f"random-{name}"
    if not path.exists():
        path.mkdir(parents=True)
        config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                  "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                  "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "float32",
                  "bos_token_id": 1, "eos_token_id": 2, **SIZES[name]}
        (path / "config.json").write_text(json.dumps(config, indent=1))
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(smollm2 / file, path / file)
    return path


def exported(args, model):
    """`model`'s random weights as a safetensors directory, written once by `fairtune export`."""
    path = model.parent / f"{model.name}-file"
    if not path.exists():
        subprocess.run([args.fairtune, "export", "--model", str(model / "config.json"),
                        "--tokenizer", str(model / "tokenizer.json"), "--out", str(path)],
                       check=True)
    return path


def params(model):
    """Parameters of the model at `model` (from its config; embeddings tied)."""
    c = json.loads((model / "config.json").read_text())
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    d = h // heads
    per_layer = 2 * h * heads * d + 2 * h * kv * d + 3 * h * i + 2 * h
    return c["vocab_size"] * h + layers * per_layer + h


def trl(args, model, data, dtype, random_init, tag):
    out = args.work / f"mem-trl-{tag}"
    command = [args.python, str(HERE / "trl_dpo.py"), "--model", str(model), "--data", str(data),
               "--out", str(out), "--mode", "lora", "--steps", str(args.steps), "--lr", "5e-5",
               "--max-length", str(args.max_length), "--threads", str(args.threads),
               "--gradient-checkpointing", "--dtype", dtype]
    if random_init:
        command.append("--random-init")
    env = dict(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    import os
    code, _, rss, wall, _ = run(command, dict(os.environ, **env), args.work / f"mem-trl-{tag}.log")
    shutil.rmtree(out, ignore_errors=True)
    return {"peak_rss_mib": rss, "wall_s": wall, "ok": code == 0}


def fairtune(args, model, data, dtype, checkpointing, random_init, tag):
    out = args.work / f"mem-fairtune-{tag}-{int(time.time())}"
    target = exported(args, model) if random_init else model
    storage = ["--base-dtype", dtype] if dtype in ("f32", "f16") else [
        "--base-dtype", "f16", "--quantize-base", dtype]
    command = [args.fairtune, "train", "--task", "dpo", "--model", str(target), "--train", str(data),
               "--out", str(out), "--backend", "cpu", "--steps", str(args.steps), "--batch-size", "2",
               "--beta", "0.1", "--loss", "sigmoid", "--max-length", str(args.max_length),
               "--truncation-mode", "keep-start", "--data-order", "sequential", "--lr", "5e-5",
               "--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "q,k,v,o", *storage]
    if checkpointing:
        command.append("--gradient-checkpointing")
    import os
    log = args.work / f"mem-fairtune-{tag}.log"
    code, _, rss, wall, _ = run(command, dict(os.environ, RAYON_NUM_THREADS=str(args.threads)), log)
    plan = next((m.group(1) for m in re.finditer(r"about ([0-9.]+ [GM]iB)", log.read_text())), None)
    # A 1.5B run writes gigabytes (the merged export): gone once measured.
    shutil.rmtree(out, ignore_errors=True)
    return {"peak_rss_mib": rss, "wall_s": wall, "ok": code == 0, "plan": plan}


def cell(result):
    if result.get("skipped"):
        return "—"
    if not result["ok"]:
        return "failed"
    return f"{result['peak_rss_mib'] / 1024:.2f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fairtune", required=True)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", default="smollm2,0.5B,1.5B")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["trl", "fairtune"], help="run one side only")
    parser.add_argument("--fairtune-modes", default="f32,f16,f16-gc,q8-gc,q4-gc")
    parser.add_argument("--trl-modes", default="fp32,bf16",
                        help="TRL's weights: fp32 and/or bf16 (bf16 is ~4× slower than fp32 on a "
                             "CPU without native bf16 matmuls)")
    args = parser.parse_args()
    smollm2, data = prepare(args)

    idle = cpu_pressure_total()
    time.sleep(2)
    if idle is not None and (cpu_pressure_total() - idle) / 2e6 > 0.05:
        print("warning: the CPU is busy before the runs start; memory is unaffected, times are not",
              file=sys.stderr)
    rows, results = [], {}
    for size in args.sizes.split(","):
        random_init = size != "smollm2"
        model = random_model(args.work, size, smollm2) if random_init else smollm2
        row = {}
        for name, dtype in TRL_MODES:
            if dtype not in args.trl_modes.split(",") or args.only == "fairtune":
                row[name] = {"ok": False, "skipped": True}
                continue
            print(f"{size}: {name} ...", file=sys.stderr)
            row[name] = trl(args, model, data, dtype, random_init, f"{size}-{dtype}")
        for name, dtype, checkpointing in FAIRTUNE_MODES:
            key = f"{dtype}{'-gc' if checkpointing else ''}"
            if args.only == "trl" or key not in args.fairtune_modes.split(","):
                row[name] = {"ok": False, "skipped": True}
                continue
            print(f"{size}: {name} ...", file=sys.stderr)
            tag = f"{size}-{dtype}{'-gc' if checkpointing else ''}"
            row[name] = fairtune(args, model, data, dtype, checkpointing, random_init, tag)
        results[size] = row
        best_trl = min((r["peak_rss_mib"] for n, r in row.items() if n.startswith("TRL") and r["ok"]),
                       default=None)
        best_ours = min((r["peak_rss_mib"] for n, r in row.items() if n.startswith("fairtune") and r["ok"]),
                        default=None)
        ratio = f"{best_ours / best_trl:.2f}" if best_trl and best_ours else "n/a"
        label = "SmolLM2-135M" if size == "smollm2" else f"Llama-shaped {size} (random)"
        rows.append(f"| {label} | {params(model) / 1e9:.2f}B | "
                    + " | ".join(cell(row[n]) for n, _ in TRL_MODES) + " | "
                    + " | ".join(cell(row[n]) for n, _, _ in FAIRTUNE_MODES) + f" | {ratio} |")
        (args.work / f"memory-{args.only or 'both'}.json").write_text(json.dumps(results, indent=1))
    print(f"Peak RSS of LoRA DPO (r 8 on q/k/v/o), {args.steps} steps of 2 demo pairs ≤ {args.max_length} "
          f"tokens, CPU, {args.threads} threads; fairtune's peak includes the checkpoint and export at the end")
    print("| model | parameters | " + " | ".join(n for n, _ in TRL_MODES) + " | "
          + " | ".join(n for n, _, _ in FAIRTUNE_MODES) + " | best fairtune / best TRL |")
    print("|---|---:|" + "---:|" * (len(TRL_MODES) + len(FAIRTUNE_MODES) + 1))
    print("\n".join(rows))
    details = args.work / f"memory-{args.only or 'both'}.json"
    print(f"(details, with fairtune's own plan for each run: {details})")


if __name__ == "__main__":
    main()
