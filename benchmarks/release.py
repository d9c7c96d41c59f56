"""The release gate: convert every precision, gate each against Paddle, measure quality and speed on the user's data
on this host (CPU, and the GPU when there is one), pick per device the fastest precision within a quality budget,
and record the decision with its evidence in the bundle (manifest `extra.release` + release/report.{json,md,png}).

Quality budget, relative to FP32 on the same data and device:
- text classifiers: accuracy drop in points, `(acc_fp32 - acc) * 100 <= budget`;
- LLM bundles: perplexity increase in percent, `(ppl / ppl_fp32 - 1) * 100 <= budget`.
A precision that fails the conversion gate is no candidate; on the GPU, one that fails it re-run there is no GPU
candidate (gate_on_device: the CPU computes most FP16 operators in float32, CUDA in half). Among the candidates
within budget the fastest wins, except that a more exact precision (fp32 > fp16 > int8 > int4) within `tie_margin`
of the fastest is preferred: timing noise never flips a release to a less exact model.

A candidate whose own conversion crashes (its precision pass, onnxruntime failing on its model) is no candidate
either: the report names it and why, the others are converted, measured and decided as ever, and the release then
fails (ReleaseError, exit 4): a crash is a defect to fix, not a verdict on the model.

Nothing is written at the bundle path when the release fails: no precision fits (or FP32 itself fails its gate)
-> NoPrecisionFitsError (exit 3); a candidate's conversion crashed, or FP32's or the stages every precision shares
(the export, Paddle's reference) -> ReleaseError (exit 4); a device's measurement failed (its provider, a session)
-> ReleaseError with that error's code, the other devices measured and decided. Where several happened, the most
serious code wins (convert.validate.most_serious). The report still goes to `report_dir` when one is given (CI
artifacts), naming every failure.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from paddle2ort.convert.api import ConvertConfig, ConvertResult, convert
from paddle2ort.convert.bundle import check_destination, staged_bundle, write_json
from paddle2ort.convert.errors import (ConversionError, LabelCountError, NothingToQuantizeError, OperatorFormError,
                                      UnsupportedOperatorsError, ValidationError)
from paddle2ort.convert.validate import failure_line, most_serious
from paddle2ort.runtime.errors import BadInputError, DeviceError, Paddle2OrtError
from paddle2ort.runtime.files import atomic_path, atomic_write, module_available
from paddle2ort.runtime.manifest import MANIFEST_NAME, Manifest, sha256_file
from paddle2ort.runtime.session import SessionOptions, gpu_available

from .env import cpu_name, environment, gpu_names, usable_cores

log = logging.getLogger(__name__)

EXACTNESS = ("fp32", "fp16", "int8", "int4")          # most exact first: the tie rule's preference order
REPORT_DIR = "release"                                 # bundle-relative folder of the report files
DEVICES = ("cpu", "gpu")


class ReleaseError(Paddle2OrtError):
    """The release failed and wrote nothing at the bundle path; `report` says what was found (its `exit_code`: this
    error's, the most serious of the failures: 4 a conversion crashed, 3 no precision fits on some device)."""

    exit_code = 4

    def __init__(self, message: str, report: dict, exit_code: int | None = None):
        super().__init__(message)
        self.report = report
        if exit_code is not None:
            self.exit_code = exit_code


class NoPrecisionFitsError(ReleaseError):
    """No candidate precision passed its gate and stayed within the quality budget on some device (exit 3)."""

    exit_code = 3


@dataclass(frozen=True)
class ReleaseConfig:
    """`conversion` is the ConvertConfig (classifier) or LLMConvertConfig (causal LM) of the bundle to release;
    its `precisions` are the candidates (FP32 is always converted and measured: it is the baseline)."""
    conversion: object                         # ConvertConfig | paddle2ort.convert.llm.LLMConvertConfig
    dataset_dir: Path
    budget: float = 1.0                        # accuracy points (classifier) / perplexity % (LLM)
    split: str = "dev"
    devices: tuple[str, ...] | None = None     # None: cpu, plus gpu when onnxruntime sees one
    tie_margin: float = 0.05                   # a more exact precision within 5% of the fastest is preferred
    report_dir: Path | None = None             # also write the report here, pass or fail
    # classifier measurement (benchmarks.classifier.run_bench)
    batch_size: int = 32
    warmup: int = 8
    repeats: int = 3
    limit: int | None = None
    threads: int = 0
    # LLM measurement (perplexity windows over the split's text; greedy decode speed)
    window: int = 128
    windows: int = 8
    new_tokens: int = 32

    def __post_init__(self):
        object.__setattr__(self, "dataset_dir", Path(self.dataset_dir))
        if not isinstance(self.budget, (int, float)) or not math.isfinite(self.budget) or self.budget < 0:
            raise BadInputError(f"budget must be a finite number >= 0 ({self.unit} of quality FP32 may lose), "
                                f"got {self.budget!r}")
        if not math.isfinite(self.tie_margin) or not 0 <= self.tie_margin < 1:
            raise BadInputError(f"tie margin must be in [0, 1), got {self.tie_margin!r}")
        bad = [d for d in self.devices or () if d not in DEVICES]
        if bad or (self.devices is not None and not self.devices):
            raise BadInputError(f"devices must be a non-empty list of {DEVICES}, got {self.devices!r}")
        for name in ("batch_size", "repeats", "window", "windows", "new_tokens"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.threads < 0 or (self.limit is not None and self.limit < 1):
            raise BadInputError("warmup and threads must be >= 0 and limit >= 1")
        SessionOptions(intra_op_threads=self.threads)       # past what this host takes: exit 2 before converting

    @property
    def is_llm(self) -> bool:
        return not isinstance(self.conversion, ConvertConfig)

    @property
    def unit(self) -> str:
        return "perplexity %" if self.is_llm else "accuracy points"


@dataclass(frozen=True)
class ReleaseReport:
    bundle: Path
    chosen: dict[str, str]                     # device -> precision
    report: dict                               # everything (= release/report.json)
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------- decision
def decide(candidates: list[dict], budget: float, tie_margin: float, speed_key: str,
           higher_is_faster: bool) -> str | None:
    """The release rule on measured candidates ({precision, delta, <speed_key>, gate_passed}); marks
    `within_budget` on each and returns the chosen precision (None: none fits)."""
    fits = []
    for c in candidates:
        c["within_budget"] = bool(c["gate_passed"] and c.get("delta") is not None and c["delta"] <= budget + 1e-9)
        if c["within_budget"]:
            fits.append(c)
    if not fits:
        return None

    def cost(c):  # time per unit of work: lower is faster
        return 1.0 / c[speed_key] if higher_is_faster else c[speed_key]

    best = min(cost(c) for c in fits)
    near = [c for c in fits if cost(c) <= best * (1 + tie_margin)]
    return min(near, key=lambda c: EXACTNESS.index(c["precision"]) if c["precision"] in EXACTNESS else 99)["precision"]


# ---------------------------------------------------------------------------------------------------- input checks
def _dataset_files(cfg: ReleaseConfig) -> dict[str, str]:
    names = [f"{cfg.split}.txt"] if cfg.is_llm else ["label.txt", f"{cfg.split}.txt"]
    return {n: sha256_file(cfg.dataset_dir / n) for n in names}


def _check_classifier(cfg: ReleaseConfig) -> tuple[ConvertConfig, object]:
    from paddle2ort.convert.source import locate

    from .dataset import load_split
    conv: ConvertConfig = cfg.conversion
    data = load_split(cfg.dataset_dir, cfg.split)           # missing dir/split, bad or empty lines: exit 2
    locate(conv.source)                                     # not a Paddle inference model: exit 2
    if conv.task not in (None, "text-classification"):
        raise BadInputError(f"the release gate measures accuracy of text classifiers; task {conv.task!r} is not one")
    if conv.labels is not None and list(conv.labels) != data.label_names:
        raise BadInputError(f"--labels {list(conv.labels)} differ from {cfg.dataset_dir}/label.txt "
                            f"{data.label_names}; give the same names in the same order (or leave --labels out)")
    if conv.tokenizer is None:
        raise BadInputError("a text-classifier release needs the tokenizer (--tokenizer DIR with tokenizer.json "
                            "and vocab.txt): accuracy is measured on the dataset's texts")
    return replace(conv, task="text-classification", labels=tuple(data.label_names), validate=True), data


def _check_llm(cfg: ReleaseConfig):
    from paddle2ort.benchmarks.perplexity import text_windows
    from paddle2ort.convert.llm.api import check_source
    from paddle2ort.runtime.textio import read_utf8_lines
    from paddle2ort.tokenization.bpe import BPETokenizer

    conv = cfg.conversion
    if not cfg.dataset_dir.is_dir():
        raise BadInputError(f"dataset directory {cfg.dataset_dir} " + (
            f"is a file; give the folder holding {cfg.split}.txt" if cfg.dataset_dir.exists() else "does not exist"))
    lines = [ln for ln in read_utf8_lines(cfg.dataset_dir / f"{cfg.split}.txt",
                                          "an LLM release reads plain text from DATASET/<split>.txt")
             if ln.strip()]
    if not lines:
        raise BadInputError(f"{cfg.dataset_dir}/{cfg.split}.txt has no text")
    check_context(cfg, context_bound(check_source(conv.source)))      # checked again once converted
    tok = BPETokenizer.load(conv.tokenizer)
    windows = text_windows(tok, lines, cfg.window, cfg.windows)       # too little text: exit 2, before converting
    return replace(conv, validate=True), windows


def context_bound(config: dict) -> int | None:
    """From a PaddleNLP config.json, a bound the bundle's context will not exceed (convert/_worker.py max_context:
    the positions of LLaMA and most, CodeGen's n_positions, ChatGLM's max_sequence_length, QWen's seq_length, capped
    at a sliding window); None: not told. PaddleNLP writes seq_length into every config: QWen's only it bounds."""
    from paddle2ort.convert.llm.families import UnsupportedFamily, family_name
    try:
        qwen = family_name(config) == "qwen"
    except UnsupportedFamily:                  # the conversion says so, first thing
        return None
    keys = ("max_position_embeddings", "n_positions", "max_sequence_length", *(("seq_length",) if qwen else ()))
    return max((config[k] for k in keys if isinstance(config.get(k), int)), default=None)


def check_context(cfg: ReleaseConfig, context: int | None) -> None:
    """The perplexity windows and the timed generation (a prompt of up to 32 tokens + --new-tokens) fit the
    model's context (None: not known yet)."""
    if context is None:
        return
    if cfg.window > context:
        raise BadInputError(f"--window {cfg.window} is longer than the model's context of {context} tokens; pass "
                            f"--window {context} or less")
    prompt = min(32, cfg.window)
    if prompt + cfg.new_tokens > context:
        fix = (f"--new-tokens {context - prompt}" if context > prompt else f"--window {context - cfg.new_tokens}")
        raise BadInputError(f"--new-tokens {cfg.new_tokens} after the {prompt}-token prompt of the speed run exceed "
                            f"the model's context of {context} tokens; pass {fix} or less")


# -------------------------------------------------------------------------------------------------------- conversion
def convert_candidates(conversion, run) -> tuple[ConvertResult, dict[str, dict]]:
    """Convert with every candidate precision; one that fails its gate, or whose own conversion crashes, is dropped
    (recorded with the figures or the error: `failure` gate-refused / crashed / not made, `reason` in one line) and
    the rest converted again, since `convert` writes all precisions or none. FP32 failing its gate is final (exit
    3), and so is a crash of FP32 or of the stages every precision shares (exit 4): there is no baseline then."""
    precisions = list(conversion.precisions)
    gate: dict[str, dict] = {}
    isolation = _CrashIsolation(conversion, run)
    try:
        while True:
            try:
                res = isolation.made(precisions) or run(replace(conversion, precisions=tuple(precisions) or ("fp32",)))
            except ValidationError as e:             # fused-PREC: the LLM's CPU default graph of PREC is PREC's
                prec = e.precision.removeprefix("fused-")
                gate[prec] = {"passed": False, "failure": "gate-refused", "reason": failure_line(e), "error": str(e)}
                if prec == "fp32" or prec not in precisions:
                    raise
                log.warning("not a release candidate (converting the others again): %s", e)
                precisions.remove(prec)
                continue
            except NothingToQuantizeError as e:      # int8 of a model without the ops it rewrites: no such candidate
                if "int8" not in precisions:
                    raise
                gate["int8"] = {"passed": False, "failure": "not made", "reason": failure_line(e), "error": str(e),
                                "note": "not made: nothing in the model INT8 rewrites"}
                log.warning("not a release candidate (converting the others again): %s", e)
                precisions.remove("int8")
                continue
            except ConversionError as e:
                crashed = isolation.crashed(precisions, e)
                if not crashed:                      # FP32's, or the stages every precision shares
                    raise
                for prec, err in crashed.items():
                    gate[prec] = {"passed": False, "failure": "crashed", "reason": failure_line(err), "error": str(err),
                                  "note": f"its conversion crashed: {failure_line(err)}"}
                    log.warning("%s is not a release candidate, its conversion crashed (the others go on): %s", prec,
                                failure_line(err))
                    precisions.remove(prec)
                continue
            for prec, s in (res.manifest.validation or {}).items():
                gate[prec] = {"passed": True, **s}
            return res, gate
    finally:
        isolation.close()


class _CrashIsolation:
    """Whose crash a conversion's is: `convert` makes all precisions in one run, so its crash does not say which
    candidate's pass (or onnxruntime on which model) failed. On a crash only, FP32 is converted with each other
    candidate alone (and alone where every pair crashed), in a folder of trials beside the output; a trial that
    converted is kept while the candidates are settled, since the rest converted again may be just its set."""

    def __init__(self, conversion, run):
        self.conversion, self.run = conversion, run
        self.root: Path | None = None
        self.trials: dict[frozenset, tuple[ConvertResult, Path]] = {}

    def crashed(self, precisions: list[str], error: ConversionError) -> dict[str, ConversionError]:
        """-> candidate -> its crash, for those that crash converted with FP32 alone; {}: FP32's or the shared
        stages' crash (FP32 alone crashes), the Paddle program's (unsupported operators), or one of converting
        them together only."""
        others = [p for p in dict.fromkeys(precisions) if p != "fp32"]
        if not others or isinstance(error, (UnsupportedOperatorsError, OperatorFormError)):
            return {}
        log.warning("the conversion crashed (%s); converting FP32 with each candidate alone to find whose crash it "
                    "is", failure_line(error))
        whole, found, fp32_fine = frozenset(["fp32", *others]), {}, False
        for p in others:
            crash, fine = (error, False) if frozenset(["fp32", p]) == whole else self._trial(("fp32", p))
            fp32_fine = fp32_fine or fine
            if crash is not None:
                found[p] = crash
        if found and not fp32_fine and self._trial(("fp32",))[0] is not None:
            return {}                               # FP32 alone crashes too: the crash is every precision's
        return found

    def made(self, precisions: list[str]) -> ConvertResult | None:
        """A trial that converted exactly these precisions, moved to the output (None: there is none)."""
        trial = self.trials.pop(frozenset(["fp32", *precisions]), None)
        if trial is None:
            return None
        res, path = trial
        if path.exists():
            os.rename(path, self.conversion.output)
        return replace(res, bundle=self.conversion.output)

    def _trial(self, precisions: tuple[str, ...]) -> tuple[ConversionError | None, bool]:
        """-> (its crash or None, whether FP32 and the shared stages are known to work: it converted, or a candidate
        other than FP32 failed its gate, which is judged after FP32's; an LLM's fused decoders are judged before)."""
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix=".crash-trials-", dir=self.conversion.output.parent))
        out = self.root / "-".join(precisions)
        try:
            res = self.run(replace(self.conversion, output=out, precisions=precisions, overwrite=False))
        except ConversionError as e:
            return e, False
        except ValidationError as e:
            return None, e.precision in EXACTNESS and e.precision != "fp32"
        except NothingToQuantizeError:
            return None, False
        self.trials[frozenset(precisions)] = (res, out)
        return None, True

    def close(self) -> None:
        if self.root is not None:                   # made by mkdtemp here: ours alone
            shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ measurement
def measure_classifier(cfg: ReleaseConfig, bundle: Path, device: str, precisions: list[str]) -> tuple[dict, list]:
    from .classifier import BenchConfig, run_bench
    res = run_bench(BenchConfig(bundle=bundle, dataset_dir=cfg.dataset_dir, split=cfg.split, device=device,
                                precisions=tuple(precisions), batch_size=cfg.batch_size, warmup=cfg.warmup,
                                repeats=cfg.repeats, threads=cfg.threads, limit=cfg.limit))
    base = next(r for r in res["rows"] if r["precision"] == "fp32")
    rows = [{"precision": r["precision"], "accuracy": r["accuracy"],
             "delta": (base["accuracy"] - r["accuracy"]) * 100, "ms_per_sample": r["ms_per_sample"],
             "p90_batch_ms": r["p90_batch_ms"], "samples_per_s": r["throughput"],
             "argmax_agreement_vs_fp32": r["argmax_agreement_vs_fp32"]} for r in res["rows"]]
    return res, rows


def measure_llm(cfg: ReleaseConfig, bundle: Path, device: str, precisions: list[str], windows) -> tuple[dict, list]:
    import numpy as np

    from paddle2ort.runtime.llm import TextGenerator, default_graph
    from paddle2ort.runtime.session import SessionOptions

    from .llm import time_generation
    from .perplexity import onnx_nll
    threads = cfg.threads or usable_cores()
    raw, rows = [], []
    for prec in precisions:
        session = SessionOptions(device=device, intra_op_threads=threads if device == "cpu" else 0)
        gen = TextGenerator(bundle, precision=prec, session=session)
        nll, n = onnx_nll(gen.model, windows)          # the generic graph's full-window logits; same weights
        # timed on the graph `generate` and `serve` run by default (the fused decoder / compiled step where built)
        graph = default_graph(gen.llm, prec, session, fused=gen.bundle.manifest.extra.get("fused"))
        timed = gen if graph == "generic" else TextGenerator(bundle, precision=prec, session=session, graph=graph)
        del gen
        pad = timed.tokenizer.pad_token_id
        prompt = [windows[0][:min(32, len(windows[0]))]]
        time_generation(timed.model, prompt, cfg.new_tokens, pad)          # warm-up: the same shapes as timed
        runs = [time_generation(timed.model, prompt, cfg.new_tokens, pad) for _ in range(cfg.repeats)]
        tps = float(np.median([r["decode_tokens_per_s_total"] for r in runs]))
        raw.append({"precision": prec, "nll": nll, "tokens": n, "graph": timed.graph, "runs": runs})
        rows.append({"precision": prec, "perplexity": float(np.exp(nll / n)), "tokens_per_s": tps,
                     "ttft_ms": float(np.median([r["ttft_ms"] for r in runs])), "graph": timed.graph})
        log.info("%s %s: perplexity %.4f, %.1f tokens/s", device, prec, rows[-1]["perplexity"], tps)
    base = next(r for r in rows if r["precision"] == "fp32")
    for r in rows:
        r["delta"] = (r["perplexity"] / base["perplexity"] - 1) * 100
    return {"benchmark": "llm-release", "window": cfg.window, "windows": len(windows),
            "new_tokens": cfg.new_tokens, "threads": threads, "rows": raw}, rows


def gate_on_device(bundle: Path, device: str, gate: dict[str, dict], thresholds: dict,
                   runs: list[str]) -> dict[str, dict]:
    """The conversion gate judged each model on this host's CPU; on the GPU a model computes otherwise (onnxruntime's
    CPU provider runs most FP16 operators in float32, CUDA in half precision: an overflow the CPU never sees), so a
    GPU candidate is judged again there (convert.hostcheck: the bundle's recorded samples and Paddle outputs, the
    conversion's bounds); runs: what runs there (_device_precisions). -> the gate record per precision for `device`
    (a model refused there: failure, reason and a note naming the device). A bundle whose Paddle outputs were too
    large to keep is judged by the CPU's gate, as the log and its candidates' "gpu_gate" say."""
    if device != "gpu":
        return gate
    from paddle2ort.convert.hostcheck import check_host
    from paddle2ort.convert.validate import GateRerunError, failure_kind
    try:
        check_host(bundle, device, thresholds=thresholds, only=set(runs))
        return gate
    except GateRerunError as e:
        failed = e.errors
    except BadInputError as e:                  # cannot be checked there (no recorded outputs): the CPU's verdict
        log.warning("%s: the gate was not re-run there (%s); its candidates are those the CPU's gate passed", device,
                    failure_line(e))
        return {p: {**g, "gpu_gate": f"not run: {failure_line(e)}"} if g.get("passed") else g for p, g in gate.items()}
    out = dict(gate)
    for name, err in failed.items():
        prec = name.removeprefix("fused-")      # an LLM's fused decoder is its precision's CPU/GPU default graph
        if prec in out and out[prec].get("passed"):
            out[prec] = {**out[prec], "passed": False, "failure": failure_kind(err), "reason": failure_line(err),
                         "note": f"failed the conversion gate on the {device}: {failure_line(err)}"}
            log.warning("%s is not a %s candidate: %s", prec, device, failure_line(err))
    if not out.get("fp32", {}).get("passed"):   # no baseline there: nothing can be judged against FP32 on it
        for prec, g in out.items():
            if g.get("passed"):
                out[prec] = {**g, "passed": False, "failure": "gate-refused", "reason": "FP32 fails the gate on the "
                             f"{device}: no baseline there", "note": f"FP32 fails the conversion gate on the {device}"}
    return out


def _device_precisions(cfg: ReleaseConfig, device: str, passed: list[str]) -> tuple[list[str], dict[str, str]]:
    """What runs on the device: FP32 (the baseline) + the candidates that passed their gate. Dynamic INT8 of a
    classifier is not run on GPU (its quantize ops run on the CPU there), as in `paddle2ort bench`."""
    skipped = {}
    out = ["fp32"] + [p for p in passed if p != "fp32"]
    if device == "gpu" and not cfg.is_llm and "int8" in out:
        out.remove("int8")
        skipped["int8"] = "dynamic INT8 is not a GPU configuration (its quantize ops run on the CPU)"
    return out, skipped


# ------------------------------------------------------------------------------------------------------------ report
def _paddle2ort_version() -> str:
    try:
        return version("paddle2ort")
    except PackageNotFoundError:
        return "unknown"


def markdown(report: dict) -> str:
    llm = report["kind"] == "text-generation"
    qual, speed = ("perplexity", "tokens/s") if llm else ("accuracy %", "ms/sample")
    status = "PASSED" if report["passed"] else f"FAILED (exit {report.get('exit_code', 3)})"
    lines = [f"# Release gate: {report['bundle']} — {status}", "",
             f"Budget: {report['budget']} {report['budget_unit']} vs FP32 on the same data and device; "
             f"dataset `{report['dataset']['dir']}` split `{report['dataset']['split']}` "
             f"({report['dataset']['samples']} {'tokens' if llm else 'samples'}); {report['date']}; "
             f"paddle2ort {report['paddle2ort']}. Tie rule: a more exact precision within "
             f"{report['tie_margin'] * 100:.0f}% of the fastest is preferred.", ""]
    if report.get("reason"):
        lines += ["Nothing was measured:", "", "```", report["reason"], "```", ""]
    crashed = {c["precision"]: c["reason"] for d in report["devices"].values() for c in d["candidates"]
               if c.get("failure") == "crashed"}
    if crashed:
        lines += ["Not released: the conversion of " + ", ".join(crashed) + " crashed (a defect to fix first; the "
                  "others were measured and decided as ever):", ""]
        lines += [f"- {p}: {why}" for p, why in crashed.items()] + [""]
    for dev, d in report["devices"].items():
        held = " (not released)" if d["chosen"] and not report["passed"] else ""
        lines += [f"## {dev.upper()}: {d['host']} — chosen: **{d['chosen'] or 'none'}**{held}", ""]
        if d.get("measurement_failed"):
            lines += [f"Not measured: {d['measurement_failed']}", ""]
        lines += [f"| precision | gate | {qual} | delta ({report['budget_unit']}) | {speed} | within budget |",
                  "|---|---|---|---|---|---|"]
        for c in d["candidates"]:
            q = c.get("perplexity") if llm else c.get("accuracy")
            qs = "-" if q is None else (f"{q:.4f}" if llm else f"{q * 100:.2f}")
            s = c.get("tokens_per_s") if llm else c.get("ms_per_sample")
            ss = "-" if s is None else (f"{s:.1f}" if llm else f"{s:.3f}")
            delta = "-" if c.get("delta") is None else f"{c['delta']:+.3f}"
            gate = ("passed" if c["gate_passed"] else "n/a" if c.get("failure") == "not made"
                    or str(c.get("note", "")).startswith("not made") else
                    "**crashed**" if c.get("failure") == "crashed" else "**failed**")
            mark = "yes" if c["within_budget"] else ("no" if c.get("delta") is not None else
                                                     "no (crashed, see above)" if c.get("failure") == "crashed" else
                                                     f"no ({c.get('note', 'not measured')})")
            name = f"**{c['precision']}**" if c["precision"] == d["chosen"] else c["precision"]
            name += f" ({c['graph']} graph)" if c.get("graph") else ""
            lines.append(f"| {name} | {gate} | {qs} | {delta} | {ss} | {mark} |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Speed per (device, precision) bar, quality delta on each bar, chosen bars highlighted (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    llm = report["kind"] == "text-generation"
    key = "tokens_per_s" if llm else "ms_per_sample"
    bars = [(f"{c['precision']}\n{dev}", c, c["precision"] == d["chosen"])
            for dev, d in report["devices"].items() for c in d["candidates"] if c.get(key) is not None]
    fig, ax = plt.subplots(figsize=(1.3 * len(bars) + 2, 4))
    colors = ["#2a9d8f" if chosen else ("#8ab17d" if c["within_budget"] else "#e76f51") for _, c, chosen in bars]
    rects = ax.bar([b[0] for b in bars], [b[1][key] for b in bars], color=colors)
    for r, (_, c, _) in zip(rects, bars):
        ax.annotate(f"{c['delta']:+.2f}", (r.get_x() + r.get_width() / 2, r.get_height()), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylabel("tokens / s (higher is faster)" if llm else "ms / sample (lower is faster)")
    ax.set_title(f"{report['bundle']}: chosen (dark), within budget (green), over budget (red)\n"
                 f"labels: quality delta vs FP32 in {report['budget_unit']} (budget {report['budget']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json, .md, .png in out_dir (each written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "report.png"}
    write_json(paths["json"], report)
    atomic_write(paths["md"], markdown(report))
    if report["devices"] and module_available("matplotlib"):
        with atomic_path(paths["png"], suffix=".png") as tmp:
            plot(report, tmp)
    else:
        if report["devices"]:
            log.warning("matplotlib is not installed: no plot written (pip install 'paddle2ort[bench]')")
        paths.pop("png").unlink(missing_ok=True)     # an earlier run's plot (ours: check_output_dir) is not this one
    return paths


def _record_in_manifest(bundle: Path, release: dict) -> None:
    """Add `extra.release` and the report files' checksums to the staged bundle's manifest."""
    import json

    from paddle2ort.runtime.manifest import file_entries
    m = Manifest.from_json(json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8")))
    files = {**m.files, **{f"{REPORT_DIR}/{rel}": e for rel, e in file_entries(bundle / REPORT_DIR).items()}}
    m = replace(m, extra={**m.extra, "release": release}, files=files)
    write_json(bundle / MANIFEST_NAME, m.to_json())


# -------------------------------------------------------------------------------------------------------------- run
def candidates(asked: list[str], gate: dict[str, dict], measured: dict[str, dict],
               skipped: dict[str, str]) -> list[dict]:
    """One evidence record per candidate: its gate figures and, when it ran on the device, its measurement; one
    that did not pass says how it failed (`failure`: gate-refused, crashed, not made) and why (`reason`, a line)."""
    out = []
    for p in dict.fromkeys(asked):
        g = gate.get(p, {"passed": False, "error": "not converted"})
        c = {"precision": p, "gate_passed": bool(g.get("passed")), **measured.get(p, {"delta": None}),
             "gate": {k: v for k, v in g.items() if k not in ("passed", "note", "failure", "reason")}}
        if not c["gate_passed"]:
            c["note"] = g.get("note", "failed the conversion gate")
            c["failure"] = g.get("failure", "gate-refused")
            c["reason"] = g.get("reason", g.get("error", "not converted"))
        elif p in skipped:
            c["note"] = skipped[p]
        out.append(c)
    return out


def _host(device: str) -> str:
    return (gpu_names() or ["GPU"])[0].split(",")[0] if device == "gpu" else f"{cpu_name()} ({usable_cores()} cores)"


def run_release(cfg: ReleaseConfig) -> ReleaseReport:
    """Check inputs (exit 2), convert + gate (3/4), measure, decide, write the bundle atomically with its decision.
    Raises NoPrecisionFitsError (exit 3) when some device has no precision within budget, ReleaseError (exit 4)
    when a conversion crashed (a candidate's: once the others are measured and decided); nothing is written then."""
    devices = cfg.devices or (("cpu", "gpu") if gpu_available() else ("cpu",))
    if "gpu" in devices and not gpu_available():
        raise DeviceError("--device gpu: onnxruntime sees no CUDA device on this host; use --device cpu "
                          "(or run the release on a GPU host with onnxruntime-gpu)")
    if not cfg.is_llm and "gpu" in devices and set(cfg.conversion.precisions) == {"int8"}:
        raise BadInputError("the only candidate, int8, is never released for the GPU (onnxruntime runs dynamic INT8 "
                            "on the CPU), so the GPU would get no precision: add fp16 or fp32 to --precision, or pass "
                            "--device cpu")
    conversion, measured_on = (_check_llm(cfg) if cfg.is_llm else _check_classifier(cfg))
    sources = (*conversion.user_paths(), cfg.dataset_dir)       # never inside what --overwrite replaces
    check_destination(conversion.output, conversion.overwrite, sources)
    info = {"budget": cfg.budget, "budget_unit": cfg.unit, "tie_margin": cfg.tie_margin,
            "dataset": {"dir": str(cfg.dataset_dir), "split": cfg.split, "sha256": _dataset_files(cfg)},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "paddle2ort": _paddle2ort_version()}
    asked = list(cfg.conversion.precisions)
    if cfg.is_llm:
        from paddle2ort.convert.llm import convert_llm

        def run_convert(c):
            return convert_llm(c)
    else:
        def run_convert(c):
            try:
                return convert(c, sources)
            except LabelCountError as e:           # the labels are the dataset's (--labels must equal them)
                raise BadInputError(
                    f"{cfg.dataset_dir / 'label.txt'} lists {len(e.labels)} labels ({', '.join(e.labels)}) but the "
                    f"model's first output has {e.classes} classes (shape {e.shape}): the dataset is not this "
                    f"model's; give a dataset whose label.txt names its {e.classes} classes, in output order") from None

    with staged_bundle(conversion.output, conversion.overwrite, sources) as stage:
        inner = stage / "converted"
        try:
            res, gate = convert_candidates(replace(conversion, output=inner, overwrite=False), run_convert)
        except ValidationError as e:           # FP32 failed its gate: nothing can be released
            report = _report(cfg, conversion.source.name, info, {}, {}, measured_on, reason=str(e), exit_code=3)
            if cfg.report_dir:
                write_report(report, cfg.report_dir)
            raise NoPrecisionFitsError(f"no precision can be released: FP32 fails the conversion gate, so there "
                                       f"is no baseline to judge the others against.\n{e}", report) from e
        except ConversionError as e:           # FP32's conversion, or what every precision shares, crashed
            report = _report(cfg, conversion.source.name, info, {}, {}, measured_on, reason=str(e),
                             exit_code=e.exit_code)
            if cfg.report_dir:
                write_report(report, cfg.report_dir)
            raise ReleaseError(f"no precision can be released: the conversion crashed, and no candidate's crashes on "
                               f"its own (FP32, the baseline, or a stage every precision shares failed).\n{e}", report,
                               e.exit_code) from e
        if cfg.is_llm:                         # the context the export made (config.json gave a bound only)
            check_context(cfg, (res.manifest.extra.get("llm") or {}).get("max_context"))
        for entry in inner.iterdir():          # the converted bundle becomes the staged release bundle
            os.rename(entry, stage / entry.name)
        inner.rmdir()
        passed = [p for p in asked + ["fp32"] if gate.get(p, {}).get("passed")]
        decisions, raw, unmeasured = {}, {}, {}
        for dev in devices:
            run_precs, skipped = _device_precisions(cfg, dev, passed)
            dev_gate = gate_on_device(stage, dev, gate, conversion.thresholds, run_precs)
            run_precs = [p for p in run_precs if p == "fp32" or dev_gate[p].get("passed")]     # fp32: the baseline
            try:
                raw[dev], rows = (measure_llm(cfg, stage, dev, run_precs, measured_on) if cfg.is_llm
                                  else measure_classifier(cfg, stage, dev, run_precs))
            except Paddle2OrtError as e:       # this device's run failed (its session, its provider): not the rest
                log.warning("%s: the measurement failed (the other devices go on): %s", dev, failure_line(e))
                unmeasured[dev], rows = e, []
            by = {r["precision"]: r for r in rows}
            cands = candidates(asked, dev_gate, by, skipped)
            chosen = decide(cands, cfg.budget, cfg.tie_margin,
                            *(("tokens_per_s", True) if cfg.is_llm else ("ms_per_sample", False)))
            decisions[dev] = {"chosen": chosen, "baseline": by.get("fp32"), "candidates": cands, "host": _host(dev),
                              **({"measurement_failed": failure_line(unmeasured[dev])} if dev in unmeasured else {}),
                              **info}
            log.info("%s: chosen %s", dev, chosen or "none (no candidate within budget)")
        crashed = {p: g for p, g in gate.items() if g.get("failure") == "crashed"}
        fits = all(d["chosen"] for dev, d in decisions.items() if dev not in unmeasured)
        code = most_serious([4 if crashed else 0, 0 if fits else NoPrecisionFitsError.exit_code,
                             *(e.exit_code for e in unmeasured.values())])
        report = _report(cfg, res.manifest.name, info, decisions, raw, measured_on, exit_code=code)
        if not report["passed"]:
            if cfg.report_dir:
                write_report(report, cfg.report_dir)
            error = NoPrecisionFitsError if code == NoPrecisionFitsError.exit_code else ReleaseError
            raise error(_failure_message(report, crashed), report, code)
        paths = write_report(report, stage / REPORT_DIR)
        _record_in_manifest(stage, decisions)
    # once the bundle is in place: a run stopped before never leaves a PASSED report without its bundle
    extra_paths = write_report(report, cfg.report_dir) if cfg.report_dir else {}
    final = {k: conversion.output / REPORT_DIR / p.name for k, p in paths.items()}
    return ReleaseReport(bundle=conversion.output, chosen={d: v["chosen"] for d, v in decisions.items()},
                         report=report, files={**final, **{f"report_dir_{k}": p for k, p in extra_paths.items()}})


def _report(cfg: ReleaseConfig, name: str, info: dict, decisions: dict, raw: dict, measured_on,
            reason: str | None = None, exit_code: int = 0) -> dict:
    """`exit_code`: the release's (0: released); `passed` only where it is 0 and every device has a precision."""
    samples = (sum(len(w) for w in measured_on) if cfg.is_llm
               else min(cfg.limit or len(measured_on.texts), len(measured_on.texts)))
    passed = not exit_code and bool(decisions) and all(d["chosen"] for d in decisions.values())
    return {"kind": "text-generation" if cfg.is_llm else "text-classification", "bundle": name,
            "passed": passed, "exit_code": 0 if passed else exit_code or NoPrecisionFitsError.exit_code,
            **({"reason": reason} if reason else {}),
            **{k: v for k, v in info.items() if k != "dataset"}, "dataset": {**info["dataset"], "samples": samples},
            "devices": decisions, "measurements": raw, "environment": environment()}


def _failure_message(report: dict, crashed: dict[str, dict]) -> str:
    """Why the release failed: each candidate whose conversion crashed (a line each), then each device without a
    precision within budget, every candidate's figures or why it has none."""
    lines = []
    if crashed:
        lines += [f"the conversion of {len(crashed)} candidate(s) crashed ({', '.join(crashed)}): a defect to fix "
                  "before releasing, whatever the others measure:"]
        lines += [f"  {p}: crashed: {g['reason']}" for p, g in crashed.items()]
        chosen = {dev: d["chosen"] for dev, d in report["devices"].items() if d["chosen"]}
        if chosen:
            lines.append(f"  without {', '.join(crashed)} the release would choose "
                         + ", ".join(f"{dev} -> {p}" for dev, p in chosen.items())
                         + " (the figures are in the report); fix the crash, or leave "
                         + ",".join(crashed) + " out of --precision")
    for dev, d in report["devices"].items():
        if d.get("measurement_failed"):
            lines.append(f"{dev}: the measurement failed, so nothing is released for it: {d['measurement_failed']}")
    short = [dev for dev, d in report["devices"].items() if not d["chosen"] and not d.get("measurement_failed")]
    if not short:
        return "\n".join(lines + ["Nothing was written at the bundle path."])
    lines += [f"no precision fits the budget of {report['budget']} {report['budget_unit']} on "
              + ", ".join(short) + ":"]
    for dev, d in report["devices"].items():
        if dev not in short:
            continue
        b = d["baseline"]
        base = (f"perplexity {b['perplexity']:.4f}" if "perplexity" in b else f"accuracy {b['accuracy'] * 100:.2f}%")
        lines.append(f"  {dev} (FP32 baseline {base}):")
        for c in d["candidates"]:
            if c.get("delta") is None:
                lines.append(f"    {c['precision']}: {c.get('note', 'not measured')}")
            else:
                lines.append(f"    {c['precision']}: delta {c['delta']:+.3f} {report['budget_unit']} "
                             f"(budget {report['budget']})")
    measured = any(c.get("delta") is not None for dev in short for c in report["devices"][dev]["candidates"])
    lines.append(("Raise --budget, add a more exact precision to --precision, or fix the model" if measured else
                  "No candidate was measured (each failed before: see above), so --budget cannot help: add a "
                  "precision that converts (fp32 is the exact one) to --precision, or fix the model")
                 + "; nothing was written at the bundle path.")
    return "\n".join(lines)
