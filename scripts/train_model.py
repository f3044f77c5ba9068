"""Train a small credit-risk model the way a bank would, and export it to ONNX for the network.

    python scripts/train_model.py --out model.onnx

The model is a logistic regression over three catalogue features (policies/features.toml):
tax_credit_rating, open_cases_as_defendant, years_established. It is trained on synthetic
history here; a bank trains on its own loan book. Its output is the probability of default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

FEATURES = ["tax_credit_rating", "open_cases_as_defendant", "years_established"]


def train(seed: int = 7) -> bytes:
    rng = np.random.RandomState(seed)
    n = 2000
    x = np.column_stack([rng.randint(0, 5, n), rng.poisson(0.4, n), rng.uniform(0, 30, n)]).astype(np.float32)
    # Synthetic defaults: poor tax credit, lawsuits and youth raise the odds.
    logit = -1.0 - 0.9 * (x[:, 0] - 2) + 1.2 * x[:, 1] - 0.05 * x[:, 2]
    defaulted = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    model = LogisticRegression().fit(x, defaulted.astype(int))
    return to_onnx(model, x[:1], options={id(model): {"zipmap": False}}).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_bytes(train())
    print(f"wrote {args.out} (features: {','.join(FEATURES)})")


if __name__ == "__main__":
    main()
