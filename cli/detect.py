"""`paddle2ort detect`: over paddle2ort.runtime.detect.ObjectDetector (images -> detections, JSON lines)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import (add_bundle_session_options, check_output_file, command, jsonl_with_keys, session_options,
                     _typed)

threshold = _typed("threshold", float, lambda v: 0 <= v < 1, "a score in [0, 1)")


def run(args) -> int:
    from paddle2ort.runtime.detect import ObjectDetector
    from paddle2ort.runtime.ocr import check_image_files

    check_image_files(args.images)
    check_output_file(args.output, "--output", inputs=tuple(args.images), ours=jsonl_with_keys("image", "detections"),
                      bundles=(args.bundle,))
    det = ObjectDetector(args.bundle, precision=args.precision, session=session_options(args),
                         threshold=args.threshold)
    out = open(args.output, "w", encoding="utf-8") if args.output is not None else sys.stdout
    try:
        for image in args.images:
            found = det(image)
            out.write(json.dumps({"image": str(image), "detections": [d.to_json() for d in found]},
                                 ensure_ascii=False) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def register(sub) -> None:
    d = command(sub, "detect", "find objects in images with an object-detection bundle (PaddleDetection; JSON lines)",
                "paddle2ort detect bundles/picodet photo.jpg\n"
                "paddle2ort detect bundles/picodet shots/*.png --threshold 0.3 --output found.jsonl",
                description="Run an object-detection bundle (converted from a PaddleDetection inference export, a "
                            "folder with infer_cfg.yml, or PaddleX's inference.yml) on each image: the export's "
                            "preprocessing, its scale_factor / im_shape for the image's size, and its NMS output. One "
                            "JSON object an image "
                            '({"image", "detections": [{"label", "class_id", "score", "box": [x0, y0, x1, y1]}]}, '
                            "boxes in the image's pixels, best first) on stdout or --output. Detections scoring "
                            "above the export's draw_threshold are kept (--threshold to change it). Every image is "
                            "checked before the model loads: one that cannot be read stops the run (exit 2, naming "
                            "it). Reading image files needs Pillow. Runs without Paddle.")
    d.add_argument("bundle", type=Path, help="the bundle directory")
    d.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    d.add_argument("--threshold", type=threshold, help="keep detections scoring above this (default: the "
                   "export's draw_threshold)")
    d.add_argument("--output", type=Path, help="write the JSON lines to this file instead of stdout")
    add_bundle_session_options(d)
    d.set_defaults(func=run)
