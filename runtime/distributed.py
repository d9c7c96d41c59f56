"""Batch jobs on Ray (`paddle2ort classify --input ... --ray [ADDRESS]`, `paddle2ort generate --data-file ... --ray`).

The driver reads and checks every input line first (the single-process jobs' readers and checks: one clear error
before any actor starts), then cuts the work into exactly the chunks the single-process job runs (so each chunk's
batch, and with it every result, is the same), and hands them to Ray Data: `from_items(chunks).map_batches(actor
class, ...)` over an actor pool of sessions, one actor per GPU (num_gpus=1) or per N CPU cores (num_cpus=N, N
intra-op threads). Results stream back in input order (preserve_order) through `iter_rows()` while later chunks
still run, and are written as the single-process job writes them (classify: one atomic file at the end; generate:
atomically after every chunk, with the same job key and line hashes, so a rerun - with or without Ray - resumes).

With no address a local Ray is started here (no dashboard, no usage stats) and shut down at the end; with one
(`auto`, `HOST:6379`, `ray://HOST:10001`: Ray Client, pip install 'ray[client]==2.60.0', which the ray extra does
not pin) the job joins that cluster, whose nodes must have paddle2ort installed
and the bundle at the same path. A Ray already initialised in this process is used as is.

Ray is imported only here, and only when a job asks for it: the runtime works without it (`pip install
'paddle2ort[ray]'`). Written over Ray Data's public API; nothing of Ray is reimplemented.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import BadInputError, Paddle2OrtError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'paddle2ort[ray]'"


DEFAULT_CPUS_PER_ACTOR = 4


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None            # None or "": start a local Ray; else the cluster to join
    cpus_per_actor: int | None = None     # CPU jobs: one session per this many cores (its intra-op threads);
    #                                       None: DEFAULT_CPUS_PER_ACTOR, or the cluster's CPUs where it has fewer
    num_cpus: int | None = None           # local start only: cores Ray may use (default: all)
    max_actors: int | None = None         # at most this many sessions (default: as many as the cluster holds)

    def __post_init__(self):
        if self.cpus_per_actor is not None and (isinstance(self.cpus_per_actor, bool) or
                                                not isinstance(self.cpus_per_actor, int) or self.cpus_per_actor < 1):
            raise BadInputError(f"cpus_per_actor must be >= 1, got {self.cpus_per_actor}")
        for name in ("num_cpus", "max_actors"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise BadInputError(f"{name} must be >= 1, got {v}")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BadInputError(f"--ray needs Ray Data ({e.name} is not installed): {INSTALL_HINT}") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) where nothing accepts a connection is refused at once: ray.init retries a
    closed local port for ever (`auto` and other forms are left to Ray)."""
    import socket
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise BadInputError(f"nothing answers at {address} ({e.strerror or e}); start the cluster with `ray start "
                            "--head` there, or give its address (auto, HOST:6379, ray://HOST:10001)") from None


class _Cluster:
    """Connected to Ray for the block; a Ray started here is shut down at its end."""

    def __init__(self, cfg: RayConfig):
        self.cfg, self.started = cfg, False

    def __enter__(self):
        ray = self.ray = _ray()
        if ray.is_initialized():
            return self
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kw = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
        if self.cfg.address:
            check_reachable(self.cfg.address)
            try:
                ray.init(address=self.cfg.address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise BadInputError(f"cannot join the Ray cluster at {self.cfg.address} ({e}); start it with "
                                    "`ray start --head` or give its address (auto, HOST:6379, ray://HOST:10001)") \
                    from None
        else:
            ray.init(num_cpus=self.cfg.num_cpus, **kw)
            self.started = True
        return self

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()

    def pool(self, device: str, chunks: int) -> tuple[int, dict]:
        """(actors, per-actor resources): one per GPU, or one per cpus_per_actor cores; at most one per chunk."""
        res = self.ray.cluster_resources()
        if device == "gpu":
            n, need = int(res.get("GPU", 0)), {"num_gpus": 1}
            if n < 1:
                raise BadInputError("--device gpu with --ray: the Ray cluster has no GPUs; join one that has, or "
                                    "use --device cpu")
        else:
            cpus = int(res.get("CPU", 0))
            per = self.cfg.cpus_per_actor or max(min(DEFAULT_CPUS_PER_ACTOR, cpus), 1)
            n, need = cpus // per, {"num_cpus": per}
            if n < 1:
                raise BadInputError(f"the Ray cluster has {cpus} CPUs, fewer than one actor's {per} "
                                    "(--ray-cpus-per-actor): lower it")
        n = min(n, chunks, self.cfg.max_actors or n)
        log.info("Ray: %d actor%s (%s each) over %d chunk%s", n, "s" if n > 1 else "",
                 ", ".join(f"{k[4:]}={v}" for k, v in need.items()), chunks, "s" if chunks > 1 else "")
        return max(n, 1), need


def _stream(ray, chunks: list[str], actor_cls, ctor: dict, actors: int, need: dict) -> Iterator[list]:
    """Each chunk (a JSON string) through the actor pool; results (decoded JSON) in input order as they come."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items([{"i": i, "chunk": c} for i, c in enumerate(chunks)],
                             override_num_blocks=len(chunks))
    ds = ds.map_batches(actor_cls, fn_constructor_kwargs=ctor, batch_size=1, batch_format="pandas",
                        compute=ray.data.ActorPoolStrategy(size=actors), **need)
    want = 0
    for row in ds.iter_rows():
        if int(row["i"]) != want:                       # preserve_order is the contract; checked, not assumed
            raise RuntimeError(f"Ray Data returned chunk {row['i']} where chunk {want} was due")
        want += 1
        yield json.loads(row["out"])


def _session(device: str, threads: int, need: dict) -> dict:
    return dict(device=device, device_id=0,            # Ray gives each GPU actor one visible device
                intra_op_threads=threads or int(need.get("num_cpus", 0)))     # a CPU actor: its cores


# ----------------------------------------------------------------------------- classify
class ClassifyActor:
    """One TextClassifier session; a batch is one chunk (the texts the single-process job classifies at once)."""

    def __init__(self, bundle: str, precision: str | None, batch_size: int, session: dict):
        from .pipelines import TextClassifier
        from .session import SessionOptions
        self.clf = TextClassifier(bundle, precision=precision, batch_size=batch_size,
                                  session=SessionOptions(**session))

    def __call__(self, batch):
        outs = []
        for c in batch["chunk"]:
            preds = self.clf(json.loads(c))
            outs.append(json.dumps([[p.label, p.score] for p in preds]))
        batch = batch[["i"]].copy()
        batch["out"] = outs
        return batch


def classify_job(bundle: Path, texts: list[str], chunk_size: int, precision: str | None, batch_size: int,
                 device: str, threads: int, cfg: RayConfig) -> list[tuple[str, float]]:
    """(label, score) per text, in order: the chunks of classify_all, each classified by one actor."""
    chunks = [json.dumps(texts[s:s + chunk_size], ensure_ascii=False) for s in range(0, len(texts), chunk_size)]
    out: list[tuple[str, float]] = []
    with _Cluster(cfg) as cl:
        actors, need = cl.pool(device, len(chunks))
        ctor = dict(bundle=str(Path(bundle).resolve()), precision=precision, batch_size=batch_size,
                    session=_session(device, threads, need))
        for got in _stream(cl.ray, chunks, ClassifyActor, ctor, actors, need):
            out += [(label, float(score)) for label, score in got]
    return out


# ----------------------------------------------------------------------------- generate
class GenerateActor:
    """One TextGenerator session; a batch is one chunk of (line, prompt ids) - one batch of the single-process
    job - and its answers come back decoded and cut at stop strings, as that job writes them."""

    def __init__(self, bundle: str, precision: str, graph: str, cfg: dict, session: dict):
        from .generation import GenerationConfig
        from .llm import TextGenerator
        from .session import SessionOptions
        self.gen = TextGenerator(bundle, precision=precision, session=SessionOptions(**session), graph=graph)
        self.cfg = GenerationConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})

    def __call__(self, batch):
        outs = []
        for c in batch["chunk"]:
            ids = json.loads(c)
            got = self.gen.generate_token_ids(ids, self.cfg)
            outs.append(json.dumps([self.cfg.cut(self.gen.tokenizer.decode(o)) for o in got],
                                   ensure_ascii=False))
        batch = batch[["i"]].copy()
        batch["out"] = outs
        return batch


class JobPlan:
    """What the driver needs to check and key a generation job without a session (the tokenizer, the context
    limit, the bundle's stop ids): the attributes of runtime.llm.TextGenerator that runtime.jobs reads."""

    def __init__(self, bundle_dir: Path, precision: str, graph: str, device: str = "cpu"):
        from paddle2ort.tokenization.bpe import BPETokenizer

        from .errors import BundleError
        from .llm import TextGenerator, bundle_stop_ids, default_graph, fused_model
        from .manifest import load_bundle
        from .session import SessionOptions
        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        if m.task != "text-generation" or "llm" not in m.extra:
            raise BundleError(f"bundle {bundle_dir} is not a text-generation bundle (task={m.task!r})")
        llm = m.extra["llm"]
        self.tokenizer = BPETokenizer.load(self.bundle.path / "tokenizer")
        if graph == "auto":                                       # as TextGenerator resolves it
            graph = default_graph(llm, precision, SessionOptions(device=device), fused=m.extra.get("fused"))
        self.graph, self.default_stop_ids = graph, bundle_stop_ids(llm, self.tokenizer)
        if graph in ("fused", "kernels"):
            _, spec = fused_model(self.bundle, precision)
            self.context = min(spec["max_positions"], 4096)      # the fused decoders' capacity without max_length
        else:
            self.bundle.model_path(precision, verify=False)       # a missing precision: the bundle's error, now
            self.context = llm["max_context"]
        self.model = type("Context", (), {"max_context": self.context})()
        self._generator = TextGenerator

    def prompt_ids(self, prompt: str, chat: bool = False) -> list[int]:
        return self._generator.prompt_ids(self, prompt, chat)

    def stop_ids(self, cfg):
        return self._generator.stop_ids(self, cfg)


def generate_job(bundle: Path, data_file: Path, output_file: Path, cfg, batch_size: int, src_length: int | None,
                 chat: bool, precision: str, graph: str, device: str, threads: int, rcfg: RayConfig) -> int:
    """runtime.jobs.run_jsonl_job on Ray: the same checks, chunks, records and resume. -> prompts in output_file."""
    import dataclasses

    from .jobs import _write_atomic, job_key, load_done, prepare, read_jsonl_lines
    from .signals import sigterm_as_interrupt
    data_file, output_file = Path(data_file), Path(output_file)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"batch_size must be >= 1, got {batch_size}")
    if output_file.resolve() == data_file.resolve():
        raise BadInputError(f"--output-file {output_file} is the input file; choose another path")
    plan = JobPlan(bundle, precision, graph, device)
    lines = read_jsonl_lines(data_file)
    cfg = plan.stop_ids(cfg)
    ids = prepare(plan, lines, data_file, cfg, src_length, chat)
    key = job_key(plan, cfg, src_length, chat)
    done = load_done(output_file, lines, key)
    if done:
        log.info("resuming: %d of %d lines already in %s", len(done), len(lines), output_file)
    todo = [(j, t) for j, t in zip(lines, ids) if j.line not in done]
    chunks = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    with sigterm_as_interrupt():
        if chunks:
            with _Cluster(rcfg) as cl:
                actors, need = cl.pool(device, len(chunks))
                ctor = dict(bundle=str(Path(bundle).resolve()), precision=precision, graph=plan.graph,
                            cfg=dataclasses.asdict(cfg), session=_session(device, threads, need))
                stream = _stream(cl.ray, [json.dumps([t for _, t in c]) for c in chunks], GenerateActor, ctor,
                                 actors, need)
                try:
                    for chunk, outs in zip(chunks, stream):
                        for (j, _), o in zip(chunk, outs):
                            done[j.line] = {"src": j.text, "output": o, "line": j.line, "input_sha256": j.sha256,
                                            "job": key}
                        _write_atomic(output_file, [done[k] for k in sorted(done)])
                except Exception as e:
                    kept = f"{len(done)} finished result(s) kept in {output_file}" if done else "no results yet"
                    raise Paddle2OrtError(f"{data_file}: generation on Ray failed ({type(e).__name__}: "
                                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); {kept}; "
                                          "rerun the same command to resume") from e
                finally:         # zip leaves the stream suspended in Ray Data's iterator: close it while Ray is up
                    stream.close()
        else:
            _write_atomic(output_file, [done[k] for k in sorted(done)])
    return len(done)


__all__ = ["ClassifyActor", "GenerateActor", "JobPlan", "RayConfig", "classify_job", "generate_job"]
