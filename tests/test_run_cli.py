"""`paddle2ort run` / runtime.arrays.ArrayModel: any bundle's model on named arrays (here a tiny PaddleSeg-style
segmenter, which no task command runs). Feeds are checked against the manifest before the model runs, each problem
named with its fix; outputs are written all or nothing, never inside the bundle or over a file we did not write."""
import numpy as np
import pytest

from paddle2ort.cli import main
from paddle2ort.runtime.arrays import ArrayModel, check_feeds, sample_groups
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.manifest import TensorSpec, load_bundle
from paddle2ort.runtime.session import create_session


@pytest.fixture(scope="module")
def seg_bundle(tiny_models, tmp_path_factory):
    from paddle2ort.convert import ConvertConfig, convert
    out = tmp_path_factory.mktemp("run") / "seg"
    convert(ConvertConfig(source=tiny_models("segmenter"), output=out, precisions=("fp32", "int8")))
    return out


def test_runs_the_gates_samples_and_matches_onnxruntime(seg_bundle, tmp_path, capsys):
    out = tmp_path / "labels.npz"
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(seg_bundle / "validation_inputs.npz"),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0/argmax: int32" in printed and "most frequent values" in printed
    samples = dict(np.load(seg_bundle / "validation_inputs.npz"))
    sess = create_session(load_bundle(seg_bundle).model_path("fp32"))
    with np.load(out) as got:
        assert sorted(got.files) == sorted(k.replace("/x", "/argmax") for k in samples)
        for key in samples:
            want = sess.run(None, {"x": samples[key]})[0]
            assert np.array_equal(got[key.replace("/x", "/argmax")], want)
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)          # the mode open() gives, not mkstemp's


def test_one_sample_by_plain_names_and_another_precision(seg_bundle, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48))          # float64: cast within its kind
    np.savez(tmp_path / "x.npz", x=x)
    model = ArrayModel(seg_bundle, precision="int8")
    labels = model({"x": x})["argmax"]
    assert labels.shape == (1, 1, 48, 48) and labels.dtype == np.int32
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(tmp_path / "x.npz"), "--precision", "int8",
                 "--output", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as got:
        assert got.files == ["argmax"] and np.array_equal(got["argmax"], labels)
    capsys.readouterr()
    # re-running replaces our own earlier output
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(tmp_path / "x.npz"),
                 "--output", str(tmp_path / "y.npz")]) == 0


@pytest.mark.parametrize("arrays, message", [
    ({"image": np.zeros((1, 3, 48, 48), np.float32)}, "must hold arrays named ['x']"),
    ({"x": np.zeros((1, 3, 48, 48), np.float32), "y": np.zeros(2)}, "it has ['x', 'y']"),
    ({"x": np.zeros((1, 3, 48, 48), np.uint8)}, "is not normalized"),
    ({"x": np.zeros((3, 48, 48), np.float32)}, "has 3 dims [3, 48, 48], the model takes 4"),
    ({"x": np.zeros((1, 3, 32, 48), np.float32)}, "size 32 on axis 2, the model was exported for 48"),
])
def test_bad_feeds_are_named_before_the_model_runs(seg_bundle, tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "in.npz", **arrays)
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out.npz").exists()


def test_outputs_that_would_damage_something_are_refused(seg_bundle, tmp_path, capsys):
    inputs = seg_bundle / "validation_inputs.npz"
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(inputs), "--output", str(seg_bundle / "o.npz")]) == 2
    assert "inside the bundle" in capsys.readouterr().err
    load_bundle(seg_bundle)                                                   # still whole
    mine = tmp_path / "notes.npz"
    mine.write_bytes(b"my own notes")
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(inputs), "--output", str(mine)]) == 2
    assert "not an output of this command" in capsys.readouterr().err and mine.read_bytes() == b"my own notes"
    copy = tmp_path / "in.npz"
    copy.write_bytes(inputs.read_bytes())
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(copy), "--output", str(copy)]) == 2
    assert "would destroy the input" in capsys.readouterr().err
    not_npz = tmp_path / "in.txt"
    not_npz.write_text("x = 1")
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(not_npz)]) == 2
    assert "not a readable .npz file" in capsys.readouterr().err


@pytest.mark.unit
def test_check_feeds_names_every_problem_and_casts_within_a_kind():
    specs = [TensorSpec("ids", "int64", ("batch", "seq")), TensorSpec("mask", "int64", ("batch", "seq")),
             TensorSpec("scale", "float32", ("batch", 2))]
    ok = check_feeds(specs, {"ids": np.ones((2, 5), np.int32), "mask": np.ones((2, 5), np.int64),
                             "scale": np.ones((2, 2))})
    assert ok["ids"].dtype == np.int64 and ok["scale"].dtype == np.float32
    with pytest.raises(BadInputError) as e:
        check_feeds(specs, {"ids": np.ones((2, 5), np.int64), "mask": np.ones((3,), np.int64),
                            "scale": np.ones((2, 3), np.float32)})
    assert "mask has 1 dims [3], the model takes 2: [batch, seq]" in str(e.value)
    assert "scale has size 3 on axis 1, the model was exported for 2" in str(e.value)
    check_feeds(specs, {"ids": np.ones((2, 5), np.int64), "mask": np.ones((3, 7), np.int64),   # dim names are
                        "scale": np.ones((4, 2), np.float32)})                                 # guesses: unchecked
    with pytest.raises(BadInputError, match="beyond int32"):
        check_feeds([TensorSpec("ids", "int32", ("n",))], {"ids": np.array([2 ** 40])})
    with pytest.raises(BadInputError, match=r"ids is float32, the model takes int64"):
        check_feeds(specs[:1], {"ids": np.ones((1, 2), np.float32)})


@pytest.mark.unit
def test_sample_groups_read_numbered_samples_in_order():
    data = {f"{i}/x": np.full(1, i) for i in (0, 1, 2, 10)}
    assert [int(g["x"][0]) for g in sample_groups(data, ["x"], "f")] == [0, 1, 2, 10]
    with pytest.raises(BadInputError, match="must hold arrays named"):
        sample_groups({**data, "3/y": np.zeros(1)}, ["x"], "f")
    assert len(sample_groups({**data, "0/y": np.zeros(1)}, ["x"], "f", strict=False)) == 4   # convert --inputs


def test_a_single_npy_array_is_named(seg_bundle, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 48, 48), np.float32))
    assert main(["-q", "run", str(seg_bundle), "--inputs", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "is a single .npy array" in err and "Traceback" not in err
