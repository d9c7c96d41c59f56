"""Units of the validation gate: metrics, thresholds, sample generation, names. No Paddle needed."""
import numpy as np
import pytest

from paddle2ort.convert.errors import BadInputError, ValidationError
from paddle2ort.convert.graph import default_output_names, dim_names
from paddle2ort.convert.validate import (DEFAULT_THRESHOLDS, SampleConfig, Thresholds, compare, load_samples,
                                         make_samples, thresholds_with_overrides, violations)


def test_compare_identical_and_scaled():
    a = np.linspace(-3, 3, 60, dtype=np.float32).reshape(6, 10)
    m = compare(a, a.copy(), class_axis=True)
    assert m["max_abs_diff"] == 0 and m["cosine"] == pytest.approx(1.0) and m["argmax_agreement"] == 1.0
    b = a.copy()
    b[0, 0] += 0.3
    m = compare(a, b, class_axis=True)
    assert m["max_abs_diff"] == pytest.approx(0.3, rel=1e-5)
    assert m["max_rel_diff"] == pytest.approx(0.3 / 3.0, rel=1e-5)           # relative to the output scale
    assert violations(m, DEFAULT_THRESHOLDS["fp32"], exact=False)


def test_scale_floor_makes_near_zero_outputs_absolute():
    ref = np.full((2, 8), 1e-6, np.float32)
    got = ref + 5e-8
    m = compare(ref, got, class_axis=False)
    assert m["max_rel_diff"] == pytest.approx(5e-8, rel=1e-3)                # not 5% of 1e-6
    assert not violations(m, DEFAULT_THRESHOLDS["fp32"], exact=False)


def test_nonfinite_and_shape_mismatch_fail():
    ref = np.ones((2, 3), np.float32)
    got = ref.copy()
    got[1, 1] = np.nan
    assert any("NaN/Inf" in v for v in violations(compare(ref, got, True), DEFAULT_THRESHOLDS["fp16"], False))
    m = compare(ref, np.ones((2, 4), np.float32), True)
    assert violations(m, DEFAULT_THRESHOLDS["fp16"], False)[0].startswith("shape")


def test_argmax_agreement_counts_rows():
    ref = np.eye(4, dtype=np.float32)
    got = ref.copy()
    got[0] = [0, 2, 0, 0]
    m = compare(ref, got, class_axis=True)
    assert m["argmax_agreement"] == 0.75
    thr = Thresholds(min_argmax_agreement=0.9, fp32_exact=0)
    assert any("argmax" in v for v in violations(m, thr, exact=False))


def test_integer_outputs_must_match_exactly():
    ref = np.array([1, 2, 3])
    assert violations(compare(ref, np.array([1, 2, 4]), False), Thresholds(), exact=True)


def test_threshold_overrides():
    t = thresholds_with_overrides({"fp16.min_cosine": 0.5})
    assert t["fp16"].min_cosine == 0.5 and t["fp32"] == DEFAULT_THRESHOLDS["fp32"]
    with pytest.raises(BadInputError):
        thresholds_with_overrides({"fp64.min_cosine": 0.5})
    with pytest.raises(BadInputError):
        thresholds_with_overrides({"fp16.speed": 0.5})


def test_make_samples_seeded_shapes_and_id_ranges():
    specs = [{"name": "ids", "dtype": "int64", "shape": [-1, -1], "int_high": 30},
             {"name": "img", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    s1, s2 = make_samples(specs, SampleConfig(seed=7)), make_samples(specs, SampleConfig(seed=7))
    assert [x["ids"].shape for x in s1] == [(2, 64), (1, 32)]
    assert s1[0]["img"].shape == (2, 3, 64, 64)
    assert s1[0]["ids"].max() < 30 and s1[0]["ids"].dtype == np.int64
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(s1, s2) for k in a)
    fixed = make_samples(specs, SampleConfig(input_shapes={"img": (1, 3, 32, 96)}))
    assert fixed[0]["img"].shape == (1, 3, 32, 96)
    with pytest.raises(BadInputError, match="unknown input"):
        make_samples(specs, SampleConfig(input_shapes={"nope": (1,)}))


def test_load_samples_checks_names_and_dtypes(tmp_path):
    specs = [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
    p = tmp_path / "s.npz"
    np.savez(p, x=np.zeros((3, 4), np.float32))
    assert load_samples(p, specs)[0]["x"].shape == (3, 4)
    np.savez(p, **{"0/x": np.zeros((1, 4), np.float32), "1/x": np.zeros((2, 4), np.float32)})
    assert len(load_samples(p, specs)) == 2
    np.savez(p, y=np.zeros((3, 4), np.float32))
    with pytest.raises(BadInputError, match="must hold arrays named"):
        load_samples(p, specs)
    np.savez(p, x=np.zeros((3, 4), np.float64))
    with pytest.raises(BadInputError, match="expects float32"):
        load_samples(p, specs)


def test_names():
    assert dim_names("ids", "int64", [-1, -1]) == ["batch", "sequence"]
    assert dim_names("x", "float32", [-1, 3, -1, -1]) == ["batch", 3, "height", "width"]
    assert dim_names("y", "float32", [-1, -1, 97]) == ["batch", "y_dim1", 97]
    outs = [{"producer": "pd_op.softmax"}, {"producer": "pd_op.add"}, {"producer": "pd_op.add"}]
    assert default_output_names(outs) == ["softmax", "add_0", "add_1"]


def test_validation_error_names_output_and_figures():
    e = ValidationError("fp16", [{"output": "logits", "sample": 0, "violations": ["cosine 0.5 < 0.999"],
                                  "metrics": {"max_abs_diff": 1.0, "max_rel_diff": 0.5, "cosine": 0.5,
                                              "argmax_agreement": 0.25}}])
    assert "logits" in str(e) and "max_abs_diff=1" in str(e) and e.exit_code == 3
