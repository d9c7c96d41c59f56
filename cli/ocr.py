"""`paddle2ort ocr`: over paddle2ort.runtime.ocr_det.PageReader (page images -> text lines, JSON lines)."""
from __future__ import annotations

import json
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

from .common import add_bundle_session_options, check_exists, command, session_options


def check_image(path: Path, index: int) -> None:
    """Every file is a readable image before any model loads (its header: a page a time is decoded later), so a bad
    one is the whole run's one error, not a stop after some pages were printed."""
    try:
        from PIL import Image
    except ImportError:
        raise BadInputError("reading image files needs Pillow (pip install 'paddle2ort[ocr]')") from None
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadInputError(f"image #{index + 1} ({path}) cannot be read as an image ({e}); give image files Pillow "
                            "reads (PNG, JPEG, BMP, TIFF, ...), or leave that one out") from e


def run(args) -> int:
    from paddle2ort.runtime.ocr import TextRecognizer
    from paddle2ort.runtime.ocr_det import PageReader, TextDetector

    for i, image in enumerate(args.images):
        check_exists(image, "IMAGE")
        if image.is_dir():
            raise BadInputError(f"IMAGE {image} is a directory; give image files (e.g. {image}/*.png)")
        check_image(image, i)
    session = session_options(args)
    page = PageReader(TextDetector(args.det, precision=args.det_precision, session=session),
                      TextRecognizer(args.rec, precision=args.precision, session=session))
    for image in args.images:
        lines = page(image)
        print(json.dumps({"image": str(image), "lines": [
            {"box": [ln.box.x0, ln.box.y0, ln.box.x1, ln.box.y1], "text": ln.text, "score": round(ln.score, 6)}
            for ln in lines]}, ensure_ascii=False), flush=True)
    return 0


def register(sub) -> None:
    o = command(sub, "ocr", "read page images: a text-detection bundle finds the lines, a recognizer reads them",
                "paddle2ort ocr --det bundles/ppocrv5-det --rec bundles/ppocrv5-rec page.png\n"
                "paddle2ort ocr --det bundles/ppocrv5-det --rec bundles/ppocrv5-rec scans/*.jpg --precision int8",
                description="PP-OCR on a page: the DB detector's boxes (axis-aligned, in reading order), each crop "
                            "read by the CTC recognizer; lines read with a score below 0.5 are left out (as "
                            'PaddleOCR). One JSON object an image ({"image", "lines": [{"box": [x0, y0, x1, y1], '
                            '"text", "score"}]}) on stdout. Needs Pillow and scipy (the ocr extra). Runs without '
                            "Paddle.")
    o.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="page image files")
    o.add_argument("--det", type=Path, required=True, help="the text-detection bundle")
    o.add_argument("--rec", type=Path, required=True, help="the text-recognition bundle")
    o.add_argument("--det-precision", help="the detector's model (default: as --precision's rule)")
    add_bundle_session_options(o)
    o.set_defaults(func=run)
