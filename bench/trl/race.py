"""The race: `fairtune train` against TRL's stock DPOTrainer on the same DPO work, one program after
the other, and one table. Run it through bench/trl/race.sh, which sets everything up first.

The work (issue #10): SmolLM2-135M-Instruct as fp32 Hugging Face safetensors (`fairtune export` of
the fetched GGUF; the same directory for both), the LLaMA-Factory `dpo_en_demo.json` pairs whose
chat-templated prompt is shorter than --max-length tokens, in file order, conversational (TRL's
format), max length 256, 2 pairs a step, β 0.1, sigmoid loss, --steps steps of which the first is
warm-up; LoRA r 8, α 16 on q/k/v/o (the reference: adapters off), or full fine-tuning (a frozen
reference copy). A mode with `-gc` (`lora-gc`, `full-gc`) runs both with activation checkpointing
per decoder layer (TRL: `gradient_checkpointing=True`; fairtune: `--gradient-checkpointing`). Tokens are the non-pad tokens fed to the policy, chosen and rejected rows (a prompt
counts twice), as TRL counts them; tokens/s is their sum over the measured steps divided by those
steps' wall time. Peak RSS is each process's own (the kernel's accounting of the finished child).
CPU pressure is Linux PSI's `some` share of the run's wall time: near 0 on an idle machine, high when
other work competes for the cores (or a program starts more threads than there are cores).
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_MEMBER = "llamafactory-0.9.5/data/dpo_en_demo.json"
ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def cpu_pressure_total():
    """Microseconds some task waited for a CPU since boot (PSI), or None without PSI."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return int(line.split("total=")[1])
    except OSError:
        return None
    return None


def run(command, env=None, stdout_path=None):
    """Run `command`, returning (exit code, stdout, peak RSS in MiB, wall s, CPU pressure share)."""
    pressure = cpu_pressure_total()
    started = time.perf_counter()
    with open(stdout_path or os.devnull, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    after = cpu_pressure_total()
    share = None if pressure is None else (after - pressure) / 1e6 / wall
    return os.waitstatus_to_exitcode(status), out, usage.ru_maxrss / 1024, wall, share


def prepare(args):
    """The fp32 checkpoint and the race's pairs (once; reused by later runs)."""
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "smollm2-135m-instruct-hf"
    if not model.exists():
        subprocess.run([args.fairtune, "export", "--model", "smollm2-135m-instruct", "--out", str(model)],
                       check=True)
    data = args.work / f"dpo-demo-chat-under-{args.max_length}.jsonl"
    if not data.exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        archive = args.cache / "downloads/llamafactory-0.9.5.tar.gz"
        with tarfile.open(archive) as tar:
            rows = json.load(tar.extractfile(DEMO_MEMBER))
        kept = []
        for row in rows:
            prompt = [{"role": ROLES[turn["from"]], "content": turn["value"]} for turn in row["conversations"]]
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
            if len(ids) < args.max_length:
                kept.append({"prompt": prompt,
                             "chosen": [{"role": "assistant", "content": row["chosen"]["value"]}],
                             "rejected": [{"role": "assistant", "content": row["rejected"]["value"]}]})
        data.write_text("".join(json.dumps(r) + "\n" for r in kept))
        print(f"{len(kept)} of {len(rows)} demo pairs have a templated prompt under {args.max_length} tokens",
              file=sys.stderr)
    return model, data


def measured(tokens, seconds):
    """Tokens/s over every step but the first (warm-up)."""
    return sum(tokens[1:]) / sum(seconds[1:])


def split_mode(mode):
    """`full-gc` → ("full", True): the training mode, and whether layers are recomputed."""
    base, _, suffix = mode.partition("-")
    if base not in ("lora", "full") or suffix not in ("", "gc"):
        sys.exit(f"unknown mode {mode!r}: use lora, full, lora-gc or full-gc")
    return base, suffix == "gc"


def race_trl(args, mode, model, data, lr):
    out = args.work / f"trl-{mode}"
    base, checkpointing = split_mode(mode)
    command = [args.python, str(HERE / "trl_dpo.py"), "--model", str(model), "--data", str(data),
               "--out", str(out), "--mode", base, "--steps", str(args.steps), "--lr", str(lr),
               "--max-length", str(args.max_length), "--threads", str(args.threads),
               "--device", args.trl_device]
    if checkpointing:
        command.append("--gradient-checkpointing")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    code, stdout, rss, wall, pressure = run(command, env, args.work / f"trl-{mode}.log")
    if code != 0:
        sys.exit(f"TRL ({mode}) failed with exit code {code}; see {args.work / f'trl-{mode}.log'}")
    result = json.loads(stdout.strip().splitlines()[-1])
    ends = [result["begin"]] + result["ends"]
    seconds = [b - a for a, b in zip(ends, ends[1:])]
    return {"tokens": result["tokens"], "seconds": seconds, "tokens_per_s": measured(result["tokens"], seconds),
            "peak_rss_mib": rss, "wall_s": wall, "cpu_pressure": pressure, "losses": result["losses"]}


def race_fairtune(args, mode, model, data, lr):
    out = args.work / f"fairtune-{mode}-{int(time.time())}"
    command = [args.fairtune, "train", "--task", "dpo", "--model", str(model), "--train", str(data),
               "--out", str(out), "--backend", args.backend, "--steps", str(args.steps), "--batch-size", "2",
               "--beta", "0.1", "--loss", "sigmoid", "--max-length", str(args.max_length),
               "--truncation-mode", "keep-start", "--data-order", "sequential", "--lr", str(lr),
               "--warmup-steps", "0", "--max-grad-norm", "1"]
    base, checkpointing = split_mode(mode)
    if base == "lora":
        command += ["--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "q,k,v,o"]
    if checkpointing:
        command.append("--gradient-checkpointing")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    code, _, rss, wall, pressure = run(command, env, args.work / f"fairtune-{mode}.log")
    if code != 0:
        sys.exit(f"fairtune ({mode}) failed with exit code {code}; see {args.work / f'fairtune-{mode}.log'}")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = [s["tokens"] for s in steps]
    seconds = [s["seconds"] for s in steps]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": measured(tokens, seconds),
            "peak_rss_mib": rss, "wall_s": wall, "cpu_pressure": pressure,
            "losses": [round(s["loss"], 6) for s in steps]}


def percent(share):
    return "n/a" if share is None else f"{100 * share:.1f}%"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fairtune", required=True, help="the fairtune binary")
    parser.add_argument("--python", default=sys.executable, help="the Python with TRL installed")
    parser.add_argument("--cache", type=Path, required=True, help="fairtune's cache (fetched assets)")
    parser.add_argument("--work", type=Path, required=True, help="where the checkpoint, data and runs go")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--backend", choices=["cpu", "wgpu"], default="cpu",
                        help="fairtune's backend (wgpu: the GPU through Vulkan/Metal/DX12)")
    parser.add_argument("--trl-device", choices=["cpu", "cuda"], default="cpu",
                        help="where TRL trains (cuda: torch's GPU)")
    parser.add_argument("--lr-lora", type=float, default=5e-5)
    parser.add_argument("--lr-full", type=float, default=5e-6)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is warm-up")
    model, data = prepare(args)

    idle = cpu_pressure_total()
    time.sleep(2)
    if idle is not None and (cpu_pressure_total() - idle) / 2e6 > 0.05:
        print("warning: the CPU is busy before the race starts; the numbers will be low", file=sys.stderr)

    rows, results = [], {}
    for mode in args.modes.split(","):
        lr = args.lr_lora if split_mode(mode)[0] == "lora" else args.lr_full
        print(f"{mode}: TRL ...", file=sys.stderr)
        trl = race_trl(args, mode, model, data, lr)
        print(f"{mode}: fairtune ...", file=sys.stderr)
        ours = race_fairtune(args, mode, model, data, lr)
        results[mode] = {"trl": trl, "fairtune": ours}
        same = "yes" if trl["tokens"] == ours["tokens"] else f"NO ({sum(trl['tokens'])} vs {sum(ours['tokens'])})"
        rows.append(
            f"| {mode} | {trl['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | "
            f"**{ours['tokens_per_s'] / trl['tokens_per_s']:.2f}×** | {trl['peak_rss_mib'] / 1024:.2f} GiB | "
            f"{ours['peak_rss_mib'] / 1024:.2f} GiB | {ours['peak_rss_mib'] / trl['peak_rss_mib']:.2f} | "
            f"{percent(trl['cpu_pressure'])} / {percent(ours['cpu_pressure'])} | {same} |")
    (args.work / "race.json").write_text(json.dumps(results, indent=1))
    print(f"SmolLM2-135M-Instruct fp32, {sum(1 for _ in data.open())} demo pairs in file order, "
          f"max length {args.max_length}, 2 pairs/step, {args.steps} steps (the first is warm-up), "
          f"{args.threads} threads, " + ("CPU" if (args.backend, args.trl_device) == ("cpu", "cpu") else
                                         f"fairtune on {args.backend}, TRL on {args.trl_device} (peak RSS is "
                                         "host memory only: a GPU's own memory is not in it)"))
    print("| mode | TRL tokens/s | fairtune tokens/s | ratio | TRL peak RSS | fairtune peak RSS | RSS ratio "
          "| CPU pressure (TRL / fairtune) | same tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
    print("\n".join(rows))
    print(f"(details: {args.work / 'race.json'})")


if __name__ == "__main__":
    main()
