"""`paddle2ort run`: over paddle2ort.runtime.arrays.ArrayModel (named arrays in, named arrays out)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import add_bundle_session_options, check_exists, check_output_file, command, session_options

SHOWN = 16                  # outputs of at most this many values are printed whole


def npz_of(names: list[str]):
    """`ours` for check_output_file: an .npz holding these outputs (NAME, or I/NAME: an earlier run's output)."""
    def ours(path: Path) -> bool:
        import zipfile
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return False
        if not isinstance(z, np.lib.npyio.NpzFile):
            return False                        # a single .npy array: not ours
        with z:
            keys = [k.split("/", 1)[-1] for k in z.files]
        return bool(keys) and set(keys) == set(names) and len(keys) % len(names) == 0
    return ours


def summary(name: str, a: np.ndarray) -> str:
    head = f"{name}: {a.dtype} {list(a.shape)}"
    if a.size <= SHOWN:
        return f"{head} = {np.array2string(a.ravel(), precision=6, separator=', ')}"
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        values, counts = np.unique(a, return_counts=True)
        top = sorted(zip(counts, values), reverse=True)[:5]
        return f"{head}, most frequent values: " + ", ".join(f"{v} x{c}" for c, v in top)
    finite = a[np.isfinite(a)]
    stats = (f"min {finite.min():.6g}, max {finite.max():.6g}, mean {finite.mean():.6g}" if finite.size
             else "no finite value")
    return f"{head}, {stats}" + (f", {a.size - finite.size} NaN/Inf" if finite.size < a.size else "")


def run(args) -> int:
    from paddle2ort.runtime.arrays import ArrayModel, join_samples, load_arrays, sample_groups
    from paddle2ort.runtime.files import atomic_open
    from paddle2ort.runtime.manifest import load_bundle

    check_exists(args.inputs, "--inputs")
    m = load_bundle(args.bundle, verify=False).manifest       # names first (the model's checksum when it loads)
    where = f"--inputs {args.inputs}"
    samples = sample_groups(load_arrays(args.inputs), [i.name for i in m.inputs], where)
    check_output_file(args.output, "--output", inputs=(args.inputs,), ours=npz_of([o.name for o in m.outputs]),
                      bundles=(args.bundle,))
    model = ArrayModel(args.bundle, precision=args.precision, session=session_options(args))
    outs = [model(s, where=where + (f" (sample {i})" if len(samples) > 1 else ""))
            for i, s in enumerate(samples)]            # every sample runs before anything is written
    joined = join_samples(outs)
    if args.output is not None:
        with atomic_open(args.output, "wb") as f:         # all or nothing
            np.savez(f, **joined)
    for name, a in joined.items():
        print(summary(name, a))
    return 0


def register(sub) -> None:
    r = command(sub, "run", "run any bundle's model on named arrays (.npz in, .npz out)",
                "paddle2ort run bundles/seg --inputs image.npz --output labels.npz\n"
                "paddle2ort run bundles/mlp --inputs x.npz --precision int8",
                description="Run a bundle's model (any task: a segmenter, an image classifier, a model no task "
                            "command knows) on the arrays of an .npz file named after its inputs (or I/NAME for "
                            "several samples, as the bundle's validation_inputs.npz holds them). The arrays are "
                            "checked against the manifest before the model runs: names, dtypes (cast within a "
                            "kind: float64 to float32, int32 to int64), ranks and static sizes; every problem is "
                            "exit 2, named. Each output is printed (its values when "
                            "small, else its range or most frequent values); --output writes them all to an .npz "
                            "(all or nothing). Runs without Paddle.")
    r.add_argument("bundle", type=Path, help="the bundle directory")
    r.add_argument("--inputs", type=Path, required=True, help=".npz file of the model's inputs, by name (the "
                   "bundle's validation_inputs.npz is one)")
    r.add_argument("--output", type=Path, help="write the outputs, by name, to this .npz file")
    add_bundle_session_options(r)
    r.set_defaults(func=run)
