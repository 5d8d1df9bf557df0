"""DPO after supervised fine-tuning, against a control that spends the same steps on SFT.

    python experiments/dpo.py    # 12 minutes on 2 CPU cores; 18 when it samples the pairs

Every step goes through the command line as a reader would type it:

1. ``sft``: the shipped SFT adapter ``data/sft_adapter`` (``tinyllm train`` with its
   defaults: LoRA rank 8 on q_proj, v_proj, 3 epochs), the model DPO starts from and is
   held to.
2. Preference pairs: ``tinyllm preferences`` samples the SFT model four times on the first
   2,000 training prompts (and 200 validation prompts) and pairs its first wrong reply
   (rejected) with a right one (chosen), judged by the world's exact answers. The pairs
   are committed (``results/dpo_pairs_*.jsonl``; chapter 9 trains on them).
3. ``dpo``: ``tinyllm dpo --sft-adapter`` on those pairs with its defaults: the SFT
   adapter merged into the base is the reference, a fresh adapter on top is the policy.
   The same at higher learning rates (``dpo-lr*``) and with RPO's NLL term.
4. The controls, ``sft-chosen``: ``tinyllm train --sft-adapter`` on the chosen replies
   alone (the same prompts), with DPO's batch and number of steps, once at DPO's learning
   rate and once at SFT's: what the pairs teach without their rejected halves.

Each model is scored by ``tinyllm eval`` on the test split and the held-out facts.
Writes ``experiments/results/dpo.json`` and ``dpo.md``; chapter 9 quotes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from outcomes import evaluate_splits, run

from tinyllm_lib.config import DATA_DIR, LORA_LR, TRAIN_PRESETS
from tinyllm_lib.data import write_jsonl
from tinyllm_lib.dpo import load_preferences
from tinyllm_lib.files import atomic_path

OUT = Path("outputs/experiments/dpo")
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
TRAIN_PROMPTS, VAL_PROMPTS = 2000, 200
DPO = TRAIN_PRESETS["dpo"]
DPO_RUNS = {  # run name: flags on top of tinyllm dpo's defaults
    "dpo": [],
    "dpo-lr1.5e-4": ["--lr", "1.5e-4"],
    "dpo-lr5e-4": ["--lr", "5e-4"],
    "dpo-rpo-lr5e-4": ["--lr", "5e-4", "--rpo-alpha", "1"],
}


def chosen_conversations(pairs_file: Path, out: Path) -> Path:
    """The pairs' prompts with their chosen replies: the control's SFT data."""
    write_jsonl(out, [[*pair.prompt, {"role": "assistant", "content": pair.chosen}]
                      for pair in load_preferences(pairs_file)])
    return out


def shown(args: list[str]) -> list[str]:
    """A command as it is recorded: paths relative to the repository."""
    return [str(Path(arg).relative_to(REPO)) if arg.startswith(str(REPO)) else arg
            for arg in args]


def last_step(run_name: str) -> int:
    """The number of optimizer steps a run took, from its training log."""
    lines = (Path("outputs/logs") / f"{run_name}.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["step"]


def main() -> None:
    sft = DATA_DIR / "sft_adapter"
    pairs = {"train": RESULTS / "dpo_pairs_train.jsonl", "val": RESULTS / "dpo_pairs_val.jsonl"}
    for split, limit, seed in (("train", TRAIN_PROMPTS, 0), ("val", VAL_PROMPTS, 1)):
        if not pairs[split].exists():
            run(["preferences", "--adapter", str(sft), "--data", str(DATA_DIR / f"{split}.jsonl"),
                 "--limit", str(limit), "--seed", str(seed), "--out", str(pairs[split])])

    runs: dict[str, dict] = {}
    data = ["--sft-adapter", str(sft), "--data", str(pairs["train"]), "--val", str(pairs["val"])]
    for name, flags in DPO_RUNS.items():
        seconds = run(["dpo", *data, *flags, "--out", str(OUT / name)])
        runs[name] = {"command": shown(["dpo", *data, *flags]), "steps": last_step(name),
                      "train_seconds": round(seconds, 1)}
    steps = runs["dpo"]["steps"]
    chosen = {split: chosen_conversations(path, OUT / f"chosen_{split}.jsonl")
              for split, path in pairs.items()}
    for name, lr in (("sft-chosen", DPO.lr), ("sft-chosen-lr3e-3", LORA_LR)):
        flags = ["--sft-adapter", str(sft), "--data", str(chosen["train"]),
                 "--val", str(chosen["val"]), "--max-steps", str(steps),
                 "--batch-size", str(DPO.batch_size), "--lr", str(lr),
                 "--warmup-steps", str(DPO.warmup_steps), "--eval-every", str(DPO.eval_every)]
        seconds = run(["train", *flags, "--out", str(OUT / name)])
        runs[name] = {"command": shown(["train", *flags]), "steps": last_step(name),
                      "train_seconds": round(seconds, 1)}

    results: dict = {"pairs": {split: len(load_preferences(path))
                               for split, path in pairs.items()}}
    for name in ("sft", *runs):
        adapters = [sft] if name == "sft" else [sft, OUT / name / "adapter"]
        flags = [arg for adapter in adapters for arg in ("--adapter", str(adapter))]
        reports = evaluate_splits(flags, OUT / name)
        results[name] = {**runs.get(name, {}), "adapters": shown([str(a) for a in adapters]),
                         "test": reports["test"], "heldout_facts": reports["heldout_facts"]}
    results["history"] = {name: [json.loads(line) for line in
                                 (Path("outputs/logs") / f"{name}.jsonl").read_text().splitlines()]
                          for name in DPO_RUNS}
    with atomic_path(RESULTS / "dpo.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    with atomic_path(RESULTS / "dpo.md") as tmp:
        tmp.write_text(table(results))
    print(table(results))


def table(results: dict) -> str:
    names = [name for name in results if name not in ("pairs", "history")]
    tasks = list(results["sft"]["test"]["accuracy"])
    lines = ["| run | " + " | ".join(tasks) + " | mean | held-out facts | steps |",
             "|---" * (len(tasks) + 4) + "|"]
    for name in names:
        test, heldout = results[name]["test"], results[name]["heldout_facts"]
        cells = [f"{100 * test['accuracy'][task]:.0f}" for task in tasks]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {100 * test['mean_accuracy']:.1f}"
                     f" | {100 * heldout['mean_accuracy']:.1f}"
                     f" | {results[name].get('steps', '-')} |")
    lines += ["", "Runs (test split: mean exact match of the eight families; steps of 8):",
              "- `sft`: `tinyllm eval --adapter data/sft_adapter` (`tinyllm train`'s defaults)"]
    lines += [f"- `{name}`: `tinyllm {' '.join(results[name]['command'])}`, evaluated on top "
              "of the SFT adapter" for name in names if "command" in results[name]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
