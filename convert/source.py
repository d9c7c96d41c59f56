"""Stage 1: locate the Paddle inference model: PIR `*.json` or legacy `*.pdmodel`, each with `*.pdiparams`, or a
Paddle 1.x inference directory (`__model__` with `__params__` or with one file per variable), which `prepare`
re-saves as a legacy model in the work directory (Paddle's own loader and saver, in the worker)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError

PIR_MAGIC = b'"magic":"pir"'
# Paddle 1.x inference directories: (program file, combined params file) as save_inference_model named them.
FLUID_NAMES = (("__model__", "__params__"), ("model", "params"))


@dataclass(frozen=True)
class ModelSource:
    format: str                  # "pir" | "legacy" | "fluid1" (Paddle 1.x directory)
    model_file: Path
    params_file: Path | None     # None: a 1.x directory with one file per variable (before `prepare`)
    original: tuple[Path, ...] = ()   # the user's files when model_file/params_file are a re-saved copy

    @property
    def prefix(self) -> Path:
        return self.model_file.with_suffix("")

    @property
    def user_files(self) -> tuple[Path, ...]:
        """The files the user gave (never written to; hashed into the manifest)."""
        if self.original:
            return self.original
        if self.params_file is None:
            return tuple(sorted(p for p in self.model_file.parent.iterdir() if p.is_file()))
        return (self.model_file, self.params_file)

    def describe(self) -> dict:
        """The manifest's record of the source: format, file names and their sha256."""
        from paddle2ort.runtime.manifest import sha256_file
        files = self.user_files
        return {"format": self.format, "model_file": files[0].name,
                "params_file": files[1].name if len(files) == 2 else f"{len(files) - 1} per-variable files",
                "sha256": {p.name: sha256_file(p) for p in files}}


def _fluid_dir(path: Path) -> ModelSource | None:
    """A Paddle 1.x inference directory, or None."""
    for model_name, params_name in FLUID_NAMES:
        model, params = path / model_name, path / params_name
        if model_name == "__model__" and model.is_file():
            return ModelSource("fluid1", model, params if params.is_file() else None)
        if model.is_file() and params.is_file():
            return ModelSource("fluid1", model, params)
    return None


def prepare(source: ModelSource, workdir: Path) -> ModelSource:
    """A source the exporter reads: a 1.x directory is loaded and re-saved as PREFIX.pdmodel/.pdiparams in
    `workdir`; the others are returned as they are."""
    if source.format != "fluid1" or source.original:
        return source
    from .paddle_proc import run_worker
    res = run_worker("resave_fluid", {"dir": str(source.model_file.parent), "model_filename": source.model_file.name,
                                      "params_filename": source.params_file.name if source.params_file else None,
                                      "out_prefix": str(workdir / "fluid1_resaved")}, workdir)
    return ModelSource("fluid1", Path(res["model_file"]), Path(res["params_file"]), original=source.user_files)


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


def _checkpoint_hint(path: Path) -> str:
    """A PaddleNLP checkpoint (config.json beside *.pdparams / *.safetensors: save_pretrained's output) is no
    inference program: name the command that converts it, from config.json's architectures / model_type."""
    if not (path / "config.json").is_file() or not (any(path.glob("*.pdparams")) or any(path.glob("*.safetensors"))):
        return ""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = None
    if isinstance(cfg, dict):
        from .llm import families as llm
        from .seq2seq import families as s2s
        # seq2seq first: ChatGLM v1 is refused by convert-llm and converted by convert-seq2seq
        for family, command in ((s2s, "convert-seq2seq"), (llm, "convert-llm")):
            try:
                family.family_name(cfg)
            except family.UnsupportedFamily:
                continue
            return (f". {path} is a checkpoint (config.json + weights) of a model that `paddle2ort {command} {path} "
                    "--tokenizer TOKENIZER_DIR -o BUNDLE` converts (a PaddleNLP model directory)")
    return (f". {path} is a model checkpoint (config.json + weights, save_pretrained's output), not an inference "
            "model: load it in PaddleNLP and export one (model = paddle.jit.to_static(model, input_spec=[...]); "
            "paddle.jit.save(model, 'inference/model')), then convert that directory")


def _programs(folder: Path) -> list[Path]:
    """The program files of a folder: *.pdmodel and PIR *.json, not macOS' AppleDouble companions (._name, written
    beside every file a Mac copies to a foreign disk or zip); where several remain, those with their *.pdiparams."""
    progs = sorted(p for p in [*folder.glob("*.pdmodel"), *(j for j in folder.glob("*.json") if _is_pir_json(j))]
                   if not p.name.startswith("._"))
    paired = [p for p in progs if p.with_suffix(".pdiparams").is_file()]
    return paired if len(progs) > 1 and paired else progs


def _holds_model(folder: Path) -> bool:
    """Whether locate() would find a model in this folder (no message: a hint for the folder above)."""
    try:
        return bool(_programs(folder)) or _fluid_dir(folder) is not None
    except (OSError, BadInputError):
        return False


def locate(path: str | Path) -> ModelSource:
    """Find the model in `path` (a program file, a params file, a path prefix, or a directory)."""
    path = Path(path)
    if path.is_dir() and _fluid_dir(path) is not None:
        return _fluid_dir(path)
    if path.is_file() and path.name in {m for m, _ in FLUID_NAMES} and _fluid_dir(path.parent) is not None:
        return _fluid_dir(path.parent)
    if path.is_dir():
        candidates = _programs(path)
        if not candidates:
            found = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "nothing"
            below = [d.name for d in sorted(path.iterdir()) if d.is_dir() and _holds_model(d)]
            where = (f"; a model is in the subfolder(s) {', '.join(below)}: pass that folder" if below else "")
            raise BadInputError(
                f"no Paddle model in {path}: expected a PIR program (*.json) or a legacy program (*.pdmodel) with "
                f"its *.pdiparams, or a Paddle 1.x directory (__model__ with __params__ or per-variable files); "
                f"found: {found}{where}{_checkpoint_hint(path)}")
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
                raise BadInputError(f"{path} is a JSON file but not a Paddle PIR program (no \"magic\":\"pir\" "
                                    "header); pass the model's program file (e.g. inference.json or model.json)")
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
    if path.exists():                     # a device, a pipe or a socket: neither a folder nor a file
        raise BadInputError(f"{path} is neither a directory nor a regular file; pass a Paddle model directory or "
                            "program file")
    raise BadInputError(f"{path} does not exist; pass a Paddle model directory or program file")


def read_yaml(path: Path, bad) -> object:
    """A suite's YAML file beside the model (PaddleDetection's infer_cfg.yml, PaddleSeg's deploy.yaml), parsed
    with PyYAML's safe_load; `bad(message)` makes the error for a file that cannot be read as YAML."""
    import yaml
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise bad(f"cannot be read as YAML ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def unknown_ops(ops: list, known, what: str, bad) -> tuple[str, ...]:
    """A suite config's op list checked to be mappings with a `type` (`bad(message)` names op N as `what` N);
    -> the types not in `known`, in order of first use."""
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("type"), str):
            raise bad(f"{what} {i + 1} is {op!r:.80}, not a mapping with a type")
    return tuple(dict.fromkeys(op["type"] for op in ops if op["type"] not in known))
