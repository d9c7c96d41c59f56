"""`paddle2ort segment`: over paddle2ort.runtime.segment.Segmenter (images -> label maps, JSON lines, PNG masks)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

from .common import add_bundle_session_options, check_output_dir, check_output_file, command, session_options

MASK_TAG = ("Software", "paddle2ort segment")     # a PNG text chunk: the masks an earlier run wrote may be replaced


def _our_mask(path: Path) -> bool:
    """Whether `path` is a label-map PNG an earlier `paddle2ort segment` wrote (its text chunk says so)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and img.info.get(MASK_TAG[0]) == MASK_TAG[1]
    except Exception:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...: not ours either way
        return False


def mask_paths(images: list[Path], out_dir: Path, bundle: Path) -> list[Path]:
    """IMAGE.png in --output-dir for each image, checked before the model loads: two images of one name, an input
    file, a file inside the bundle or one another program wrote are refused (exit 2), never overwritten."""
    check_output_dir(out_dir, "--output-dir", bundle=bundle)
    paths = [out_dir / f"{Path(im).stem}.png" for im in images]
    seen: dict[Path, Path] = {}
    for im, p in zip(images, paths):
        if p in seen:
            raise BadInputError(f"images {seen[p]} and {im} would both write {p} (masks are named after the image): "
                                "run them into different --output-dir folders")
        seen[p] = im
        if out_dir.is_dir():
            check_output_file(p, "--output-dir", inputs=tuple(images), ours=_our_mask, bundles=(bundle,))
    return paths


def save_mask(labels, path: Path) -> None:
    """The label map as a PNG, atomically: 8-bit gray (mode L) when every id is below 256, else 16-bit."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    from paddle2ort.runtime.files import atomic_path
    top = int(labels.max(initial=0))
    if int(labels.min(initial=0)) < 0 or top > 65535:
        raise BadInputError(f"class ids {int(labels.min())}..{top} do not fit a 16-bit PNG; leave out --output-dir")
    img = Image.fromarray(labels.astype(np.uint8 if top < 256 else np.uint16))
    info = PngImagePlugin.PngInfo()
    info.add_text(*MASK_TAG)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG", pnginfo=info)


def run(args) -> int:
    from paddle2ort.runtime.ocr import check_image_files
    from paddle2ort.runtime.segment import Segmenter

    check_image_files(args.images)
    masks = mask_paths(args.images, args.output_dir, args.bundle) if args.output_dir is not None else None
    seg = Segmenter(args.bundle, precision=args.precision, session=session_options(args))
    if masks is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(args.images):
        res = seg(image)
        if masks is not None:
            save_mask(res.labels, masks[i])
        sys.stdout.write(json.dumps({"image": str(image), **res.to_json(), "mask": str(masks[i]) if masks else None},
                                    ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return 0


def register(sub) -> None:
    s = command(sub, "segment", "label every pixel of images with a semantic-segmentation bundle (PaddleSeg; JSON "
                "lines, PNG masks)",
                "paddle2ort segment bundles/pp-liteseg street.jpg\n"
                "paddle2ort segment bundles/pp-liteseg shots/*.png --output-dir masks/",
                description="Run a semantic-segmentation bundle (converted from a PaddleSeg inference export, a "
                            "folder with deploy.yaml) on each image: the export's transforms, the model, an argmax "
                            "over the classes where it gives scores, and the labels brought back to the image's "
                            'size (nearest neighbour, as PaddleSeg). One JSON object an image on stdout ({"image", '
                            '"size": [h, w], "classes": {id: pixels}, "mask": path or null}). With --output-dir '
                            "each label map is written as IMAGE.png there (8-bit gray, 16-bit where an id is 256 "
                            "or more; pixel value = class id); a file of that name another program wrote is not "
                            "replaced (exit 2). Every image is checked before the model loads. Reading image "
                            "files needs Pillow. Runs without Paddle.")
    s.add_argument("bundle", type=Path, help="the bundle directory")
    s.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    s.add_argument("--output-dir", type=Path, help="write each label map as IMAGE.png in this folder (created)")
    add_bundle_session_options(s)
    s.set_defaults(func=run)
