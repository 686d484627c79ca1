"""One run of TRL's stock DPOTrainer for the race (bench/trl/race.py starts it; CPU, fp32) and the
memory table (bench/trl/memory.py: random-init models from a config, bf16 weights).

Prints one JSON line: the tokens of every step (non-pad tokens fed to the policy, chosen and
rejected rows, so a prompt counts twice: TRL's own `num_tokens` count) and the wall time at the
end of every step, plus the first step's start. Nothing is saved.
"""

import argparse
import json
import time

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer


class StepClock(TrainerCallback):
    def __init__(self):
        self.begin, self.ends = None, []

    def on_step_begin(self, args, state, control, **kwargs):
        if self.begin is None:
            self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["lora", "full"], required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="transformers' activation checkpointing per decoder layer")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: the model loaded in bf16 and bf16 mixed precision on")
    parser.add_argument("--random-init", action="store_true",
                        help="--model is a directory with a config.json (and tokenizer): random weights")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.random_init:
        from transformers import AutoConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    peft_config = None
    if args.mode == "lora":
        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    config = DPOConfig(
        output_dir=args.out, max_length=args.max_length, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=args.lr, beta=args.beta,
        loss_type=["sigmoid"], lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=42,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=args.device == "cpu", bf16=args.dtype == "bf16", fp16=False,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, dataset_num_proc=None)
    clock = StepClock()
    trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer, peft_config=peft_config,
                         train_dataset=load_dataset("json", data_files=args.data)["train"],
                         callbacks=[clock])
    tokens = []
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    trainer.train()
    losses = [round(entry["loss"], 6) for entry in trainer.state.log_history if "loss" in entry]
    print(json.dumps({"tokens": tokens[: len(clock.ends)], "begin": clock.begin, "ends": clock.ends,
                      "losses": losses, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
