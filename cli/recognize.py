"""`paddle2ort recognize`: over paddle2ort.runtime.ocr.TextRecognizer (text-line images -> JSON lines)."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_bundle_session_options, command, positive_int, session_options


def run(args) -> int:
    from paddle2ort.runtime.ocr import TextDirection, TextRecognizer, check_image_files

    check_image_files(args.images)
    session = session_options(args)
    cls = (TextDirection(args.cls, precision=args.cls_precision, batch_size=args.batch_size, session=session)
           if args.cls is not None else None)
    rec = TextRecognizer(args.bundle, precision=args.precision, batch_size=args.batch_size, session=session,
                         direction=cls)
    for image, r in zip(args.images, rec(list(args.images))):
        print(json.dumps({"image": str(image), "text": r.text, "score": round(r.score, 6), "angle": r.angle},
                         ensure_ascii=False))
    return 0


def register(sub) -> None:
    r = command(sub, "recognize", "read text-line images with a text-recognition bundle (PP-OCR rec; JSON lines)",
                "paddle2ort recognize bundles/ppocrv5-rec line1.png line2.jpg\n"
                "paddle2ort recognize bundles/ppocrv5-rec crops/*.png --precision int8\n"
                "paddle2ort recognize bundles/ppocrv5-rec crops/*.png --cls bundles/ppocr-cls   # upside-down lines",
                description="Read each image (one cropped text line, as a detector's box gives it) with a CTC "
                            "text-recognition bundle: PaddleOCR's preprocessing and CTC decoding, the character "
                            'classes from the bundle. One JSON object an image ({"image", "text", "score", "angle": '
                            "degrees the line was turned counterclockwise before the reading}) on stdout. A line 1.5 "
                            "times as tall as wide is taken for a rotated one (read turned either way, the better "
                            "reading kept); with --cls, lines a text direction classifier finds upside down are "
                            "turned 180 degrees first. Every image is read before any text is "
                            "printed: one that cannot be stops the run (exit 2, naming it). Reading image files "
                            "needs Pillow. Runs without Paddle.")
    r.add_argument("bundle", type=Path, help="the bundle directory")
    r.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="text-line image files")
    r.add_argument("--cls", type=Path, metavar="CLS_BUNDLE", help="a text-direction bundle (PaddleOCR's cls, "
                   "convert --task text-direction): upside-down lines are turned before they are read")
    r.add_argument("--cls-precision", help="the direction classifier's model (default: as --precision's rule)")
    add_bundle_session_options(r)
    r.add_argument("--batch-size", type=positive_int, default=6, help="lines a batch (PaddleOCR's default: 6)")
    r.set_defaults(func=run)
