"""`--ray` batch jobs on a local Ray of 2 CPUs (one start for the module, no dashboard, no usage stats): classify and
generate through Ray Data's actor pool write the very file the single-process job writes (same chunks, order kept),
and a rerun resumes."""
import json
import os

import pytest

ray = pytest.importorskip("ray")

from paddle2ort.cli import main  # noqa: E402
from paddle2ort.runtime.errors import BadInputError  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (the jobs find it initialised and use it as is, two 1-CPU actors)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_classify_on_ray_writes_what_the_single_process_job_writes(local_ray, clf_bundle, tmp_path):
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(70)] + ["", "the last one"]
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    one, par = tmp_path / "one.jsonl", tmp_path / "ray.jsonl"
    common = [str(clf_bundle), "--input", str(src), "--batch-size", "2", "--threads", "1"]     # 3 chunks of 32
    assert main(["-q", "classify", *common, "--output", str(one)]) == 0
    assert main(["-q", "classify", *common, "--output", str(par), "--ray", "--ray-cpus-per-actor", "1"]) == 0
    assert par.read_bytes() == one.read_bytes()
    assert [json.loads(x)["text"] for x in par.read_text(encoding="utf-8").splitlines()] == texts


def test_generate_on_ray_writes_what_the_single_process_job_writes_and_resumes(local_ray, llm_bundles, tmp_path):
    bundle = llm_bundles["llama"][1]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"src": f"Prompt {i}: " + "more " * i}) + "\n" for i in range(5)),
                   encoding="utf-8")
    one, par = tmp_path / "one.jsonl", tmp_path / "ray.jsonl"
    common = [str(bundle), "--data-file", str(src), "--batch-size", "2", "--max-new-tokens", "5", "--threads", "1"]
    assert main(["-q", "generate", *common, "--output-file", str(one)]) == 0
    ray_args = ["--ray", "--ray-cpus-per-actor", "1"]
    assert main(["-q", "generate", *common, "--output-file", str(par), *ray_args]) == 0
    assert par.read_bytes() == one.read_bytes()
    # a rerun resumes: the finished lines are kept, only the missing one runs (on Ray or not: the same job key)
    kept = par.read_text(encoding="utf-8").splitlines()
    par.write_text("\n".join(kept[:4]) + "\n", encoding="utf-8")
    assert main(["-q", "generate", *common, "--output-file", str(par), *ray_args]) == 0
    assert par.read_bytes() == one.read_bytes()


def test_ray_options_are_checked_before_any_work(tmp_path, capsys):
    from paddle2ort.runtime.distributed import RayConfig
    with pytest.raises(BadInputError, match="cpus_per_actor"):
        RayConfig(cpus_per_actor=0)
    assert main(["classify", str(tmp_path), "--text", "x", "--ray"]) == 2
    assert "--ray runs --input FILE jobs" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "x", "--ray"]) == 2
    assert "--ray runs --data-file jobs" in capsys.readouterr().err


def test_a_cluster_address_where_nothing_listens_is_refused_at_once():
    """ray.init retried a closed local port for ever (the job hung until killed)."""
    import socket
    import time
    from paddle2ort.runtime.distributed import check_reachable
    with socket.socket() as s:                       # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    for addr in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(BadInputError, match=f"nothing answers at {addr}"):
            check_reachable(addr)
    assert time.monotonic() - t0 < 10
    check_reachable("auto")                          # Ray's own forms are Ray's to resolve


def test_the_default_actor_size_fits_a_small_cluster():
    """Without --ray-cpus-per-actor an actor takes 4 cores, or all of a smaller cluster's (the README's example
    failed on a 2-core box); an explicit size the cluster cannot hold is refused naming the option."""
    from types import SimpleNamespace
    from paddle2ort.runtime.distributed import RayConfig, _Cluster, _session
    for cpus, want in ((2, (1, {"num_cpus": 2})), (16, (4, {"num_cpus": 4}))):
        cl = _Cluster(RayConfig())
        cl.ray = SimpleNamespace(cluster_resources=lambda cpus=cpus: {"CPU": cpus})
        assert cl.pool("cpu", chunks=8) == want
    assert _session("cpu", 0, {"num_cpus": 2})["intra_op_threads"] == 2
    cl = _Cluster(RayConfig(cpus_per_actor=4))
    cl.ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 2})
    with pytest.raises(BadInputError, match="--ray-cpus-per-actor"):
        cl.pool("cpu", chunks=8)
