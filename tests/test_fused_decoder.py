"""The fused decoder graphs (LLaMA and GPT-2; GroupQueryAttention, skip layer norms, MatMulNBits) under the one
decode loop, on CPU: parity with Paddle and with the generic paddle2onnx export (greedy, seeded sampling, beams,
multi-turn); bad input. (On the GPU: tests/test_kernels.py and `python -m paddle2ort.benchmarks.gpu check`.)"""
import numpy as np
import pytest

from paddle2ort.convert.llm.fused import DecoderSpec, build_decoder
from paddle2ort.convert.llm.reference import paddle_greedy
from paddle2ort.runtime.errors import BadInputError, BundleError
from paddle2ort.runtime.fused import FusedDecoder
from paddle2ort.runtime.generation import Generator, GenerationConfig, generate
from paddle2ort.runtime.session import SessionOptions
from paddle2ort.runtime.llm import TextGenerator

from near_tie import (NearTieBeams, beam_clear_divergences, clear_divergences, fused_logits_of, greedy_reference,
                      paddle_margins, path_margins, teacher_forced_logits)
from test_llm_tiny import PROMPTS


@pytest.fixture(scope="module")
def llama(llm_bundles):  # noqa: F811
    src, dest, manifest = llm_bundles["llama"]
    gen = TextGenerator(dest)
    return src, dest, manifest, [gen.tokenizer.encode(p) for p in PROMPTS], gen


def test_manifest_records_gated_fused_decoders(llama):
    _, dest, m, _, _ = llama
    fused = m.extra["fused"]
    assert set(fused) == {"fp32", "fp16", "int4"}
    for prec, e in fused.items():
        assert (dest / e["file"]).is_file() and e["options"]["graph"] == "fused"
        assert e["validation"]["passed"] and e["validation"]["samples"] == 4       # prefill + 3 decode steps
    assert fused["fp32"]["validation"]["max_rel_diff"] <= 1e-4
    assert fused["fp16"]["validation"]["min_cosine"] >= 0.999
    assert fused["fp16"]["options"]["head_dtype"] == "float32"                # the default: fp32 logits on fp16
    assert fused["int4"]["options"]["head_dtype"] == "float16"
    assert fused["int4"]["options"]["weight_only"]["bits"] == 4
    ops = __import__("onnx").load(str(dest / fused["int4"]["file"]), load_external_data=False).graph.node
    kinds = {n.op_type for n in ops}
    from paddle2ort.convert.precision import nbits_of
    bits = nbits_of(__import__("onnx").load(str(dest / fused["int4"]["file"])))
    assert bits.pop("lm_head_Q8") == 8 and set(bits.values()) == {4}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "MatMulNBits"} <= kinds and "MatMul" not in kinds


def test_fused_greedy_is_token_identical_to_paddle_and_the_generic_export(llama):
    """The generic export and the fused graph (batched, right-padded, and one at a time) give Paddle's greedy
    tokens, up to a near-tie of Paddle's (tests/near_tie.py)."""
    src, dest, _, ids, gen = llama
    want = paddle_greedy(src / "model", ids, 10)
    # the gates hold both fp32 graphs' logits to Paddle's within 1e-4 (max_rel_diff): 1e-3 of the range is plenty
    margins, eps = paddle_margins(src / "model", ids, want, 1e-3)
    cfg = GenerationConfig(max_new_tokens=10)
    fused = TextGenerator(dest, graph="fused")
    for got in (generate(gen.model, ids, cfg, gen.tokenizer.pad_token_id), fused.generate_token_ids(ids, cfg),
                [fused.generate_token_ids([i], cfg)[0] for i in ids]):
        assert not clear_divergences(got, want, margins, eps), (got, want)


def test_fused_prefill_logits_match_the_generic_export(llama):
    _, dest, m, ids, gen = llama
    from paddle2ort.runtime.llm import fused_model
    path, spec = fused_model(gen.bundle, "fp32")
    dec = FusedDecoder(path, spec, max_length=64)
    st = dec.state(1)
    for p in ids:
        logits, rows = dec.prefill(st, [p], gen.tokenizer.pad_token_id)
        mask = np.ones((1, len(p)), np.int64)
        want, _ = gen.model(np.array([p]), mask, np.arange(len(p))[None], np.zeros((0, m.extra["llm"]["num_layers"],
                            2, 1, spec["kv_heads"], spec["head_dim"]), np.float32))
        np.testing.assert_allclose(logits, want[0], rtol=0, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_fused_loop_streams_stops_and_samples_reproducibly(llama):
    _, dest, _, ids, gen = llama
    fused = TextGenerator(dest, graph="fused")
    greedy = fused.generate_token_ids(ids, GenerationConfig(max_new_tokens=10))
    alone = fused.generate_token_ids(ids[:1], GenerationConfig(max_new_tokens=10))[0]   # what the row-1 runs compute
    stop = alone[3]
    cut = fused.generate_token_ids(ids[:1], GenerationConfig(max_new_tokens=10, stop_token_ids=(stop,)))
    assert cut == [alone[:alone.index(stop)]]
    cfg = GenerationConfig(max_new_tokens=10, min_new_tokens=10, stop_token_ids=(stop,))
    assert len(fused.generate_token_ids(ids[:1], cfg)[0]) == 10                   # stop suppressed below min_new
    s = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=50, top_p=0.9, seed=11,
                         repetition_penalty=1.3)
    a, b = fused.generate_token_ids(ids, s), fused.generate_token_ids(ids, s)
    assert a == b and a != greedy and all(len(r) == 12 for r in a)
    streamed: dict[int, list[int]] = {}
    out = generate(fused.model, ids, GenerationConfig(max_new_tokens=6), gen.tokenizer.pad_token_id,
                   streamer=lambda row, tok: streamed.setdefault(row, []).append(tok))
    assert [streamed[i] for i in range(len(ids))] == out
    text = "".join(fused.stream(PROMPTS[0], GenerationConfig(max_new_tokens=10)))
    assert text == gen.tokenizer.decode(alone)


def test_generate_batch_size_with_prompts_and_a_job_from_stdin(llama, tmp_path, capsys, monkeypatch):
    """--batch-size splits several --prompt into batches;
    --data-file - reads the job from standard input (and resumes from its lines' hashes like a file's)."""
    import io
    import json

    from paddle2ort.cli import main
    _, dest, *_ = llama
    argv = ["-q", "generate", str(dest), "--prompt", "hello", "--prompt", "the cat sat", "--prompt", "a b c",
            "--max-new-tokens", "4"]
    from paddle2ort.runtime.llm import TextGenerator
    sizes, call = [], TextGenerator.__call__
    monkeypatch.setattr(TextGenerator, "__call__", lambda self, ps, *a, **k: sizes.append(len(ps)) or call(self, ps, *a,
                                                                                                            **k))
    capsys.readouterr()
    assert main(argv) == 0 and sizes == [3]
    assert main(argv + ["--batch-size", "2"]) == 0 and sizes == [3, 2, 1]
    assert capsys.readouterr().out.count("--- [") == 6          # every prompt answered, under its header, both times
    lines = '{"src": "hello"}\n{"src": "a b c"}\n'
    out = tmp_path / "out.jsonl"
    for _ in range(2):                                              # the second run finds both lines done
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(lines.encode())))
        assert main(["-q", "generate", str(dest), "--data-file", "-", "--output-file", str(out),
                     "--max-new-tokens", "4", "--batch-size", "1"]) == 0
        assert [r["src"] for r in map(json.loads, out.read_text().splitlines())] == ["hello", "a b c"]


def test_validate_reruns_the_gate_of_an_llm_bundle(llama, tmp_path, capsys):
    """`validate` on a convert-llm bundle: the checkpoint exported again, each generic model and fused decoder judged
    on the recorded steps against Paddle; another checkpoint is exit 2 before any worker; a fused decoder that is
    not the one gated (the fp16 decoder's file in fp32's place, checksums re-signed) fails the fp32 gate, exit 3."""
    import json
    import shutil

    from paddle2ort.cli import main
    from paddle2ort.runtime.manifest import sha256_file
    src, dest, m, *_ = llama
    relaxed = ["--threshold", "int4.min_cosine=0.6", "--threshold", "int8.min_cosine=0.95"]     # as converted
    capsys.readouterr()
    assert main(["validate", str(dest), "--source", str(src / "model"), *relaxed]) == 0
    out = capsys.readouterr().out
    assert all(f"{p} " in out for p in m.models) and all(f"fused-{p} " in out for p in m.extra["fused"]), out
    other = tmp_path / "other"
    shutil.copytree(src / "model", other)
    weights = next(other.glob("*.pdparams"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert main(["-q", "validate", str(dest), "--source", str(other)]) == 2
    assert "is not the Paddle model this bundle was converted from" in capsys.readouterr().err
    swapped = tmp_path / "swapped"
    shutil.copytree(dest, swapped)
    f32, f16 = (m.extra["fused"][p]["file"] for p in ("fp32", "fp16"))
    shutil.copyfile(swapped / f16, swapped / f32)
    man = json.loads((swapped / "manifest.json").read_text())
    sha = sha256_file(swapped / f32)
    man["files"][f32]["sha256"] = man["extra"]["fused"]["fp32"]["sha256"] = sha
    man["files"][f32]["size_bytes"] = man["extra"]["fused"]["fp32"]["size_bytes"] = (swapped / f32).stat().st_size
    (swapped / "manifest.json").write_text(json.dumps(man))
    assert main(["-q", "validate", str(swapped), "--source", str(src / "model"), *relaxed]) == 3
    assert "fused-fp32" in capsys.readouterr().err
    # the same judgement without Paddle (the outputs the bundle keeps): passes, and refuses the swapped decoder
    assert main(["validate", str(dest), *relaxed]) == 0
    out = capsys.readouterr().out
    assert all(f"{p} " in out for p in m.models) and all(f"fused-{p} " in out for p in m.extra["fused"]), out
    assert main(["-q", "validate", str(swapped), *relaxed]) == 3
    assert "fused-fp32" in capsys.readouterr().err


def test_validate_refuses_an_adapter_bundle_with_the_fix(tmp_path):
    """A bundle converted with a LoRA/prefix applied is not its source alone re-exported: refused before any worker."""
    from types import SimpleNamespace

    from paddle2ort.convert.llm.api import check_llm_source
    with pytest.raises(BadInputError, match="adapter applied \\(lora\\).*same --lora/--prefix"):
        check_llm_source(SimpleNamespace(name="b", extra={"adapter": {"kind": "lora"}}), tmp_path)


def test_validate_names_a_source_that_is_no_paddlenlp_model(tmp_path):
    """`validate` of an LLM bundle against a Paddle inference model folder, or a config.json of no LLM: the source is
    named as the wrong one (it said the config "names no architecture; re-save with save_pretrained")."""
    import json
    from types import SimpleNamespace

    from paddle2ort.convert.llm.api import check_llm_source
    m = SimpleNamespace(name="b", extra={"paddle_source": {"sha256": {"model.pdparams": "0" * 64}}})
    (tmp_path / "inference.json").write_text("{}")
    with pytest.raises(BadInputError, match="is not a PaddleNLP model directory .* pass that directory"):
        check_llm_source(m, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"PostProcess": {"name": "CTCLabelDecode"}}))
    with pytest.raises(BadInputError, match="is not the PaddleNLP model text-generation bundle 'b' was converted from"):
        check_llm_source(m, tmp_path)


def test_fused_bad_input(llama, tmp_path, capsys):
    _, dest, m, ids, _ = llama
    fused = TextGenerator(dest, graph="fused", max_length=16)
    with pytest.raises(BadInputError, match="exceeds the cache capacity of 16 tokens.*--max-context"):
        fused.generate_token_ids(ids, GenerationConfig(max_new_tokens=15))
    from paddle2ort.cli import main            # --max-context is the capacity: 15 new tokens fit in 32, not in 8
    assert main(["-q", "generate", str(dest), "--graph", "fused", "--prompt", "hello", "--max-new-tokens", "15",
                 "--max-context", "8"]) == 2
    assert main(["-q", "generate", str(dest), "--graph", "fused", "--prompt", "hello", "--max-new-tokens", "15",
                 "--max-context", "32"]) == 0
    # a seed with greedy decoding is said to do nothing (not refused: harmless, and scripts pass one always)
    capsys.readouterr()
    assert main(["generate", str(dest), "--prompt", "hello", "--max-new-tokens", "2", "--seed", "3"]) == 0
    assert "--seed 3 has no effect: greedy decoding" in capsys.readouterr().err
    with pytest.raises(BadInputError, match="beam search"):
        Generator(fused.model, GenerationConfig(num_beams=2), 2)
    with pytest.raises(BundleError, match="no fused 'int8' decoder"):
        TextGenerator(dest, precision="int8", graph="fused")
    with pytest.raises(BadInputError, match="not a fused decoder"):
        FusedDecoder(dest / m.models["fp32"].file, m.extra["fused"]["fp32"]["options"]["spec"])
    from paddle2ort.runtime.errors import DeviceError
    from paddle2ort.runtime.session import gpu_available
    if not gpu_available():
        with pytest.raises(DeviceError, match="use --device cpu"):
            TextGenerator(dest, graph="fused", session=__import__("paddle2ort.runtime.session", fromlist=["x"])
                          .SessionOptions(device="gpu"))


def test_spec_and_weights_are_checked():
    cfg = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
           "intermediate_size": 64}
    with pytest.raises(BadInputError, match="multiple of 16"):
        DecoderSpec.from_config(cfg)
    with pytest.raises(BadInputError, match="scaled rotary"):
        DecoderSpec.from_config({**cfg, "num_attention_heads": 2, "rope_scaling": {"type": "linear"}})
    spec = DecoderSpec.from_config({**cfg, "num_attention_heads": 2})
    with pytest.raises(BadInputError, match="missing"):
        build_decoder(spec, {"llama.embed_tokens.weight": np.zeros((100, 32), np.float32)})


def test_fused_gpt2_matches_paddle_and_the_generic_export(llm_bundles):  # noqa: F811
    """GPT-2 family: LayerNorm / SkipLayerNormalization with biases, learned positions from the cache state,
    FastGelu, GroupQueryAttention without rotary; gated against Paddle, greedy identical to Paddle and the generic
    export, batched (right padding) and one at a time."""
    src, dest, m = llm_bundles["gpt"]
    fused = m.extra["fused"]
    assert set(fused) == {"fp32", "fp16"} and fused["fp32"]["options"]["spec"]["family"] == "gpt"
    assert fused["fp32"]["validation"]["max_rel_diff"] <= 1e-4 and fused["fp16"]["validation"]["passed"]
    gen = TextGenerator(dest)
    ids = [gen.tokenizer.encode(p) for p in PROMPTS]
    want = paddle_greedy(src / "model", ids, 10)
    # the gates hold both fp32 graphs' logits to Paddle's within 1e-4 (max_rel_diff): 1e-3 of the range is plenty
    margins, eps = paddle_margins(src / "model", ids, want, 1e-3)
    cfg = GenerationConfig(max_new_tokens=10)
    g = TextGenerator(dest, graph="fused")
    for got in (generate(gen.model, ids, cfg, gen.tokenizer.pad_token_id), g.generate_token_ids(ids, cfg),
                [g.generate_token_ids([i], cfg)[0] for i in ids]):
        assert not clear_divergences(got, want, margins, eps), (got, want)      # up to a near-tie of Paddle's
    ops = {n.op_type for n in __import__("onnx").load(str(dest / fused["fp32"]["file"])).graph.node}
    assert {"GroupQueryAttention", "SkipLayerNormalization", "FastGelu"} <= ops


def test_fused_beam_search_equals_the_host_loop(llama):
    """Beam search on the fused decoder (beam kernel's twin on CPU, cache rows reordered in place, B prompts x K
    beams in one batch) = runtime.generation.beam_search over the generic export, prompt by prompt, up to a
    near-tie of the generic export's decisions (tests/near_tie.py NearTieBeams)."""
    _, dest, _, ids, gen = llama
    fused = TextGenerator(dest, graph="fused")
    greedy = fused.generate_token_ids(ids, GenerationConfig(max_new_tokens=8))
    stop = greedy[1][2]
    # the two fp32 graphs' logits agree within 1e-4 of their max (the prefill test above): 1e-3 of the range
    eps = greedy_reference(gen.model, ids, GenerationConfig(max_new_tokens=8), gen.tokenizer.pad_token_id, 1e-3)[2]
    for cfg in (GenerationConfig(max_new_tokens=8, num_beams=3),
                GenerationConfig(max_new_tokens=8, num_beams=2, repetition_penalty=1.3, length_penalty=0.7),
                GenerationConfig(max_new_tokens=8, num_beams=4, stop_token_ids=(stop,)),
                GenerationConfig(max_new_tokens=8, num_beams=3, min_new_tokens=5, stop_token_ids=(stop,),
                                 early_stopping=False)):
        with NearTieBeams() as rec:
            want = generate(gen.model, ids, cfg, gen.tokenizer.pad_token_id)
        got = fused.generate_token_ids(ids, cfg)
        assert not beam_clear_divergences(got, want, rec.margins(), eps), (cfg, got, want)
    with pytest.raises(BadInputError, match="num_beams must be in 1..32"):
        fused.generate_token_ids(ids, GenerationConfig(max_new_tokens=4, num_beams=33))
    with pytest.raises(BadInputError, match="cannot stream"):
        generate(fused.model, ids, GenerationConfig(num_beams=2), 2, streamer=lambda r, t: None)


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_same_seed_same_tokens_on_the_generic_and_fused_graphs(llm_bundles, kind):
    """One RNG contract: both graphs sample through the same Philox twin (counter = step, row), so one seed gives
    the same tokens. The graphs' logits differ by float rounding (~1e-6), so a draw landing within that of a CDF
    boundary may differ: aggregate rule, at least 90% of the (seed, prompt) sequences identical."""
    _, dest, _ = llm_bundles[kind]
    generic, fused = TextGenerator(dest), TextGenerator(dest, graph="fused")
    ids = [generic.tokenizer.encode(p) for p in PROMPTS]
    same, total = 0, 0
    for seed in range(6):
        cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.0, top_k=40, top_p=0.95, seed=seed,
                               repetition_penalty=1.1)
        a, b = generic.generate_token_ids(ids, cfg), fused.generate_token_ids(ids, cfg)
        same += sum(x == y for x, y in zip(a, b))
        total += len(a)
        assert all(len(x) == 10 for x in a)
    assert same / total >= 0.9, (same, total)
    greedy = generic.generate_token_ids(ids, GenerationConfig(max_new_tokens=10))
    sampled = [generic.generate_token_ids(ids, GenerationConfig(max_new_tokens=10, do_sample=True, seed=s))
               for s in range(3)]
    assert any(s != greedy for s in sampled) and len({str(s) for s in sampled}) > 1   # the seed matters


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_multi_turn_continues_the_cache_on_both_graphs(llm_bundles, kind):
    """append_tokens after a turn (one row stopped early, rows of different lengths) continues the same cache:
    = a fresh greedy generation over the whole history (one row, its prompt pass over all of it: other shapes), up
    to a near-tie of the fresh one's (tests/near_tie.py), on the generic and on the fused graph."""
    _, dest, _ = llm_bundles[kind]
    graphs = {g: TextGenerator(dest, graph=g) for g in ("generic", "fused")}
    tok = graphs["generic"].tokenizer
    ids = [tok.encode(p) for p in PROMPTS]
    turn2 = [tok.encode(t) for t in (" and then", " what", " next time we")]
    for name, g in graphs.items():
        free = g.generate_token_ids(ids, GenerationConfig(max_new_tokens=6))      # this graph's own first turn
        stop = free[1][2]
        cfg = GenerationConfig(max_new_tokens=6, stop_token_ids=(stop,))
        gen = Generator(g.model, cfg, tok.pad_token_id, max_context=g.max_context)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        first = gen.results()
        gen.append_tokens(turn2)
        whole = [list(h) for h in gen.history]
        while not gen.is_done():
            gen.generate_next_token()
        # one graph, other shapes (one row vs three, a prompt pass vs cached steps): 1e-3 of the logit range
        for row, w in zip(gen.results(), whole):              # the fresh run: generate_token_ids([w], cfg)
            fresh, margins, eps = greedy_reference(g.model, [w], cfg, tok.pad_token_id, 1e-3)
            assert not clear_divergences([row], fresh, margins, eps), (name, row, fresh)
        assert len(first[1]) < 6 and whole[1][len(ids[1]) + len(first[1])] == stop   # the stop token stays


def test_fused_decoder_uses_the_session_factory(llama):
    _, dest, _, ids, gen = llama
    from paddle2ort.runtime.llm import fused_model
    path, spec = fused_model(gen.bundle, "fp32")
    dec = FusedDecoder(path, spec, SessionOptions(intra_op_threads=1, graph_optimization="basic"), max_length=32)
    so = dec.session.get_session_options()
    assert so.intra_op_num_threads == 1 and so.graph_optimization_level.name == "ORT_ENABLE_BASIC"
    # the fused and the generic fp32 graphs agree within 1e-4 of the logits' max (above): 1e-3 of the range
    want, margins, eps = greedy_reference(gen.model, ids, GenerationConfig(max_new_tokens=4),
                                          gen.tokenizer.pad_token_id, 1e-3)
    got = generate(dec, ids, GenerationConfig(max_new_tokens=4), gen.tokenizer.pad_token_id)
    assert not clear_divergences(got, want, margins, eps), (got, want)



def test_kernel_engine_is_reachable_and_refuses_clearly(llama, capsys):
    """`generate --graph kernels` hands the fused decoder's file to our kernel engine (its parity with the fused
    graph: tests/test_engine.py, tests/test_cpu_step.py): on the CPU the compiled step where the host builds it,
    else the fused graph; a geometry the CUDA kernels do not cover is refused naming it and the fallback."""
    from paddle2ort.cli import main
    from paddle2ort.runtime.kernels.engine import check_geometry, load_weights
    from paddle2ort.runtime.llm import fused_model
    _, dest, _, _, gen = llama
    assert main(["generate", str(dest), "--graph", "kernels", "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()
    path, spec = fused_model(gen.bundle, "fp32")
    with pytest.raises(BadInputError, match="head size 16.*onnxruntime"):
        check_geometry(spec, load_weights(path, spec))


def _run_slots(dec, pad, plan, steps=40):
    """Rows joining a slot batch at given steps ({step: [(prompt, cfg)]}) -> (each row's tokens in join order,
    the slot state's capacity seen after each join)."""
    gen = Generator(dec, pad_id=pad)
    got, order, caps = {}, [], []
    for step in range(steps):
        if step in plan:
            order += gen.add_rows([p for p, _ in plan[step]], [c for _, c in plan[step]])
            caps.append(dec.active.capacity)
        if not gen.rows and step > max(plan):
            break
        if gen.rows:
            gen.generate_next_token()
        got.update((r.id, list(r.ids)) for r in gen.remove_finished())
    return [got[i] for i in order], caps


def test_fused_cache_is_sized_to_the_need_and_grows_mid_generation(llama):
    """A state's KV buffers hold what its calls need (prompt + new tokens, rounded up to a power-of-two bucket,
    capped at max_length), not max_length: a fixed batch, a later turn that needs more (grown, the written
    positions copied) and rows joining a slot batch with a longer prompt (the slot state grown while a row is
    decoding). Tokens equal the same runs on a decoder whose states never grow (one bucket = max_length)."""
    _, dest, _, ids, gen = llama
    from paddle2ort.runtime.llm import fused_model
    path, spec = fused_model(gen.bundle, "fp32")
    pad, tok = gen.tokenizer.pad_token_id, gen.tokenizer
    small = FusedDecoder(path, spec, SessionOptions(intra_op_threads=1))            # max_length: the model's 256
    small.min_bucket = 16
    whole = FusedDecoder(path, spec, SessionOptions(intra_op_threads=1))
    assert small.capacity == whole.capacity == spec["max_positions"] == 256 and whole.min_bucket == 256
    assert [small.bucket(n) for n in (1, 16, 17, 40, 200, 256)] == [16, 16, 32, 64, 256, 256]
    # a fixed batch: the buffers follow the need (prompt + max_new_tokens), and so does the memory estimate
    cfg = GenerationConfig(max_new_tokens=4)
    assert generate(small, ids, cfg, pad) == generate(whole, ids, cfg, pad)
    longest = max(map(len, ids))
    st = small.states[len(ids)]
    assert st.capacity == small.bucket(longest + 4) == 16 and st.kv[0].shape[2] == 16
    assert small.held_bytes() == small.state_bytes(len(ids), 0, 16) < whole.held_bytes()
    assert small.bytes_needed(16, longest, 4) < small.bytes_needed(16, longest, 200)         # 16 vs 256 positions
    # a later turn that needs more: the state grows (a new buffer, a new CUDA graph id), tokens = the un-grown run
    long_turn = tok.encode(" and then the story went on for a long while, far past the first bucket" * 2)
    runs = {}
    for name, dec in (("small", small), ("whole", whole)):
        g = Generator(dec, GenerationConfig(max_new_tokens=6), pad, max_context=dec.max_tokens())
        g.append_tokens(ids)
        while not g.is_done():
            g.generate_next_token()
        first, before = g.results(), dec.active
        g.append_tokens([long_turn] * len(ids))
        while not g.is_done():
            g.generate_next_token()
        runs[name] = (first, g.results(), before, dec.active)
    first, second, before, after = runs["small"]
    assert (first, second) == runs["whole"][:2]
    assert before.capacity == 16 and after.capacity == small.bucket(longest + 6 + len(long_turn) + 6) > 16
    assert after is small.states[len(ids)] and after.graph_id != before.graph_id
    assert runs["whole"][2] is runs["whole"][3] and runs["whole"][3].capacity == 256        # never regrown
    # rows joining and leaving: a short row decodes, a long prompt joins mid-generation and grows the slot state
    small.row_slots = whole.row_slots = 3
    long_prompt = tok.encode("Once upon a time there was a very long prompt that needs more room " * 2)
    plan = {0: [(ids[0], GenerationConfig(max_new_tokens=10, min_new_tokens=10))],
            3: [(long_prompt, GenerationConfig(max_new_tokens=8, min_new_tokens=8)),
                (ids[1], GenerationConfig(max_new_tokens=5, min_new_tokens=5))]}
    got, caps = _run_slots(small, pad, plan)
    want, caps_whole = _run_slots(whole, pad, plan)
    assert got == want and [len(t) for t in got] == [10, 8, 5]
    assert caps == [16, small.bucket(len(long_prompt) + 8)] and caps[1] > 16 and caps_whole == [256, 256]
    assert small.slot_of == [] and small.held_bytes() < whole.held_bytes()
    # the GPU's way (one CUDA graph per state: every slot stepped, a state never shrinks): the same tokens, up to a
    # near-tie (tests/near_tie.py): every step now runs all 3 slots where the runs above ran the first 1 or 2
    # (other GEMM shapes, which another ISA's kernels may round otherwise); one graph: 1e-3 of the logit range
    small.cuda_graph = True
    got_graph, caps_graph = _run_slots(small, pad, plan)
    small.cuda_graph = False
    ref = FusedDecoder(path, spec, SessionOptions(intra_op_threads=1))
    joined = [p for step in sorted(plan) for p, _ in plan[step]]                    # join order, as _run_slots's
    logits = [teacher_forced_logits(fused_logits_of(ref), p, w) for p, w in zip(joined, want)]
    eps = 1e-3 * max(float(np.ptp(lg)) for lg in logits)
    margins = [path_margins(lg, w, eps) for lg, w in zip(logits, want)]
    assert not clear_divergences(got_graph, want, margins, eps), (got_graph, want)
    assert caps_graph == [caps[1], caps[1]]
    assert _run_slots(small, pad, plan) == (want, caps)          # without graphs an idle slot state shrinks again
    # the limit keeps its meaning: prompt + new tokens beyond max_length is refused, naming the capacity
    with pytest.raises(BadInputError, match="exceeds the cache capacity"):
        generate(small, [long_prompt], GenerationConfig(max_new_tokens=256), pad)


def test_fused_rows_joining_together_prefill_as_batches(llama):
    """Rows that join at the same step boundary are prefilled in right-padded batches of similar length (straight
    into consecutive free slots, or into a group state copied into scattered ones; a request's n choices share one
    prefill): each row's tokens equal the run where every prompt is prefilled alone, up to a near-tie."""
    from test_serving import first_clear_divergence, teacher_margins
    _, dest, _, ids, gen = llama
    from paddle2ort.runtime.llm import fused_model
    path, spec = fused_model(gen.bundle, "fp32")
    pad, tok = gen.tokenizer.pad_token_id, gen.tokenizer
    prompts = ids + [tok.encode("Hello there, friend"), tok.encode("x y z w"), tok.encode("Once upon a time, in")]
    short = GenerationConfig(max_new_tokens=3, min_new_tokens=3)
    long = GenerationConfig(max_new_tokens=9, min_new_tokens=9)
    # 4 slots; step 0: three prompts, the shortest twice (n choices): slots 0-2 in length order, the 2nd choice 3;
    # the rows in slots 1 and 3 leave first, so the two rows joining together at step 5 take scattered slots
    order = sorted(range(3), key=lambda i: len(prompts[i]))
    first = [(prompts[order[0]], long), (prompts[order[0]], short), (prompts[order[1]], short),
             (prompts[order[2]], long)]
    plan = {0: first, 5: [(prompts[3], long), (prompts[4], short)], 8: [(prompts[5], short)]}
    runs = {}
    for budget in (0, 4096):                          # 0: every prompt prefilled alone (the one-at-a-time join)
        dec = FusedDecoder(path, spec, SessionOptions(intra_op_threads=1), max_length=64)
        dec.row_slots, dec.prefill_positions = 4, budget
        calls, prefill = [], dec.prefill
        dec.prefill = lambda st, ps, p, **kw: (calls.append((st.batch, st.capacity)), prefill(st, ps, p, **kw))[1]
        runs[budget] = _run_slots(dec, pad, plan)[0], calls
    (alone, calls_alone), (batched, calls) = runs[0], runs[4096]
    assert [b for b, _ in calls_alone] == [1] * 6
    # step 0: the three distinct prompts in one batch into slots 0-2 (the 4th row a copy of its choice's slot);
    # step 5: two prompts into scattered slots through a group state of their length; step 8: one alone
    assert [b for b, _ in calls] == [3, 2, 1]
    assert calls[0][1] == calls[2][1] == 64 > calls[1][1] == max(len(prompts[3]), len(prompts[4]))
    ref = FusedDecoder(path, spec, SessionOptions(intra_op_threads=1), max_length=64)
    logits_of = lambda t: ref.prompt_logits(ref.state(1), [t], pad)[0]          # noqa: E731
    rows = [p for p, _ in first] + [prompts[3], prompts[4], prompts[5]]
    assert [len(t) for t in alone] == [9, 3, 3, 9, 9, 3, 3]
    for p, got, want in zip(rows, batched, alone):
        assert first_clear_divergence(got, want, teacher_margins(logits_of, p, want)) is None, (got, want)
