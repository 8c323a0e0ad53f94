"""`sppnet benchmark-svm`: the SVM stage (hard-negative mining) at VOC size on generated features.

No images or conv layers: per image --windows windows of --dim features (default 12,800, ZF-5's
pool5) for --classes classes, drawn so that mining keeps a realistic number of hard negatives
(svm/benchmark.py). Prints wall and CPU time, peak RSS and the negative cache's size; --json writes
them. docs/benchmarks.md ("SVM stage at VOC size") extrapolates them to VOC 2007.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detection.core.config import SVMConfig
from svm.benchmark import SyntheticMining
from tools.common import finite_float, int_at_least

GIB = 2**30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    spec = SyntheticMining()
    parser.add_argument("--num-images", type=int_at_least(1), default=spec.num_images,
                        help="generated images (default: %(default)s)")
    parser.add_argument("--windows", type=int_at_least(1), default=spec.windows,
                        help="windows per image (default: %(default)s)")
    parser.add_argument("--dim", type=int_at_least(1), default=spec.dim, help="feature dimension (default: %(default)s)")
    parser.add_argument("--classes", type=int_at_least(1), default=spec.num_classes,
                        help="number of classes (default: %(default)s)")
    parser.add_argument("--hard-fraction", type=finite_float, default=spec.hard_fraction,
                        help="fraction of each image's windows made hard negatives (default: %(default)s)")
    parser.add_argument("--cache-dtype", choices=("float32", "float16"), default=SVMConfig().cache_dtype,
                        help="storage type of the cached negatives (default: %(default)s)")
    parser.add_argument("--seed", type=int_at_least(0), default=spec.seed, help="of the generated data (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON here")


def run(args: argparse.Namespace) -> int:
    from detection.core.cache import atomic_write_bytes
    from svm.benchmark import benchmark_svm
    from svm.hard_negatives import HardNegativeSVMs

    spec = SyntheticMining(num_images=args.num_images, windows=args.windows, dim=args.dim,
                           num_classes=args.classes, hard_fraction=args.hard_fraction, seed=args.seed)
    svms = HardNegativeSVMs.from_config(SVMConfig(cache_dtype=args.cache_dtype))
    report = benchmark_svm(spec, svms)
    store = report["store"]
    print(f"{spec.num_images} images x {spec.windows} windows x {spec.dim} dims, {spec.num_classes} classes, "
          f"cache {args.cache_dtype}: wall {report['wall_s']:.1f} s, CPU {report['cpu_s']:.1f} s, "
          f"{report['retrains']} retrains")
    print(f"peak RSS {report['peak_rss_bytes'] / GIB:.2f} GiB (before mining {report['peak_rss_before_bytes'] / GIB:.2f}); "
          f"store peak {store['peak_rows']} rows = {store['peak_bytes'] / GIB:.2f} GiB, at the end {store['rows']} rows "
          f"for {store['referenced']} class references; largest training set {report['max_negatives_trained']} negatives")
    print("final negatives per class: " + " ".join(str(n) for n in report["final_negatives_per_class"]))
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(report, indent=2).encode())
    return 0
