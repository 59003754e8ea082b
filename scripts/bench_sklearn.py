"""fmlp's MLPClassifier against scikit-learn's on Fashion-MNIST: examples/s and test accuracy.

Usage: python scripts/bench_sklearn.py [--epochs 10] [--rounds 2] [--out FILE.json]

Both estimators get the same parameters (a 784-256-256-10 ReLU net, solver "adam", batch 128,
learning_rate_init 1e-3, alpha 1e-4, random_state 0, no early stopping, ``tol=0`` and
``n_iter_no_change=epochs + 1`` so that every epoch runs) and the same data: the 60,000
training images as float32 pixels in [0, 1] (fmlp.data.fashion_mnist), 10,000 test images.
Each ``fit`` is timed on the wall clock (examples/s = 60,000 * epochs / seconds) and scored on
the test set afterwards. The fits alternate in one process: fmlp then scikit-learn, then the
reverse, and so on. fmlp's first fit includes compiling its epoch; a later one finds the
compiled epoch in its cache (same configuration and shapes), so the rounds after the first
show its speed without compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import neural_network
from sklearn.exceptions import ConvergenceWarning

import fmlp.sklearn
from fmlp import data
from fmlp.bench.report import metadata

ESTIMATORS = {"fmlp": fmlp.sklearn.MLPClassifier, "sklearn": neural_network.MLPClassifier}


def fit_and_score(name: str, params: dict[str, Any], arrays: tuple[np.ndarray, ...]) -> dict:
    """One ``fit`` of estimator ``name``, timed, then its test accuracy."""
    x_train, y_train, x_test, y_test = arrays
    clf = ESTIMATORS[name](**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached, as intended
        start = time.perf_counter()
        clf.fit(x_train, y_train)
        seconds = time.perf_counter() - start
    if clf.n_iter_ != params["max_iter"]:
        raise RuntimeError(f"{name} ran {clf.n_iter_} epochs, not {params['max_iter']}")
    return {
        "contestant": name,
        "fit_s": seconds,
        "n_iter": clf.n_iter_,
        "examples_per_s": len(x_train) * clf.n_iter_ / seconds,
        "final_loss": float(clf.loss_),
        "test_accuracy": float(clf.score(x_test, y_test)),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="max_iter of both")
    parser.add_argument("--rounds", type=int, default=2, help="fits of each, alternating")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = data.fashion_mnist()  # float32 pixels in [0, 1]
    arrays = (x_train, y_train, x_test, y_test)
    params = {
        "hidden_layer_sizes": (256, 256), "activation": "relu", "solver": "adam",
        "batch_size": 128, "learning_rate_init": 1e-3, "alpha": 1e-4, "max_iter": args.epochs,
        "early_stopping": False, "tol": 0.0, "n_iter_no_change": args.epochs + 1,
        "random_state": 0,
    }  # fmt: skip
    load_before = os.getloadavg()
    rounds = []
    for round in range(args.rounds):
        order = ["fmlp", "sklearn"] if round % 2 == 0 else ["sklearn", "fmlp"]
        fits = {name: fit_and_score(name, params, arrays) for name in order}
        ratio = fits["fmlp"]["examples_per_s"] / fits["sklearn"]["examples_per_s"]
        rounds.append({"order": order, "fits": fits, "fmlp_over_sklearn": ratio})
        for name in order:
            f = fits[name]
            print(
                f"round {round + 1} {name:8s} fit {f['fit_s']:8.2f} s  "
                f"{f['examples_per_s']:9.0f} ex/s  test acc {f['test_accuracy']:.4f}  "
                f"({f['n_iter']} epochs, final loss {f['final_loss']:.4f}, "
                f"load {f['load_average'][0]:.2f})"
            )
        print(f"round {round + 1} fmlp/sklearn examples/s: {ratio:.2f}")
    result = {
        **metadata(" ".join(["python", *sys.argv])),  # date, CPU, device, versions
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "dtype": str(x_train.dtype),
        "params": params,
        "rounds": rounds,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
