"""deploy/kubernetes/: the manifests pass the Kubernetes API's schemas, and loadgen-job.yaml's N pods send one plan.

No cluster here: the test plays Kubernetes' part for the Job. It expands each
container's ``$(VAR)`` references as the kubelet does (the completion index,
the ConfigMap's start time), runs the N pods' commands as local processes
against a local server, with a temporary directory as the shared volume, then
the merge Job's script, and checks the merged result is exactly one plan's
requests.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from loadgen_factories import Servers

from loadgen.cli import build_parser
from loadgen.lib.inputs import parse_shard

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
JOB = DEPLOY / "kubernetes" / "loadgen-job.yaml"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def job(name: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents(JOB) if doc["kind"] == "Job" and doc["metadata"]["name"] == name]
    return found


def container(job_doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = job_doc["spec"]["template"]["spec"]["containers"]
    return only


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's expansion of command and args: ``$(NAME)`` is NAME's value where the container defines
    NAME, else left as it is; ``$$`` is ``$``."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        close = text.find(")", i + 2) if text.startswith("$(", i) else -1
        if close != -1:
            out.append(env.get(text[i + 2:close], text[i:close + 1]))
            i = close + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def pod_env(spec: dict[str, Any], index: int | None, start_at: str) -> dict[str, str]:
    """A container's environment as its pod sees it: plain values, the completion index (``index``) and the
    start time (``start_at``) from the ConfigMap the operator creates."""
    env = {}
    for var in spec["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"].get("fieldRef", {}).get("fieldPath") == INDEX_ANNOTATION:
            assert index is not None, f"{var['name']}: a completion index outside an Indexed Job"
            env[var["name"]] = str(index)
        elif var["valueFrom"].get("configMapKeyRef") == {"name": "loadgen-start", "key": "START_AT"}:
            env[var["name"]] = start_at
        else:
            raise AssertionError(f"the test does not know where {var['name']} comes from: {var}")
    return env


def run_argv(index: int, start_at: str) -> list[str]:
    """Pod ``index``'s loadgen command line, expanded, with every ``$(VAR)`` resolved."""
    spec = container(job("loadgen-run"))
    assert spec["command"] == ["loadgen"]
    env = pod_env(spec, index, start_at)
    argv = [expand(arg, env) for arg in spec["args"]]
    assert not any("$(" in arg for arg in argv), f"unresolved reference in {argv}"
    return argv


def option(argv: list[str], name: str) -> int:
    """The position of option ``name``'s value in ``argv``."""
    return argv.index(name) + 1


# -- schemas ---------------------------------------------------------------------


def test_every_manifest_passes_the_kubernetes_schemas_strictly() -> None:
    """Each document of deploy/kubernetes/*.yaml validates against the API schemas kubernetes-validate ships
    (offline), strict: an unknown field (a typo) fails, as a misspelt field is dropped by a lenient apply."""
    version = kubernetes_validate.latest_version()
    kinds = []
    for path in MANIFESTS:
        for doc in documents(path):
            kubernetes_validate.validate(doc, version, strict=True)
            kinds.append(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
    assert kinds == ["dataserv.yaml:Deployment/dataserv", "dataserv.yaml:Service/dataserv",
                     "loadgen-job.yaml:PersistentVolumeClaim/loadgen-results", "loadgen-job.yaml:Job/loadgen-run",
                     "loadgen-job.yaml:Job/loadgen-merge"]
    misspelt = copy.deepcopy(job("loadgen-run"))
    misspelt["spec"]["parallelizm"] = misspelt["spec"].pop("parallelism")
    with pytest.raises(kubernetes_validate.ValidationError, match="parallelizm"):
        kubernetes_validate.validate(misspelt, version, strict=True)


def test_the_manifests_run_the_image_deploy_dockerfile_builds() -> None:
    """Every container runs dataserv:latest, the image built from deploy/Dockerfile, which installs loadgen."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "-t dataserv " in dockerfile and "COPY loadgen ./loadgen" in dockerfile
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] in ("Deployment", "Job"):
                for spec in doc["spec"]["template"]["spec"]["containers"]:
                    assert spec["image"] == "dataserv:latest", (path.name, spec["name"])


# -- the Job's shape ---------------------------------------------------------------


def test_the_job_runs_n_shards_of_one_plan_into_one_volume() -> None:
    """N = completions = parallelism = SHARDS (run and merge); pod i runs ``loadgen run --shard i/N`` from
    the ConfigMap's START_AT, and writes its own file on the ReadWriteMany claim that the merge reads."""
    run, merge = job("loadgen-run"), job("loadgen-merge")
    n = run["spec"]["completions"]
    assert run["spec"]["completionMode"] == "Indexed" and run["spec"]["parallelism"] == n > 1
    for doc in (run, merge):
        assert pod_env(container(doc), 0, "0")["SHARDS"] == str(n)
    (claim,) = [doc for doc in documents(JOB) if doc["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = set()
    for doc in (run, merge):
        pod = doc["spec"]["template"]["spec"]
        (volume,) = pod["volumes"]
        (mount,) = container(doc)["volumeMounts"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert mount["name"] == volume["name"]
        mounts.add(mount["mountPath"])
    (results,) = mounts
    start_at = f"{time.time() + 60:.0f}"
    outs = set()
    for i in range(n):
        args = build_parser().parse_args(run_argv(i, start_at))
        assert args.command == "run" and args.rate and args.procs == 1
        assert parse_shard(args.shard) == (i, n) and args.start_at == start_at
        assert Path(args.out).parent == Path(results)
        outs.add(args.out)
    assert len(outs) == n


# -- the Job run here ----------------------------------------------------------------


@pytest.mark.slow
def test_n_pods_and_the_merge_send_exactly_one_plan(tmp_path: Path) -> None:
    """The manifest's N pod commands, as local processes from one start time, and then its merge script:
    the merged result has exactly the requests one unsharded plan of that rate and duration has (request n
    is due at n / rate, those due before the end), and so does the server.

    Schedule positions are made visible: the target (the Job's URL) becomes a targets file of N targets,
    so request n of the plan goes to target n mod N. Pod i's own result then shows it sent exactly
    positions i, i + N, ... (all to target i), so the N pods' intended start times interleave into the
    one schedule: not N copies of it, and not N copies of one shard.
    """
    rate, duration = 200.0, 1.0
    n = job("loadgen-run")["spec"]["completions"]
    plan = [k for k in range(int(rate * duration) + 10) if k / rate < duration]
    volume = tmp_path / "results"
    volume.mkdir()
    with Servers() as make:
        server = make("--delay-ms", "0")
        targets = tmp_path / "targets.jsonl"
        targets.write_text("".join(json.dumps({"url": server.url + "echo", "header": {"X-Seq": str(k)}}) + "\n"
                                   for k in range(n)))
        start_at = f"{time.time() + 3.0:.3f}"  # time for N interpreters to start on a busy machine
        pods = []
        for i in range(n):
            argv = [arg.replace("/results/", f"{volume}/") for arg in run_argv(i, start_at)]
            url = build_parser().parse_args(argv).url
            argv[argv.index(url):argv.index(url) + 1] = ["--targets", str(targets)]
            argv[option(argv, "--rate")] = f"{rate:g}"
            argv[option(argv, "--duration")] = f"{duration:g}s"
            build_parser().parse_args(argv)  # still the CLI's own options
            pods.append(subprocess.Popen([sys.executable, "-m", "loadgen", *argv], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True))
        for i, pod in enumerate(pods):
            _, err = pod.communicate(timeout=60)
            assert pod.returncode == 0, f"pod {i}: {err}"
        seen = Counter(seq for _, _, _, seq in server._get("echoes"))

    spec = container(job("loadgen-merge"))
    env = pod_env(spec, None, start_at)
    script = expand(spec["args"][0], env).replace("/results/", f"{volume}/")
    bin_dir = os.path.dirname(sys.executable)  # where the installed loadgen command is
    merged_out = subprocess.run([*spec["command"], script], capture_output=True, text=True, timeout=60,
                                env={**os.environ, **env, "PATH": bin_dir + os.pathsep + os.environ["PATH"]})
    assert merged_out.returncode == 0, merged_out.stderr
    merged = json.loads(merged_out.stdout)  # the merge's log is the merged result file
    assert merged == json.loads((volume / f"run-{start_at}-merged.json").read_text())

    (step,) = merged["steps"]
    assert step["requests"] == step["ok"] == len(plan) == 200
    per_target = Counter({str(k): count for k, count in Counter(k % n for k in plan).items()})
    assert [t["requests"] for t in step["targets"]] == [per_target[str(k)] for k in range(n)]
    assert seen == per_target
    shards = sorted(volume.glob(f"run-{start_at}-shard-*.json"))
    assert [p.name for p in shards] == [f"run-{start_at}-shard-{i}.json" for i in range(n)]
    for i, path in enumerate(shards):
        (own,) = json.loads(path.read_text())["steps"]
        sent = [t["requests"] for t in own["targets"]]
        assert sent == [per_target[str(i)] if k == i else 0 for k in range(n)], (i, sent)
