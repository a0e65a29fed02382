"""Make a shipped base (storyloom/bases/NAME) from a trained run: its best weights in bf16, no checkpoints.

    storyloom train --steps 9000 --deterministic --out runs/base      # the default preset on the bundled corpus's
                                                                      # training plays (the benchmark split holds out two)
    python benchmarks/make_base.py runs/base storyloom/bases/shakespeare

bf16 halves the weights (a 2.8M-parameter model: 5.7 MB), within the 6 MB a package can carry; a fine-tuned run
loads them into fp32 parameters, and the loss of precision costs nothing a fine-tuning step does not overwrite.
The base keeps config.json, vocab.json and metrics.jsonl (its curve), and a manifest over all of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from storyloom.files import read_bytes, tensor_bytes  # noqa: E402
from storyloom.runs import Run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("out")
    a = ap.parse_args()
    run, out = Run.open(a.run), Path(a.out)
    base = Run.create(out, run.config(), run.tokenizer(), run.info(), overwrite=True)  # config.json, vocab.json
    base.put("metrics.jsonl", read_bytes(run.file("metrics.jsonl")))
    _, weights = run.weights("best")
    base.put("best.safetensors", tensor_bytes({k: v.to(torch.bfloat16) for k, v in weights.items()}))
    Run.open(out).weights("best")  # verifies
    print(f"{out}: {sum(p.stat().st_size for p in out.iterdir()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
