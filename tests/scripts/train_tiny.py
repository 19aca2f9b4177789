"""Train tiny LPO as a separate process (killed by tests/test_resume.py).

Usage: python tests/scripts/train_tiny.py PAIRS_DIR OUT_ROOT [--resume]
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lpo_bench.harness.train import train_run  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resume_settings import lpo_request, tiny_inputs  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    train_run(lpo_request(sys.argv[1], sys.argv[2], resume="--resume" in sys.argv), **tiny_inputs(), log=lambda *_: None)


if __name__ == "__main__":
    main()
