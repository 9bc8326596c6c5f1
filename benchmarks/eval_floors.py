"""Real-versus-real floors: what each distance reads for two real sets of the same size.

    nice python benchmarks/eval_floors.py                       # fashion-mnist, 1k and 10k, both extractors
    python benchmarks/eval_floors.py --sizes 1000 --extractors fmnist-cnn

For each extractor and size n: a class-balanced n-image subset of the training split against a class-balanced
n-image subset of the test split (n = 10,000 is the whole Fashion-MNIST test split). Prints a table and writes
``benchmarks/results/eval_floors.json``. A generated set of n images cannot be expected to beat these numbers.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from kuosan.data.dataset import take_stratified
from kuosan.evaluation.features import get_extractor
from kuosan.evaluation.metrics import density_coverage, frechet_distance, kid, precision_recall
from kuosan.evaluation.reference import reference_features

RESULTS = Path(__file__).parent / "results" / "eval_floors.json"


def floors(a, b, kid_subsets):
    """Every set distance between two real feature sets ``a`` (train) and ``b`` (test)."""
    kid_mean, kid_std = kid(a.features, b.features, subset_size=1000, subsets=kid_subsets)
    precision, recall = precision_recall(b.features, a.features, k=3)
    density, coverage = density_coverage(b.features, a.features, k=5)
    return {"n_train": a.count, "n_test": b.count, "frechet_distance": frechet_distance(a.mu, a.sigma, b.mu, b.sigma),
            "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
            "density": density, "coverage": coverage}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--extractors", nargs="+", default=["fmnist-cnn", "efficientnet-lite0"])
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = {"dataset": args.dataset, "device": args.device, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "floors": {}}
    top = max(args.sizes)
    for name in args.extractors:
        ext = get_extractor(name, device=args.device)
        start = time.perf_counter()
        # Features of the largest class-balanced subsets (the same cache entries `kuosan evaluate` uses with
        # --max-real at that size); smaller sizes take class-balanced subsets of those.
        train_fs, _ = reference_features(f"{args.dataset}:train", ext, max_images=top, log=print)
        test_fs, _ = reference_features(f"{args.dataset}:test", ext, max_images=top, log=print)
        for n in args.sizes:
            a, b = (fs.subset(take_stratified(fs.labels, n, seed=1)) for fs in (train_fs, test_fs))
            results["floors"].setdefault(name, {})[str(n)] = floors(a, b, args.kid_subsets)
        results["floors"][name]["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    header = f"{'extractor':<20}{'n':>7}{'FD':>10}{'KIDx1e3':>10}{'prec':>7}{'recall':>7}{'dens':>7}{'cover':>7}"
    print(header)
    print("-" * len(header))
    for name, by_size in results["floors"].items():
        for n, r in by_size.items():
            if n == "seconds":
                continue
            print(f"{name:<20}{n:>7}{r['frechet_distance']:>10.3f}{1e3 * r['kid']:>10.3f}{r['precision']:>7.3f}"
                  f"{r['recall']:>7.3f}{r['density']:>7.3f}{r['coverage']:>7.3f}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
