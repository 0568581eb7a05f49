"""Run by test_pretrain.py: tiny stage-2 training, alone or under torchrun; saves the weights.

Usage: python ddp_pretrain_worker.py OUT_FILE [--fsdp]  (or torchrun --nproc_per_node 2 ...)
"""

import sys

import numpy as np
import torch
from safetensors.torch import save_file

from fmrilm.checkpoint import trainable_state
from fmrilm.config import PretrainConfig, TokenizerConfig
from fmrilm.llm.backbones import get_backbone
from fmrilm.model.fusion import build_model
from fmrilm.runtime import init_distributed
from fmrilm.tokenizer import FMRITokenizer
from fmrilm.tokenizer.codes import ScanCodes
from fmrilm.training import train_joint


def main(out: str, fsdp: bool = False) -> None:
    torch.set_num_threads(1)
    rank, world = init_distributed()
    backbone, tok, spec = get_backbone("tiny")
    torch.manual_seed(0)
    fmri_tok = FMRITokenizer(TokenizerConfig.tiny(), llm_dim=backbone.config.hidden_size)
    cfg = PretrainConfig(
        llm="tiny", steps=4, batch_size=4, span_patches=3, log_every=2, ckpt_every=4,
        warmup=1, lr=1e-2, new_params_lr=1e-2, bf16="off", grad_accum=1,
    )  # fmt: skip
    model, tok = build_model(cfg, fmri_tok, backbone=backbone, text_tokenizer=tok, spec=spec)
    rng = np.random.default_rng(0)
    scans = [
        ScanCodes(f"s{i}", rng.integers(0, 16, size=(2, 3, 4)), [f"Level {i} of the signal."])
        for i in range(5)
    ]
    replay = ["The river flows to the sea.", "Bread is baked in an oven at dawn."]
    summary = train_joint(
        model, tok, scans, replay, cfg, out + ".run", fsdp=fsdp, log=lambda s: None
    )
    if rank == 0:
        state = {k: v.detach().contiguous() for k, v in trainable_state(model).items()}
        from torch.distributed.tensor import DTensor

        frozen = [p for p in model.parameters() if not p.requires_grad]
        sharded = sum(isinstance(p, DTensor) for p in frozen)
        meta = {"world": str(world), "history": repr(summary["history"]), "sharded": str(sharded)}
        save_file(state, out, metadata=meta)
    from fmrilm.runtime import finish_distributed

    finish_distributed()


if __name__ == "__main__":
    main(sys.argv[1], fsdp="--fsdp" in sys.argv[2:])
