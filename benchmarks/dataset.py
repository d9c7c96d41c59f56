"""Classification datasets in the seed format: label.txt, dev.txt / test.txt (`text<TAB>label`), optional data.txt."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.textio import read_utf8_lines

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class LabelledSplit:
    name: str
    texts: list[str]
    labels: list[int]          # indices into label_names
    label_names: list[str]


def _read_lines(path: Path) -> list[str]:
    return read_utf8_lines(path, "a dataset directory holds label.txt and dev.txt/test.txt (text<TAB>label a line)")


def read_labels(dataset_dir: Path) -> list[str]:
    names = [ln.strip() for ln in _read_lines(Path(dataset_dir) / "label.txt") if ln.strip()]
    if not names:
        raise BadInputError(f"{dataset_dir}/label.txt has no labels (one label a line)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BadInputError(f"{dataset_dir}/label.txt lists {dup} more than once")
    return names


def load_split(dataset_dir: str | Path, split: str = "dev") -> LabelledSplit:
    """Read one labelled split; every malformed line is an error naming file, line and fix."""
    if split not in SPLITS:
        raise BadInputError(f"split must be one of {SPLITS}, got {split!r}")
    d = Path(dataset_dir)
    if not d.is_dir():
        raise BadInputError(f"dataset directory {d} " + ("is a file; give the folder holding label.txt and dev.txt/"
                                                         "test.txt" if d.exists() else "does not exist"))
    names = read_labels(d)
    index = {n: i for i, n in enumerate(names)}
    path = d / f"{split}.txt"
    texts, labels = [], []
    for no, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise BadInputError(f"{path}:{no} has no TAB: each line is `text<TAB>label` "
                                f"(got {line[:60]!r})")
        text, label = line.rsplit("\t", 1)
        label = label.strip()
        if label not in index:
            raise BadInputError(f"{path}:{no}: label {label!r} is not in label.txt {names}; "
                                "add it to label.txt or fix the line")
        texts.append(text)
        labels.append(index[label])
    if not texts:
        raise BadInputError(f"{path} has no examples")
    return LabelledSplit(split, texts, labels, names)
