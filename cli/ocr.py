"""`paddle2ort ocr`: over paddle2ort.runtime.ocr_det.PageReader (page images -> text lines, JSON lines)."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_bundle_session_options, command, session_options


def run(args) -> int:
    from paddle2ort.runtime.ocr import TextDirection, TextRecognizer, check_image_files
    from paddle2ort.runtime.ocr_det import PageReader, TextDetector

    check_image_files(args.images)
    session = session_options(args)
    cls = TextDirection(args.cls, precision=args.cls_precision, session=session) if args.cls is not None else None
    page = PageReader(TextDetector(args.det, precision=args.det_precision, session=session),
                      TextRecognizer(args.rec, precision=args.precision, session=session, direction=cls))
    for image in args.images:
        lines = page(image)
        print(json.dumps({"image": str(image), "lines": [
            {"box": [ln.box.x0, ln.box.y0, ln.box.x1, ln.box.y1], "text": ln.text, "score": round(ln.score, 6),
             "angle": ln.angle}
            for ln in lines]}, ensure_ascii=False), flush=True)
    return 0


def register(sub) -> None:
    o = command(sub, "ocr", "read page images: a text-detection bundle finds the lines, a recognizer reads them",
                "paddle2ort ocr --det bundles/ppocrv5-det --rec bundles/ppocrv5-rec page.png\n"
                "paddle2ort ocr --det bundles/ppocrv5-det --rec bundles/ppocrv5-rec scans/*.jpg --precision int8\n"
                "paddle2ort ocr --det bundles/ppocrv5-det --rec bundles/ppocrv5-rec --cls bundles/ppocr-cls page.png",
                description="PP-OCR on a page: the DB detector's boxes (axis-aligned, in reading order), each crop "
                            "read by the CTC recognizer (with --cls, turned first when a text direction classifier "
                            "finds them upside down, as PaddleOCR's use_angle_cls); lines read with a score below "
                            '0.5 are left out (as PaddleOCR). One JSON object an image ({"image", "lines": [{"box": '
                            '[x0, y0, x1, y1], "text", "score", "angle"}]}) on stdout. Needs Pillow and scipy (the '
                            "ocr extra). Runs without Paddle.")
    o.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="page image files")
    o.add_argument("--det", type=Path, required=True, help="the text-detection bundle")
    o.add_argument("--rec", type=Path, required=True, help="the text-recognition bundle")
    o.add_argument("--cls", type=Path, metavar="CLS_BUNDLE", help="a text-direction bundle (PaddleOCR's cls, "
                   "convert --task text-direction): upside-down lines are turned before they are read")
    o.add_argument("--det-precision", help="the detector's model (default: as --precision's rule)")
    o.add_argument("--cls-precision", help="the direction classifier's model (default: as --precision's rule)")
    add_bundle_session_options(o)
    o.set_defaults(func=run)
