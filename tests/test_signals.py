"""A killed conversion leaves nothing running and nothing behind: SIGTERM unwinds like Ctrl-C (staging and temp
dirs removed, the Paddle worker killed); after SIGKILL the worker dies with its parent and the next run sweeps the
dead run's staging and temp dirs. Real conversions of a tiny model in child processes."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = "paddle2ort.cli" if importlib.util.find_spec("paddle2ort.cli") else "paddle2ort.convert.cli"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def task_tree(pid: int):
    """The processes under a conversion once its Paddle task runs: [server, task] warm (fork mode), [worker]
    in spawn mode; None before that."""
    from paddle2ort.convert import forkserver
    tree = descendants(pid)
    return tree if len(tree) >= (2 if forkserver.enabled() else 1) else None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(cond, timeout: float, what: str, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def start_convert(src: Path, out: Path, tmpdir: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start a conversion and return it once its Paddle task runs (and the staging dir exists), with the
    processes under it."""
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen([sys.executable, "-m", CLI, "-q", "convert", str(src), "-o", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # warm (fork mode), a tiny model's Paddle tasks each run for only 10-70 ms: poll every 2 ms to see one running
    tree = wait_for(lambda: task_tree(proc.pid) or (proc.poll() is not None and -1), 120, "the Paddle task to start",
                    every=0.002)
    assert tree != -1, proc.communicate()
    assert list(out.parent.glob(f".{out.name}.staging-*")) and list(tmpdir.glob("paddle2ort-*"))
    return proc, tree


def test_sigterm_cleans_up_like_ctrl_c(tiny_models, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "bundle"
    proc, tree = start_convert(tiny_models("mlp"), out, tmpdir)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err                      # like Ctrl-C, with the SIGTERM exit code
    assert "Traceback" not in err
    wait_for(lambda: not any(map(alive, tree)), 2.0, "the worker to die")
    assert not out.exists() and not list(tmp_path.glob(".bundle.staging-*"))
    assert not list(tmpdir.glob("paddle2ort-*"))


def test_sigkill_orphans_nothing_and_next_run_sweeps(tiny_models, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "bundle"
    proc, tree = start_convert(tiny_models("mlp"), out, tmpdir)
    proc.kill()
    proc.communicate(timeout=30)
    # at once (the worker just started: left alone it would run on for seconds importing Paddle) -> no orphan
    wait_for(lambda: not any(map(alive, tree)), 1.0, "the worker to die with its parent")
    stale = list(tmp_path.glob(".bundle.staging-*")) + list(tmpdir.glob("paddle2ort-*"))
    assert stale                                    # SIGKILL leaves no chance to clean up ...
    user = tmp_path / ".notes.staging-old"          # ... names that are not ours are never touched
    user.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    r = subprocess.run([sys.executable, "-m", CLI, "-q", "convert", str(tiny_models("mlp")), "-o",
                        str(tmp_path / "other")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in stale)       # ... the next run sweeps the dead run's dirs
    assert user.is_dir() and not out.exists() and (tmp_path / "other" / "manifest.json").is_file()
    assert not list(tmpdir.glob("paddle2ort-*"))


def test_sweep_keeps_live_runs(tmp_path):
    from paddle2ort.convert.paddle_proc import STALE_AFTER_S, WORKDIR_RE, run_token, sweep_stale
    tok = run_token()
    live = tmp_path / f"paddle2ort-{os.getppid()}-{tok}-abcdef12"
    dead_pid = wait_for(lambda: _dead_pid(), 5, "a free pid")
    dead = tmp_path / f"paddle2ort-llm-{dead_pid}-{tok}-abcdef12"
    mine = tmp_path / f"paddle2ort-notes-{dead_pid}"           # not our pattern (no random suffix)
    # a live run in another container sharing this folder: its pid means nothing here, so it is kept ...
    other = tmp_path / f"paddle2ort-{dead_pid}-{'0' * 8 if tok != '0' * 8 else '1' * 8}-abcdef12"
    older = tmp_path / f"paddle2ort-{dead_pid}-abcdef12"        # ... as is one named before the token (fresh)
    abandoned = tmp_path / f"paddle2ort-llm-{dead_pid}-ffffffff-abcdef12"   # ... until untouched for a week
    for d in (live, dead, mine, other, older, abandoned):
        d.mkdir()
    week_ago = time.time() - STALE_AFTER_S - 60
    os.utime(abandoned, (week_ago, week_ago))
    assert sorted(sweep_stale(tmp_path, WORKDIR_RE)) == sorted([dead] + ([abandoned] if tok != "ffffffff" else []))
    assert live.is_dir() and mine.is_dir() and other.is_dir() and older.is_dir() and not dead.exists()


def test_staging_names_stay_legal_and_a_failed_start_leaves_no_parents(tmp_path, monkeypatch):
    """A 240-character bundle name (legal) still stages (the staging name cuts it), and a failure before the staging
    folder exists removes the parents it created."""
    from paddle2ort.convert import bundle
    from paddle2ort.convert.bundle import STAGING_RE, staged_bundle
    dest = tmp_path / "new" / "sub" / ("b" * 240)
    with staged_bundle(dest, overwrite=False) as stage:
        assert STAGING_RE.fullmatch(stage.name) and len(stage.name) < 255
        (stage / "manifest.json").write_text("{}")
    assert (dest / "manifest.json").is_file()

    def no_temp(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(bundle.tempfile, "mkdtemp", no_temp)
    from paddle2ort.runtime.errors import BadInputError
    with pytest.raises(BadInputError, match="takes no new folder .No space left on device.; choose an -o path"):
        with staged_bundle(tmp_path / "p" / "q" / "b", overwrite=False):
            pass
    assert not (tmp_path / "p").exists()


def _dead_pid() -> int | None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid if not alive(p.pid) else None


def test_convert_llm_worker_dies_with_a_killed_parent(tiny_models, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    src = tiny_models("llama")
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen([sys.executable, "-m", CLI, "-q", "convert-llm", str(src / "model"), "--tokenizer",
                             str(src / "tokenizer"), "-o", str(tmp_path / "llm")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree = wait_for(lambda: task_tree(proc.pid) or (proc.poll() is not None and -1), 120, "the export task to start")
    assert tree != -1, proc.communicate()
    proc.kill()
    proc.communicate(timeout=30)
    wait_for(lambda: not any(map(alive, tree)), 1.0, "the export task to die with its parent")
    assert not (tmp_path / "llm").exists()


def test_sigterm_keeps_finished_jsonl_results_and_a_rerun_resumes(llm_bundle, tmp_path):
    import json
    data, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps({"src": f"Story number {i} begins"}) + "\n" for i in range(60)))
    cmd = [sys.executable, "-m", CLI, "-q", "generate", str(llm_bundle), "--data-file", str(data), "--output-file",
           str(out), "--batch-size", "1", "--max-new-tokens", "16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.is_file() or proc.poll() is not None, 120, "the first batch")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    first = [json.loads(line) for line in out.read_text().splitlines()]        # complete lines only
    assert 1 <= len(first) < 60 and [r["line"] for r in first] == list(range(1, len(first) + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]   # no temp file left
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    done = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["line"] for x in done] == list(range(1, 61)) and done[:len(first)] == first


def test_a_native_crash_in_the_cli_names_the_python_call_it_died_in():
    """A segfault inside a command (onnxruntime or CUDA code) prints Python's traceback of the call, not exit 139
    alone (faulthandler, enabled by the CLI)."""
    code = ("import importlib, os, signal, sys\nm = importlib.import_module('paddle2ort.cli.main')\n"
            "m.setup_logging = lambda v: os.kill(os.getpid(), signal.SIGSEGV)\n"
            "sys.exit(m.main(['run', 'bundle', '--inputs', 'x.npz']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGSEGV
    assert "Segmentation fault" in proc.stderr and "in main" in proc.stderr
