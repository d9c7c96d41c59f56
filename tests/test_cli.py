"""The CLI as a person meets it: help texts, option checks before any work, exit codes, -q/-v anywhere, and the
runtime-only install. No Paddle, no assets: every case here fails (or prints help) before a model is touched."""
from __future__ import annotations

import argparse
import logging
import sys

import pytest

from paddle2ort.cli import build_parser, main
from paddle2ort.cli.common import HelpFormatter

pytestmark = pytest.mark.unit


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, parser) of every leaf command (zoo build included)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                kids = list(subcommands(sub, prefix + (name,)))
                yield from kids or [(prefix + (name,), sub)]


COMMANDS = list(subcommands(build_parser()))
NAMES = [" ".join(argv) for argv, _ in COMMANDS]


def test_every_command_group_is_there():
    for name in ("convert", "validate", "convert-llm", "zoo build", "classify", "generate", "bench", "bench-llm",
                 "perplexity"):
        assert name in NAMES


@pytest.mark.parametrize("argv,parser", COMMANDS, ids=NAMES)
def test_help_has_example_defaults_and_exit_codes(argv, parser, capsys):
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"paddle2ort {' '.join(argv)}" in out.split("example:")[1]
    assert "exit codes:" in out
    for code in ("0 ok", "2 bad input", "3 validation failed", "4 conversion failed", "1 unexpected"):
        assert code in out
    assert "%%" not in out                  # argparse %-formats option help, never the description or epilog
    fmt = HelpFormatter(prog="x")
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        d = action.default
        meaningful = d not in (None, False, argparse.SUPPRESS) and not (isinstance(d, (list, tuple)) and not d)
        if meaningful:
            assert "default" in fmt._get_help_string(action), f"{argv} {action.option_strings} hides its default"
        # metavars are named after the option, never after an internal destination
        if action.nargs != 0 and action.metavar is None and action.choices is None:
            assert fmt._get_default_metavar_for_optional(action) == \
                max(action.option_strings, key=len).lstrip("-").upper().replace("-", "_")


def test_generate_help_names_max_length_after_itself(capsys):
    main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "--max-length MAX_LENGTH" in out and "MAX_NEW_TOKENS_JOB" not in out


@pytest.mark.parametrize("argv", [
    ["generate", "B", "--prompt", "x", "--temperature", "nan"],
    ["generate", "B", "--prompt", "x", "--temperature", "inf"],
    ["generate", "B", "--prompt", "x", "--temperature", "-1"],
    ["generate", "B", "--prompt", "x", "--top-p", "nan"],
    ["generate", "B", "--prompt", "x", "--top-p", "0"],
    ["generate", "B", "--prompt", "x", "--repetition-penalty", "nan"],
    ["generate", "B", "--prompt", "x", "--repetition-penalty", "0"],
    ["generate", "B", "--prompt", "x", "--length-penalty", "-inf"],
    ["generate", "B", "--prompt", "x", "--seed", "-1"],
    ["generate", "B", "--prompt", "x", "--stop", ""],
    ["generate", "B", "--prompt", "x", "--num-beams", "0"],
    ["generate", "B", "--prompt", "x", "--max-new-tokens", "0"],
    ["generate", "B", "--data-file", "in.jsonl", "--output-file", "o.jsonl", "--src-length", "0"],
    ["generate", "B", "--data-file", "in.jsonl", "--output-file", "o.jsonl", "--src-length", "-1"],
    ["generate", "B", "--data-file", "in.jsonl", "--output-file", "o.jsonl", "--batch-size", "0"],
    ["convert", "M", "-o", "O", "--threshold", "fp32.max_rel_diff=nan"],
    ["convert", "M", "-o", "O", "--threshold", "fp32.max_rel_diff=-1"],
    ["convert", "M", "-o", "O", "--threshold", "fp16.min_cosine=inf"],
    ["convert", "M", "-o", "O", "--threshold", "fp16.min_cosine=1.5"],
    ["convert", "M", "-o", "O", "--threshold", "fp16.cosine=0.9"],
    ["convert", "M", "-o", "O", "--precision", "fp8"],
    ["convert", "M", "-o", "O", "--seed", "-3"],
    ["convert-llm", "M", "-o", "O", "--tokenizer", "T", "--precision", "int3"],
    ["convert-llm", "M", "-o", "O", "--tokenizer", "T", "--block-size", "7"],
    ["validate", "B", "--source", "M", "--threshold", "int8.min_argmax_agreement=nan"],
    ["classify", "B", "--text", "x", "--batch-size", "0"],
    ["bench", "B", "--dataset-dir", "D", "--repeats", "0"],
    ["bench", "B", "--dataset-dir", "D", "--warmup", "-1"],
    ["bench-llm", "B", "--batch-sizes", "1,0"],
    ["perplexity", "B", "--windows", "0"],
    ["perplexity", "B", "--window", "1"],
])
def test_bad_option_values_are_refused_before_any_work(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()
    assert not any(tmp_path.iterdir())                                   # nothing written


def test_max_length_and_max_new_tokens_together_is_an_error(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "B"), "--prompt", "x", "--max-length", "3", "--max-new-tokens", "4"]) == 2
    assert "--max-length" in capsys.readouterr().err


def test_src_length_without_a_job_is_an_error(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "B"), "--prompt", "x", "--src-length", "4"]) == 2
    assert "--data-file" in capsys.readouterr().err


def test_classify_on_an_empty_file_says_there_are_no_texts(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["classify", str(tmp_path / "bundle"), "--input", str(empty)]) == 2
    assert "no texts" in capsys.readouterr().err


@pytest.mark.parametrize("argv,name", [
    (["convert", "M", "-o", "O"], "convert"),
    (["validate", "B", "--source", "M"], "validate --source"),
    (["convert-llm", "M", "-o", "O", "--tokenizer", "T"], "convert-llm"),
    (["zoo", "build", "minilm-sentiment", "-o", "Z"], "zoo build"),
    (["bench", "B", "--dataset-dir", "D", "--paddle-model", "P"], "bench --paddle-model"),
    (["perplexity", "B", "--paddle-model", "P"], "perplexity --paddle-model"),
    (["bench-llm", "B", "--paddle-model", "P"], "bench-llm --paddle-model"),
])
def test_paddle_side_commands_name_the_convert_extra_on_a_runtime_only_install(argv, name, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.chdir(tmp_path)
    for p in ("M", "T", "D", "P"):
        (tmp_path / p).mkdir()
    monkeypatch.setitem(sys.modules, "paddle", None)       # as on `pip install paddle2ort[cpu]`: no Paddle
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install 'paddle2ort[convert]'" in err and f"paddle2ort {name}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "M", "P", "T"]      # nothing started, nothing written


def test_bench_checks_output_and_paddle_model_before_timing(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    assert main(["bench", "B", "--dataset-dir", str(tmp_path), "--output", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "mine"
    assert main(["bench", "B", "--dataset-dir", str(tmp_path), "--paddle-model", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "out")]) == 2
    assert "--paddle-model" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["-q", "classify", "B", "--text", "x"], ["classify", "-q", "B", "--text", "x"],
                                  ["classify", "B", "--text", "x", "-q"], ["-q", "zoo", "build", "N", "-o", "Z"],
                                  ["zoo", "build", "N", "-o", "Z", "-q"]])
def test_quiet_and_verbose_anywhere(argv):
    args = build_parser().parse_args(argv)
    assert args.quiet is True and args.verbose is False
    args = build_parser().parse_args(["classify", "B", "--text", "x", "-v"])
    assert args.verbose is True and args.quiet is False


def test_verbosity_sets_our_log_level(tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("")
    main(["classify", "B", "--input", str(empty), "-v"])
    assert logging.getLogger("paddle2ort").level == logging.DEBUG
    main(["classify", "B", "--input", str(empty), "-q"])
    assert logging.getLogger("paddle2ort").level == logging.WARNING


def test_python_m_entry_point():
    import subprocess
    r = subprocess.run([sys.executable, "-m", "paddle2ort.cli", "generate", "B", "--seed", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--seed" in r.stderr and "Traceback" not in r.stderr


NOISY = '''
import logging, os, subprocess, sys, warnings
from paddle2ort.runtime.logs import console, setup_logging
setup_logging(0, log_file=sys.argv[1])
with console():
    from tqdm import tqdm
    for i in tqdm(range(3), desc="step", disable=False):
        logging.getLogger("paddle2ort.demo").info("ours %d", i)
    logging.getLogger("paddle").warning("third-party logger noise")
    warnings.warn("setuptools-style noise")
    os.write(2, b"glog noise on fd 2\\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child noise')"])
    print("RESULT TABLE")
'''


def test_third_party_noise_goes_to_the_log_file_ours_to_the_terminal(tmp_path):
    import subprocess
    log_file = tmp_path / "demo.log"
    r = subprocess.run([sys.executable, "-c", NOISY, str(log_file)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "RESULT TABLE\n"
    noise = ("third-party logger noise", "setuptools-style noise", "glog noise on fd 2", "child noise")
    assert not any(n in r.stderr for n in noise)
    assert all(f"ours {i}" in r.stderr for i in range(3)) and "step: 100%" in r.stderr
    logged = log_file.read_text()
    assert all(n in logged for n in noise) and "ours 2" in logged
    # each log line starts on a cleared line (tqdm.write), never glued behind the bar's text
    assert all(ln.rsplit("\r", 1)[-1].startswith("INFO paddle2ort.demo: ours") for ln in r.stderr.split("\n")
               if "ours" in ln)


def test_console_writes_our_lines_through_tqdm(capsys):
    from paddle2ort.runtime.logs import console, setup_logging
    setup_logging(0)
    with console():
        kinds = {type(h).__module__ for h in logging.getLogger().handlers}
    assert "tqdm.contrib.logging" in kinds
    assert "tqdm.contrib.logging" not in {type(h).__module__ for h in logging.getLogger().handlers}


def _required_argv(parser: argparse.ArgumentParser) -> list[str]:
    argv = []
    for a in parser._actions:
        if not a.option_strings:
            argv.append("X")
        elif a.required:
            argv += [a.option_strings[0], "X"]
    return argv


NUMERIC = [(argv, a) for argv, p in COMMANDS for a in p._actions
           if a.option_strings and a.type is not None and getattr(a.type, "__name__", "") in
           {"int", "float", "positive_int", "nonneg_int", "seed", "finite_float", "nonneg_float", "positive_float",
            "probability", "csv_ints"}]


def test_numeric_options_use_the_checked_types():
    loose = [(argv, a.option_strings) for argv, a in NUMERIC if a.type in (int, float)]
    assert not loose, f"options parsed with bare int/float (NaN, inf or negatives would pass): {loose}"
    assert len(NUMERIC) > 30


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("argv,action", NUMERIC, ids=[f"{' '.join(v)} {a.option_strings[-1]}" for v, a in NUMERIC])
def test_no_numeric_option_takes_nan_or_inf(argv, action, value, capsys):
    parser = dict(COMMANDS)[argv]
    assert main([*argv, *_required_argv(parser), f"{action.option_strings[-1]}={value}"]) == 2
    assert action.option_strings[-1] in capsys.readouterr().err


def test_every_gated_metric_can_be_overridden_from_the_cli():
    """--threshold takes each metric the gate judges (int8 has no max_rel_diff bound: its rel_rmse is what a user
    tunes) and refuses what it does not."""
    import argparse
    from paddle2ort.cli.common import threshold
    from paddle2ort.convert.metrics import METRICS
    for m in METRICS:
        assert threshold(f"int8.{m}=0.5") == (f"int8.{m}", 0.5)
    assert threshold("fp16.tie_margin=2") == ("fp16.tie_margin", 2.0)        # a margin is not a fraction
    for bad in ("int8.min_cosine=1.5", "int8.rmse=0.1", "int8.max_rel_rmse=nan", "int8.max_rel_rmse=-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            threshold(bad)


def test_os_errors_name_the_path_and_for_a_full_disk_the_fix():
    import errno
    from paddle2ort.cli.main import os_error_message
    full = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/out/model.onnx"))
    assert "/data/out/model.onnx" in full and "TMPDIR" in full and "free some" in full
    assert "TMPDIR" in os_error_message(OSError(errno.ENOSPC, "No space left on device"))
    assert os_error_message(OSError(errno.EACCES, "Permission denied", "/x")) == "[Errno 13] Permission denied: '/x'"
    gone = OSError(errno.ENOENT, "No such file or directory")
    gone.filename = "/y"
    assert os_error_message(gone).endswith("/y'")
    assert os_error_message(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")).startswith("'utf-8'")


def test_several_answers_are_told_apart(capsys):
    """One prompt: its answer alone (scripts pipe it); several: a header before each, since answers span lines."""
    from paddle2ort.cli.generate import print_answers
    print_answers(["Capital of France?"], [" Paris.\n\nYes."])
    assert capsys.readouterr().out == " Paris.\n\nYes.\n"
    print_answers(["Capital of France?", "1+1=\n?"], [" Paris.\n\n", " 2"])
    assert capsys.readouterr().out == "--- [1/2] Capital of France?\n Paris.\n\n\n--- [2/2] 1+1= ?\n 2\n"
