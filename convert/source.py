"""Stage 1: locate the Paddle inference model (PIR `*.json` or legacy `*.pdmodel`, each with `*.pdiparams`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError

PIR_MAGIC = b'"magic":"pir"'


@dataclass(frozen=True)
class ModelSource:
    format: str          # "pir" | "legacy"
    model_file: Path
    params_file: Path

    @property
    def prefix(self) -> Path:
        return self.model_file.with_suffix("")


def _is_pir_json(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return PIR_MAGIC in head.replace(b" ", b"")


def _pair(model_file: Path) -> ModelSource:
    fmt = "pir" if model_file.suffix == ".json" else "legacy"
    params = model_file.with_suffix(".pdiparams")
    if not params.is_file():
        raise BadInputError(
            f"params file {params} not found next to {model_file.name}; a Paddle inference model is a program file "
            f"plus its weights ({model_file.stem}.pdiparams) — copy both, as saved by paddle.jit.save / "
            "paddle.static.save_inference_model")
    if params.stat().st_size == 0:
        raise BadInputError(f"params file {params} is empty (0 bytes); re-save or re-copy the model")
    return ModelSource(fmt, model_file, params)


def locate(path: str | Path) -> ModelSource:
    """Find the model in `path` (a program file, a params file, a path prefix, or a directory)."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted([p for p in path.glob("*.pdmodel")] + [p for p in path.glob("*.json") if _is_pir_json(p)])
        if not candidates:
            found = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "nothing"
            raise BadInputError(
                f"no Paddle model in {path}: expected a PIR program (*.json) or a legacy program (*.pdmodel) with "
                f"its *.pdiparams; found: {found}")
        if len(candidates) > 1:
            raise BadInputError(
                f"{path} holds {len(candidates)} Paddle models ({', '.join(p.name for p in candidates)}); "
                "pass the program file of the one to convert instead of the directory")
        return _pair(candidates[0])
    if path.is_file():
        if path.suffix == ".pdiparams":
            progs = [p for p in (path.with_suffix(".json"), path.with_suffix(".pdmodel")) if p.is_file()]
            progs = [p for p in progs if p.suffix == ".pdmodel" or _is_pir_json(p)]
            if len(progs) != 1:
                raise BadInputError(f"{path} is a params file; pass its program file (*.json or *.pdmodel) instead")
            return _pair(progs[0])
        if path.suffix == ".json":
            if not _is_pir_json(path):
                raise BadInputError(f"{path} is a JSON file but not a Paddle PIR program (no \"magic\":\"pir\" header); "
                                    "pass the model's program file (e.g. inference.json or model.json)")
            return _pair(path)
        if path.suffix == ".pdmodel":
            return _pair(path)
        raise BadInputError(
            f"{path} is not a Paddle model file: expected *.json (PIR) or *.pdmodel (legacy) with *.pdiparams")
    # a path prefix such as out/inference
    for suffix in (".json", ".pdmodel"):
        p = path.with_name(path.name + suffix)
        if p.is_file():
            return locate(p)
    raise BadInputError(f"{path} does not exist; pass a Paddle model directory or program file")
