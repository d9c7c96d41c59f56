"""The conversion gate re-run on other hosts: the real Paddle models of the coverage corpus, converted here, judged
again where they are deployed (convert.hostcheck: another CPU's INT8/FP16 kernels, onnxruntime's CUDA provider).

`python -m paddle2ort.benchmarks.hostcheck prepare --out DIR [--models a,b]`   (converter host: Paddle needed)
    one bundle per model of benchmarks/coverage.py's corpus, FP32 + FP16 (+ INT8 where it applies), gated here.
`python -m paddle2ort.benchmarks.hostcheck run DIR... --results OUT [--devices cpu,gpu]`   (any host: no Paddle)
    every bundle's gate re-run on this host; OUT/hostcheck.json + hostcheck.md: per model and precision the
    figures where the gate ran beside those here, and the verdict.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import time
from pathlib import Path

from paddle2ort.convert.errors import NothingToQuantizeError, Paddle2OrtError
from paddle2ort.convert.validate import GateRerunError, failure_line, summary

from .env import environment

log = logging.getLogger(__name__)

FIGURES = ("max_rel_diff", "max_rel_rmse", "min_cosine", "min_argmax_agreement")


def prepare(out: Path, names: list[str] | None) -> list[Path]:
    """Convert each corpus model (all its precisions in one bundle) into out/NAME; a precision that does not apply
    (INT8 with nothing to quantize) is left out. -> the bundles written."""
    import numpy as np

    from paddle2ort.convert import ConvertConfig, convert
    from paddle2ort.convert.precision import FP16Options

    from .coverage import BY_NAME, CORPUS
    written = []
    for asset in ([BY_NAME[n] for n in names] if names else CORPUS):
        if asset.path() is None:
            log.warning("%s: %s is not installed; skipped", asset.name, asset.dist)
            continue
        npz = None
        if asset.inputs is not None:
            out.mkdir(parents=True, exist_ok=True)
            npz = out / f".{asset.name}.inputs.npz"
            np.savez(npz, **{f"{i}/{k}": v for i, s in enumerate(asset.inputs()) for k, v in s.items()})
        fp16 = FP16Options(op_block_list=FP16Options().op_block_list + asset.fp16_remedy)
        precisions = ("fp32", "fp16", "int8")
        try:
            for attempt in (precisions, precisions[:2]):
                try:
                    convert(ConvertConfig(source=asset.path(), output=out / asset.name, overwrite=True,
                                          precisions=attempt, inputs_npz=npz, name=asset.name, fp16=fp16))
                    break
                except NothingToQuantizeError:
                    log.info("%s: INT8 does not apply (nothing to quantize)", asset.name)
            written.append(out / asset.name)
        except Paddle2OrtError as e:
            log.error("%s: not converted: %s", asset.name, failure_line(e))
        finally:
            if npz is not None:
                npz.unlink(missing_ok=True)
    return written


def _figures(s: dict) -> dict:
    return {k: s.get(k) for k in ("passed", *FIGURES)}


def check_bundle(path: Path, device: str) -> dict:
    """One bundle's gate re-run on `device` here: per model {"gate": figures where it ran, "here": figures here or
    the error}, and the host the gate ran on; "model" is the bundle's folder name (the manifest's in "name")."""
    from paddle2ort.convert.hostcheck import check_host
    from paddle2ort.runtime.manifest import load_bundle
    m = load_bundle(path).manifest
    t0 = time.perf_counter()
    try:
        res = check_host(path, device)
        passed, failed, gate_host = res.reports, {}, res.gate_host
    except GateRerunError as e:
        passed, failed = e.passed, e.errors
        gate_host = json.loads((path / "validation.json").read_text()).get("host")
    except Paddle2OrtError as e:            # the bundle could not be checked at all
        return {"model": path.name, "name": m.name, "device": device, "error": failure_line(e),
                "exit_code": e.exit_code}
    models = {}
    for prec in [*m.models, *((m.extra.get("fused") or {}))]:
        gate = (m.validation or {}).get(prec)
        row = {"gate": _figures(gate) if gate else None}
        if prec in passed:
            row["here"] = _figures(summary(passed[prec]))
        elif prec in failed:
            e = failed[prec]
            report = getattr(e, "report", None)
            row["here"] = {**(_figures(summary(report)) if report else {}), "passed": False,
                           "error": failure_line(e), "exit_code": getattr(e, "exit_code", 1)}
        models[prec] = row
    return {"model": path.name, "name": m.name, "device": device, "gate_host": gate_host,   # the folder: two
            "seconds": round(time.perf_counter() - t0, 1), "models": models}                   # may share a name


def run(bundles: list[Path], devices: tuple[str, ...], results: Path) -> dict:
    from paddle2ort.runtime.host import describe_host
    rows = [check_bundle(b, d) for d in devices for b in bundles]
    res = {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "environment": environment(), "hosts": {d: describe_host(d) for d in devices}, "rows": rows}
    judged = [r for row in rows for r in row.get("models", {}).values()]
    res["summary"] = {"bundles": len(bundles), "models_judged": len(judged),
                      "passed_here": sum(bool(r["here"]["passed"]) for r in judged),
                      "unchecked_bundles": sum("error" in row for row in rows)}
    results.mkdir(parents=True, exist_ok=True)
    (results / "hostcheck.json").write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")
    (results / "hostcheck.md").write_text(markdown(res), encoding="utf-8")
    return res


def _cell(f: dict | None) -> str:
    if not f:
        return "-"
    if f.get("error") and f.get("max_rel_diff") is None:
        return f"**fail** (exit {f.get('exit_code')}): {f['error'][:80]}"
    verdict = "pass" if f.get("passed") else "**refused**"
    agree = f", argmax {f['min_argmax_agreement']:.3f}" if f.get("min_argmax_agreement") is not None else ""
    return f"{verdict} (rel {f['max_rel_diff']:.1e}, rmse {f['max_rel_rmse']:.1e}, cos {f['min_cosine']:.6f}{agree})"


def markdown(res: dict) -> str:
    from paddle2ort.runtime.host import host_line
    s = res["summary"]
    lines = [f"# The conversion gate re-run on another host ({res['created_at']}, commit "
             f"{res['environment'].get('git_commit')})", "",
             (res.get("about") or ("Each real Paddle model of the coverage corpus was converted and gated on the "
                                   "converter's host (`python -m paddle2ort.benchmarks.hostcheck prepare`)"))
             + "; here its bundle's gate is re-run without Paddle (`paddle2ort validate BUNDLE`, convert/hostcheck.py) "
             "against the Paddle outputs the bundle keeps, with the same samples, rules and default bounds.", ""]
    lines += [f"- here, {d}: {host_line(h)}" for d, h in res["hosts"].items()]
    gate_hosts = {json.dumps(r.get("gate_host"), sort_keys=True) for r in res["rows"] if r.get("gate_host")}
    lines += [f"- gate ran on: {host_line(json.loads(h))}" for h in sorted(gate_hosts)]
    devices = list(res["hosts"])
    lines += ["", f"**{s['passed_here']} of {s['models_judged']}** model checks pass here ({s['bundles']} bundles x "
              f"{len(devices)} device(s); {s['unchecked_bundles']} bundle checks could not run).", "",
              "| model | precision | where the gate ran | " + " | ".join(f"here, {d}" for d in devices) + " |",
              "|---|---|---|" + "---|" * len(devices)]
    table: dict[tuple[str, str], dict] = {}
    unchecked = []
    for row in res["rows"]:
        if "error" in row:
            unchecked.append(f"- {row['model']} on {row['device']}: not checked (exit {row['exit_code']}): "
                             f"{row['error'][:200]}")
            continue
        for prec, r in row["models"].items():
            cell = table.setdefault((row["model"], prec), {"gate": r["gate"]})
            cell[row["device"]] = r["here"]
    for (model, prec), cell in table.items():
        lines.append(f"| {model} | {prec} | {_cell(cell['gate'])} | "
                     + " | ".join(_cell(cell.get(d)) for d in devices) + " |")
    lines += ["", *unchecked, ""] if unchecked else [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paddle2ort.benchmarks.hostcheck", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="convert the coverage corpus into one bundle per model (needs Paddle)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="")
    r = sub.add_parser("run", help="re-run each bundle's gate on this host (no Paddle)")
    r.add_argument("bundles", type=Path, nargs="+")
    r.add_argument("--results", type=Path, required=True)
    r.add_argument("--devices", default="cpu", help="comma list of cpu, gpu")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.cmd == "prepare":
        names = [n for n in a.models.split(",") if n]
        from .coverage import BY_NAME
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
        print("\n".join(str(b) for b in prepare(a.out, names)))
        return 0
    devices = tuple(d for d in a.devices.split(",") if d)
    if not devices or any(d not in ("cpu", "gpu") for d in devices):
        ap.error(f"--devices takes cpu and/or gpu, got {a.devices!r}")
    missing = [str(b) for b in a.bundles if not (b / "manifest.json").is_file()]
    if missing:
        ap.error(f"not bundles (no manifest.json): {', '.join(missing)}")
    res = run(a.bundles, devices, a.results)
    print(markdown(res))
    return 0 if res["summary"]["passed_here"] == res["summary"]["models_judged"] and \
        not res["summary"]["unchecked_bundles"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
