"""Compute the reference statistics shipped in ``src/kuosan/evaluation/stats/`` (run once; CPU is enough).

    nice python scripts/make_reference_stats.py                     # every entry of shipped.SHIPPED
    nice python scripts/make_reference_stats.py --only fashion-mnist

For each (data set, split, extractor) of :data:`kuosan.evaluation.shipped.SHIPPED` it featurises the
class-balanced choice of at most 10,000 images that ``kuosan evaluate`` would featurise, and writes
``<dataset>-<split>--<extractor>.npz`` (float16 features, float16 class probabilities, labels, row indices,
stratified ranks, and a JSON ``meta`` with the sha256 of the data files and of the extractor's weights).
Rerun it after retraining a classifier (``scripts/train_classifiers.py``) or changing an extractor's
preprocessing (then also bump ``shipped.FORMAT_VERSION``); evaluation refuses stale files by those hashes.
"""

import argparse
import sys
import time

from kuosan.evaluation import shipped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=None, help="comma-separated data sets (default: all of shipped.SHIPPED)")
    p.add_argument("--out", default=None, help=f"folder (default {shipped.STATS_DIR})")
    p.add_argument("--max-images", type=int, default=shipped.MAX_IMAGES)
    args = p.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    total = 0
    for dataset, split, extractor in shipped.SHIPPED:
        if only and dataset not in only:
            continue
        t0 = time.perf_counter()
        path, meta = shipped.build(dataset, split, extractor, max_images=args.max_images, stats_dir=args.out)
        size = path.stat().st_size
        total += size
        print(f"{path.name}: {meta['images']} of {meta['split_images']} images, {meta['dim']}-d, "
              f"{size / 1e6:.2f} MB, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"total {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
