"""open_clip_train's `main`, as `bench/train_throughput.py` runs it: `python bench/open_clip_train_entry.py ARGS` or
`... open_clip_train_entry.py FLAGS.json` (a JSON list of its flags: under torchrun, whose own parser would take
`--logs` for an abbreviation of its `--logs-specs` even after the script's name). Three things are done first, in this process only, neither of which changes how it trains:

- our model configs (configs/models/*.json: mmp-tiny-rn, mmp-vit-s16-64) are registered with open_clip's factory,
  so both trainers build the same towers from the same JSON;
- open_clip_train's tar reader gets the one-line fix from webdataset#384 (`eof_value=None`): it targets
  webdataset <= 0.2.86, and under our pinned 1.0.2 it would index the empty end-of-shard dict as a file;
- on CPU only: its `DistributedDataParallel(model, device_ids=[device])` gets `device_ids=None` for a CPU device,
  which torch 2.15 requires (it refuses a CPU device in device_ids), so open_clip_train's DDP runs on gloo at all.

Environment `MMP_BENCH_MALLOC=tuned` applies the same glibc malloc settings our trainer applies at start-up
(mmpretrain/engine/allocator.py), for the ablation that gives open_clip our allocator setting.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prepare() -> None:
    import open_clip
    import open_clip_train.data

    open_clip.add_model_config(REPO / "configs" / "models")
    module = open_clip_train.data
    if not isinstance(module.tar_file_expander, functools.partial):
        module.tar_file_expander = functools.partial(module.tar_file_expander, eof_value=None)
    _ddp_accepts_cpu_device()
    if os.environ.get("MMP_BENCH_MALLOC") == "tuned":
        sys.path.insert(0, str(REPO))
        from mmpretrain.engine.allocator import tune_malloc

        tune_malloc()


def _ddp_accepts_cpu_device() -> None:
    import torch

    base = torch.nn.parallel.DistributedDataParallel

    class CpuTolerantDDP(base):  # type: ignore[misc, valid-type]
        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuTolerantDDP


if __name__ == "__main__":
    prepare()
    from open_clip_train.main import main

    argv = sys.argv[1:]
    if len(argv) == 1 and argv[0].endswith(".json"):
        argv = json.loads(Path(argv[0]).read_text())
    main(argv)
