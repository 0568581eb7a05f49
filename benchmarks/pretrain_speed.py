"""Stage 2 training speed: bf16 autocast vs float32 on this machine, with MFU for each.

The real training loop (:func:`fmrilm.training.train_joint`) runs ``--steps`` steps of
the three objectives with each dtype, from the same initial weights and the same batches. The
inputs are synthetic (random fMRI codes for an 80-ROI atlas, replay passages as the texts):
speed depends only on sequence lengths, so this needs no cohort and runs anywhere.

MFU = achieved FLOP/s / the matmul peak measured in this process at the same dtype
(:func:`fmrilm.runtime.matmul_peak_flops`); achieved = 6 N tokens/s with N the backbone's
parameters outside the embedding table (a lower bound: attention scores, the LM head and the
LoRA matmuls are not counted).

Usage::

    python benchmarks/pretrain_speed.py [--steps 8] [--llm smollm2-135m-instruct]
        [--json benchmarks/results/pretrain_speed.json]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import write_result


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _measure(dt: str, args, tok_cfg, scans, replay, peak: float) -> tuple[dict, int]:
    """Train ``args.warmup_steps + args.steps`` steps at dtype ``dt``: the timed rates and MFU,
    and the backbone's parameter count outside the embeddings."""
    import torch

    from fmrilm.config import PretrainConfig
    from fmrilm.llm.backbones import get_backbone
    from fmrilm.model.fusion import build_model
    from fmrilm.tokenizer import FMRITokenizer
    from fmrilm.training import train_joint

    log(f"{dt}: {args.warmup_steps} + {args.steps} steps ...")
    backbone, text_tok, spec = get_backbone(args.llm)
    hidden = backbone.get_input_embeddings().weight.shape[1]
    torch.manual_seed(0)
    fmri_tok = FMRITokenizer(tok_cfg, llm_dim=hidden)
    total = args.warmup_steps + args.steps
    cfg = PretrainConfig(
        llm=args.llm, steps=total, batch_size=args.batch_size, span_patches=args.span_patches,
        warmup=1, log_every=1, ckpt_every=10 * total, bf16="on" if dt == "bfloat16" else "off",
    )  # fmt: skip
    model, text_tok = build_model(cfg, fmri_tok, backbone, text_tok, spec)
    n_backbone = sum(
        p.numel()
        for n, p in model.backbone.named_parameters()
        if "embed_tokens" not in n and "lm_head" not in n and "lora_" not in n
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = train_joint(model, text_tok, scans, replay, cfg, tmp, log=lambda s: None)
        wall = time.perf_counter() - t0
    timed = summary["history"][args.warmup_steps :]
    rates = [h["tokens_per_s"] for h in timed]
    tps = float(np.mean(rates))
    achieved = 6 * n_backbone * tps
    result = {
        "tokens_per_s": round(tps, 1),
        "tokens_per_s_min_max": [round(min(rates), 1), round(max(rates), 1)],
        "achieved_gflops": round(achieved / 1e9, 1),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "mfu": round(achieved / peak, 3),
        "wall_s": round(wall, 1),
        "final_losses": {k: v for k, v in summary["history"][-1].items() if k.endswith("_loss")},
    }
    del model, backbone
    return result, n_backbone


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8, help="timed steps per dtype")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--span-patches", type=int, default=2)
    p.add_argument("--rois", type=int, default=80)
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from fmrilm.config import TokenizerConfig
    from fmrilm.model.replay import load_replay
    from fmrilm.runtime import cpu_has_bf16, matmul_peak_flops
    from fmrilm.tokenizer.codes import ScanCodes

    dtypes = ["float32"] + (["bfloat16"] if cpu_has_bf16() else [])
    peak = {dt: matmul_peak_flops(getattr(torch, dt)) for dt in dtypes}
    rng = np.random.default_rng(0)
    replay = load_replay("train")
    tok_cfg = TokenizerConfig()
    scans = [
        ScanCodes(
            f"s{i}",
            rng.integers(
                0, tok_cfg.codebook_size, size=(4, args.rois, tok_cfg.window // tok_cfg.patch)
            ),
            [replay[(3 * i + k) % len(replay)] for k in range(3)],
        )
        for i in range(32)
    ]
    results = {}
    n_backbone = None
    for dt in dtypes:
        results[dt], n_backbone = _measure(dt, args, tok_cfg, scans, replay, peak[dt])
    out = {
        "benchmark": "pretrain_speed",
        "llm": args.llm,
        "steps_timed": args.steps,
        "warmup_steps": args.warmup_steps,
        "batch": {
            "batch_size_per_objective": args.batch_size,
            "span_patches": args.span_patches,
            "rois": args.rois,
            "objectives": ["temporal", "description", "replay"],
        },
        "backbone_params_non_embedding": n_backbone,
        "flops_formula": "6 N tokens/s (N: backbone parameters outside the embedding table)",
        "results": results,
        "bf16_speedup": (
            round(results["bfloat16"]["tokens_per_s"] / results["float32"]["tokens_per_s"], 2)
            if "bfloat16" in results
            else None
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "bf16_native": cpu_has_bf16(),
        },  # fmt: skip
    }
    write_result(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
