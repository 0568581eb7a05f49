"""Stage 3 on held-out subjects: zero-shot, few-shot, LoRA, probe vs FC baselines and the oracle.

Steps (each part's metrics are kept in ``--out/parts/`` and reused on a rerun unless
``--retrain``; every part uses the same cohort split, so all methods see the same held-out
subjects):

1. **strict zero-shot**: the stage-2 model (never instruction-tuned) answers every task
   (constrained scoring + free text), next to majority / FC baselines and the oracle;
2. **instruction tuning** of that model (:func:`fmrilm.recipes.instruct.run_instruct`) on all
   tasks except ``--held-out`` (answered zero-shot afterwards);
3. the tuned model: zero-shot (+ free text), in-context few-shot (``--shots``), tokenizer
   probe; the HTML report of this part goes to ``--out/report``;
4. in-context few-shot with larger K (``--long-shots``) for ``--long-tasks`` on fewer rows
   (``--long-scans``; prompts grow with K x classes, and a K whose prompt exceeds the
   backbone's context is skipped with a note), LoRA adaptation on K labelled training
   subjects per class (``--lora-shots``) for ``--lora-tasks``, and full fine-tuning on the
   same subjects (``--full-shots``), each starting from the tuned model;
5. LLM-state probes (``--mode state-probe``): a linear model on the backbone's hidden state at
   the answer position, for the stage-2 model and the tuned one (fMRI only and, by default, with
   the descriptor line) -- does the model's reading of the scan carry the label at all? -- and,
   for ``--whole-tasks``, zero-shot answers and the state probe of the tuned model shown the
   whole scan (``--scan-steps all``) instead of the 2-3 steps it was tuned on;
6. a summary per task: the primary metric of every method, side by side.

By default (``--no-descriptors`` turns it off) the tuned model's prompts in steps 3-4 also carry each
scan's descriptor line from the corpus; zero-shot is then scored with and without it, and the
baselines include a linear model on the same descriptor values.

Usage::

    python benchmarks/instruct_quality.py --model runs/bench_pretrain --data demo-output/sim \\
        --corpus demo-output/sim_corpus [--out runs/bench_instruct] [--retrain]
        [--json benchmarks/results/instruct_quality.json] [key=value ...]

``key=value`` are InstructConfig overrides of step 2. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from _common import write_result

ROOT = Path(__file__).resolve().parents[1]
PRESET = ("steps=200", "batch_size=4", "span_patches=2", "warmup=20", "log_every=10",
          "ckpt_every=50")  # fmt: skip


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "runs/bench_pretrain")
    p.add_argument("--data", type=Path, default=ROOT / "demo-output/sim")
    p.add_argument("--corpus", type=Path, default=ROOT / "demo-output/sim_corpus")
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench_instruct")
    p.add_argument("--retrain", action="store_true", help="delete --out and start again")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--tasks", default="sex,diagnosis,age,fluid_intelligence,task_state,age_bin,facts"
    )
    p.add_argument("--held-out", default="age_bin", help="tasks never instruction-tuned")
    p.add_argument("--shots", default="2", help="in-context K per class (all tasks)")
    p.add_argument("--long-shots", default="4,8,16", help="larger in-context K, --long-tasks")
    p.add_argument("--long-tasks", default="sex,diagnosis,task_state")
    p.add_argument("--long-scans", type=int, default=20, help="held-out rows for --long-shots")
    p.add_argument("--lora-shots", default="2,4,8,16,32")
    p.add_argument("--lora-tasks", default="sex,diagnosis,task_state")
    p.add_argument("--full-shots", default="2,16", help="K for full fine-tuning ('' skips it)")
    p.add_argument(
        "--whole-tasks",
        default="sex,diagnosis,task_state",
        help="tasks asked and probed with the whole scan in the prompt ('' skips it)",
    )
    p.add_argument(
        "--no-descriptors", action="store_true", help="prompts without the descriptor line"
    )
    p.add_argument("--adapt-steps", type=int, default=30)
    p.add_argument("--max-scans", type=int, default=40, help="held-out rows per task")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from fmrilm.config import InstructConfig, load_config
    from fmrilm.io import read_json, write_json
    from fmrilm.recipes.evaluate import run_eval
    from fmrilm.recipes.instruct import run_instruct

    def names(v: str) -> list[str]:
        return [x.strip() for x in v.split(",") if x.strip()]

    if not (args.model / "config.json").is_file():
        print(f"error: --model {args.model} is not a stage-2 model folder", file=sys.stderr)
        return 2
    if args.retrain and args.out.exists():
        shutil.rmtree(args.out)
    parts = args.out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tasks = names(args.tasks)
    held = names(args.held_out)
    common = dict(corpus=args.corpus, max_rows=args.max_scans, n_boot=args.n_boot, progress=False,
                  log=log)  # fmt: skip

    def part(name: str, fn):
        path = parts / f"{name}.json"
        if path.exists():
            log(f"{name}: reusing {path}")
            return read_json(path)
        log(f"{name} ...")
        t0 = time.perf_counter()
        res = fn()
        res["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(path, res)
        return res

    strict = part(
        "strict_zero_shot",
        lambda: run_eval(args.model, args.data, tasks=tasks, modes=("zero-shot",), **common),
    )
    config = load_config(
        InstructConfig, None, [*PRESET, f"held_out_tasks={','.join(held)}", *args.overrides]
    )
    tuned_dir = args.out / "model"
    if not (tuned_dir / "config.json").exists():
        log("instruction tuning ...")
        training = run_instruct(
            args.model, args.data, tuned_dir, config, corpus=args.corpus, progress=False, log=log
        )
    else:
        training = read_json(tuned_dir / "training.json")
    tuned = part(
        "tuned",
        lambda: run_eval(
            tuned_dir, args.data, tasks=tasks, modes=("zero-shot", "few-shot", "probe"),
            shots=[int(k) for k in names(args.shots)], report=args.out / "report",
            multi_question=True, descriptors=not args.no_descriptors, **common,
        ),
    )  # fmt: skip
    long_ctx = part(
        "incontext_long",
        lambda: run_eval(
            tuned_dir, args.data, tasks=names(args.long_tasks), modes=("few-shot",),
            shots=[int(k) for k in names(args.long_shots)], free_text=False, baselines=False,
            retrieval=False, descriptors=not args.no_descriptors,
            **{**common, "max_rows": args.long_scans},
        ),
    )  # fmt: skip

    def adapted(mode: str, shots: list[int]) -> dict:
        """``mode`` (lora/full) for each --lora-tasks task, with the Ks its classes allow."""
        from fmrilm.data.cohort import Cohort
        from fmrilm.tasks import max_shots, resolve_tasks

        cohort = Cohort(args.data)
        out: dict = {"tasks": {}, "notes": []}
        for task in resolve_tasks(cohort, names(args.lora_tasks), None):
            most = max_shots(cohort, task)
            ks = [k for k in shots if k <= most]
            if len(ks) < len(shots):
                out["notes"].append(
                    f"{task.name}: {mode} K={','.join(str(k) for k in shots if k > most)} not "
                    f"run: a class has only {most} training subjects"
                )
            if not ks:
                continue
            res = run_eval(
                tuned_dir, args.data, tasks=[task.name], modes=(mode,), shots=ks,
                adapt_steps=args.adapt_steps, free_text=False, baselines=False,
                retrieval=False, descriptors=not args.no_descriptors, **common,
            )  # fmt: skip
            out["tasks"].update(res["tasks"])
            out["notes"] += res["notes"]
        return out

    lora = part("lora", lambda: adapted("lora", [int(k) for k in names(args.lora_shots)]))

    def fc_curves() -> dict:
        """The FC few-shot baseline at every K of the LoRA curve (same rows as the eval)."""
        from fmrilm.data.cohort import Cohort
        from fmrilm.evaluation.baselines import fc_fewshot_curve
        from fmrilm.tasks import max_shots, resolve_tasks

        cohort = Cohort(args.data)
        out: dict = {"tasks": {}, "notes": []}
        for task in resolve_tasks(cohort, names(args.lora_tasks), None):
            ks = [int(k) for k in names(args.lora_shots) if int(k) <= max_shots(cohort, task)]
            curve, notes = fc_fewshot_curve(cohort, task, ks, max_rows=args.max_scans)
            out["tasks"][task.name] = {"fewshot": {"FC few-shot": curve}} if curve else {}
            out["notes"] += notes
        return out

    fc = part("fc_fewshot", fc_curves)
    full_shots = [int(k) for k in names(args.full_shots)]
    full = part("full", lambda: adapted("full", full_shots)) if full_shots else {"tasks": {}}

    probe_kw = dict(common, modes=("state-probe",), baselines=False, retrieval=False,
                    free_text=False)  # fmt: skip
    probes = [  # the first also re-runs the baselines: later parts win in the summary
        part(
            "state_probe_stage2",
            lambda: run_eval(args.model, args.data, tasks=tasks, **{**probe_kw, "baselines": True}),
        ),
        part("state_probe", lambda: run_eval(tuned_dir, args.data, tasks=tasks, **probe_kw)),
    ]
    if not args.no_descriptors:
        probes.append(
            part(
                "state_probe_descriptors",
                lambda: run_eval(tuned_dir, args.data, tasks=tasks, descriptors=True, **probe_kw),
            )
        )
    whole_tasks = names(args.whole_tasks)
    if whole_tasks:
        whole = part(
            "whole_scan",
            lambda: run_eval(
                tuned_dir, args.data, tasks=whole_tasks, scan_steps="all",
                **{**probe_kw, "modes": ("zero-shot", "state-probe")},
            ),
        )  # fmt: skip
        for t in whole["tasks"].values():
            t["methods"] = {f"{k} (whole scan)": v for k, v in t["methods"].items()}
        probes.append(whole)
    for i, r in enumerate(probes):
        who = "stage 2" if i == 0 else "tuned"
        for t in r["tasks"].values():  # say which model each probe read
            t["methods"] = {k.replace("fmrilm ", f"fmrilm ({who}) "): v
                            for k, v in t["methods"].items()}  # fmt: skip

    def merged_curves(name: str) -> dict:
        """Each curve of ``name`` over all parts, its points merged by K (later parts win)."""
        out: dict = {}
        for r in (tuned, long_ctx, lora, full, fc):
            for curve, c in r["tasks"].get(name, {}).get("fewshot", {}).items():
                points = out.setdefault(curve, {"metric": c["metric"], "at": {}})["at"]
                for i, k in enumerate(c["k"]):
                    points[k] = [c[f][i] for f in ("value", "lo", "hi")]
        return {
            curve: {"k": sorted(v["at"]), "metric": v["metric"]}
            | {
                f: [v["at"][k][j] for k in sorted(v["at"])]
                for j, f in enumerate(("value", "lo", "hi"))
            }
            for curve, v in out.items()
        }

    summary = {}
    for name in tasks:
        if name not in tuned["tasks"]:
            continue
        t = tuned["tasks"][name]
        metric = "balanced_accuracy" if t["kind"] == "classification" else "r2"
        row = {"metric": metric, "n_test": t["n_test"], "held_out": name in held}
        s = strict["tasks"].get(name, {}).get("methods", {})
        for label, src in (("strict zero-shot (stage 2)", s.get("fmrilm zero-shot")),
                           ("strict zero-shot free text", s.get("fmrilm free text"))):  # fmt: skip
            if src:
                row[label] = src["metrics"].get(metric)
                if src.get("invalid_rate") is not None:
                    row[label + " invalid_rate"] = src["invalid_rate"]
        for method, m in t["methods"].items():
            row[method] = m["metrics"].get(metric)
            if m.get("invalid_rate") is not None:
                row[method + " invalid_rate"] = m["invalid_rate"]
        for extra in (lora, long_ctx, full, *probes):
            for method, m in extra["tasks"].get(name, {}).get("methods", {}).items():
                row[method] = m["metrics"].get(metric)
        summary[name] = row
    out = {
        "benchmark": "instruct_quality",
        "inputs": {"model": str(args.model), "data": str(args.data), "corpus": str(args.corpus)},
        "instruct_config": json.loads(json.dumps(config.__dict__)),
        "held_out_tasks": held,
        "max_scans_per_task": args.max_scans,
        "training": {
            "seconds": training.get("seconds"),
            "history": training.get("history", [])[-3:],
        },
        "summary": summary,
        "retrieval": tuned.get("retrieval"),
        "throughput": {"strict": strict.get("throughput"), "tuned": tuned.get("throughput")},
        "seconds": {
            "strict": strict.get("seconds"),
            "tuned": tuned.get("seconds"),
            "incontext_long": long_ctx.get("seconds"),
            "lora": lora.get("seconds"),
            "full": full.get("seconds"),
            "state_probes": [r.get("seconds") for r in probes],
        },  # fmt: skip
        "fewshot_curves": {name: merged_curves(name) for name in tasks},
        "notes": sorted(
            {n for r in (strict, tuned, long_ctx, lora, full) for n in r.get("notes", [])}
        ),
        "report": str(args.out / "report" / "report.html"),
    }
    write_result(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
