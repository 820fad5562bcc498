"""The cluster recipes in docs/recipes/ (Slurm, KubeRay, SkyPilot), checked as far as can be done
without a cluster.

Each recipe is parsed as what it is (YAML with the safe loader; the sbatch script and SkyPilot's
`setup`/`run` by `bash -n` in the integration tier, as that starts a process); every `agora` and
`ray` command line in it uses a subcommand and options that exist (read from the Typer app and
from Ray's own click commands, in this process); the agora config it names exists, validates
through agora's own loader and has a Ray cluster section; the config's API-key variable is handed
to agora; the head node keeps its GPUs out of Ray (the trainers run beside agora there); and the
worker GPUs the recipe asks for hold every replica. The RayJob is checked for the fields KubeRay
needs, the SkyPilot task for the keys of SkyPilot's task schema (read from its
`sky/utils/schemas.py`, 0.14: installing SkyPilot to run its own validator would bring some fifty
packages, with pins that clash with agora's, into the test venv). Each check is also run on a
broken variant of a recipe and must report it.

Not checked here: that Slurm, Kubernetes or a cloud accept them, GPUs, and a network between real
nodes (docs/cluster.md says what the CI runs instead).
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from ray.scripts.scripts import cli as ray_cli

from agora_cli.cli import app
from agora_cli.config import Config, SGLangBackend, load_config
from agora_cli.errors import AgoraError
from agora_cli.paths import REPO_DIR

RECIPES = REPO_DIR / "docs" / "recipes"
SLURM = RECIPES / "slurm-agora-ray.sbatch"
KUBERAY = RECIPES / "kuberay-rayjob.yaml"
SKYPILOT = RECIPES / "skypilot-agora-ray.yaml"

AGORA = typer.main.get_command(app)
# Commands that end where one of these tokens stands (shlex with punctuation_chars splits them off).
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "$", "<", ">", "<(", "then", "do", "fi", "done"}
# SkyPilot 0.14's task schema (sky/utils/schemas.py: get_task_schema, _get_single_resources_schema);
# both forbid any other key (additionalProperties: false).
SKYPILOT_TASK_KEYS = {
    "name", "workdir", "event_callback", "num_nodes", "resources", "file_mounts", "service", "pool",
    "setup", "run", "envs", "secrets", "managed_secrets", "inputs", "outputs", "file_mounts_mapping",
    "config", "volumes", "volume_mounts", "api_server_access", "_metadata",
}  # fmt: skip
SKYPILOT_RESOURCES_KEYS = {
    "cloud", "region", "zone", "infra", "cpus", "memory", "accelerators", "instance_type", "use_spot",
    "job_recovery", "volumes", "disk_size", "ephemeral_storage", "disk_tier", "network_tier",
    "local_disk", "max_hourly_cost", "ports", "labels", "accelerator_args", "image_id", "priority",
    "priority_class", "any_of", "ordered",
}  # fmt: skip
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- shell command lines


def commands(script: str, program: str) -> list[list[str]]:
    """Every `program ...` command line in a shell script, as argv (quotes removed, variables left
    as written), wherever it stands: after `srun ... `, in `$(...)`, after `&&` or `then` (but
    not right after an option, whose value it then is)."""
    text = script.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # an unclosed quote: `bash -n` reports the script itself
            continue
        for i, token in enumerate(tokens):
            if i and tokens[i - 1].startswith("-"):
                continue  # an option's value (`sky launch -c agora`), not a command
            if token == program or token.endswith("/" + program):
                argv = [program]
                for t in tokens[i + 1 :]:
                    if t in SEPARATORS:
                        break
                    argv.append(t)
                out.append(argv)
    return out


def variables(script: str) -> dict[str, str]:
    """`NAME=value` assignments of a script, `${OTHER:-default}` taken as its default."""
    out = {}
    for m in re.finditer(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S+)", script, re.M):
        value = m[2].strip("'\"")
        default = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-(.*)\}", value)
        out[m[1]] = default[1] if default else value
    return out


_VARIABLE = re.compile(r"\$\{(?P<braced>[A-Za-z_]\w*)(?::-(?P<default>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


def expand(token: str, env: dict[str, str]) -> str:
    """`$NAME`, `${NAME}` and `${NAME:-x}` replaced from `env` (unknown ones left as written)."""

    def one(m: re.Match[str]) -> str:
        name = m["braced"] or m["bare"]
        if name in env:
            return env[name]
        return m["default"] if m["default"] is not None else m[0]

    return _VARIABLE.sub(one, token)


def click_problems(argv: list[str], group: Any) -> tuple[list[str], list[str]]:
    """(problems, positional arguments) of `argv` (program first) against a click group (Ray's
    click or Typer's copy of it, hence no isinstance): the subcommand (and sub-subcommand) must
    exist and each option be one of its own."""
    name = argv[0]
    command = group
    rest = argv[1:]
    while hasattr(command, "commands"):
        if not rest or rest[0] not in command.commands:
            return [f"`{' '.join(argv)}`: no command {name} {rest[0] if rest else ''!r}".rstrip()], []
        name += " " + rest[0]
        command = command.commands[rest[0]]
        rest = rest[1:]
    options = {
        o: p for p in command.params if p.param_type_name == "option" for o in p.opts + p.secondary_opts
    }
    problems, positional = [], []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-") and token != "-":
            flag = token.split("=", 1)[0]
            param = options.get(flag)
            if param is None:
                problems.append(f"`{name}` has no option {flag}")
            elif not param.is_flag and "=" not in token:
                i += 1  # its value
        else:
            positional.append(token)
        i += 1
    return problems, positional


def agora_lines_problems(script: str, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(problems, config paths) of every agora command line in `script`: real subcommands and
    options; the configs `run`, `serve` and `validate` are given, expanded from `env`."""
    problems, configs = [], []
    lines = commands(script, "agora")
    if not any(argv[1:2] == ["run"] for argv in lines):
        problems.append("no `agora run` command line")
    for argv in lines:
        found, positional = click_problems(argv, AGORA)
        problems += found
        if argv[1:2] and argv[1] in ("run", "serve", "validate") and positional:
            configs.append(expand(positional[0], env))
    return problems, configs


def _option(argv: list[str], flag: str) -> str | None:
    """The value `--flag=v` or `--flag v` gives in `argv`, or None."""
    for i, token in enumerate(argv):
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


def ray_lines_problems(script: str) -> list[str]:
    """Every `ray` command line uses a real Ray subcommand and its options; the head is started
    with no GPUs for Ray (`--num-gpus 0`): agora's trainers use them."""
    problems: list[str] = []
    lines = commands(script, "ray")
    heads = [argv for argv in lines if argv[1:2] == ["start"] and "--head" in argv]
    if len(heads) != 1:
        problems.append(f"{len(heads)} `ray start --head` lines (one expected)")
    for argv in heads:
        if _option(argv, "--num-gpus") != "0":
            problems.append("the Ray head is started without --num-gpus=0")
    for argv in lines:
        problems += click_problems(argv, ray_cli)[0]
    return problems


# --------------------------------------------------------------------------- configs


def config_problems(path: str, cwd: Path = REPO_DIR) -> tuple[list[str], Config | None]:
    """The config a recipe runs: it exists, validates, and places replicas with Ray."""
    file = Path(path) if Path(path).is_absolute() else cwd / path
    try:
        cfg = load_config(file)
    except AgoraError as e:
        return [f"{path}: {e}"], None
    if cfg.cluster is None or not cfg.cluster.backends:
        return [f"{path}: no cluster section placing replicas with Ray"], cfg
    return [], cfg


def replica_gpus(cfg: Config) -> float:
    """GPUs the config's Ray replicas hold: per backend, base models x replicas x num_gpus."""
    assert cfg.cluster is not None
    total = 0.0
    for name, spec in cfg.cluster.backends.items():
        bases = {m.model for m in cfg.members if m.backend == name}
        total += len(bases) * spec.replicas * spec.num_gpus
    return total


def key_problems(cfg: Config, supplied: set[str]) -> list[str]:
    """The variable each backend reads its API key from must reach agora."""
    wanted = {getattr(b, "api_key_env", None) for b in cfg.backends.values()} - {None}
    return [
        f"the config reads its API key from ${v}, which the recipe does not supply" for v in wanted - supplied
    ]


# --------------------------------------------------------------------------- Slurm


def sbatch_options(script: str) -> dict[str, str]:
    """`#SBATCH --name=value` directives."""
    return dict(re.findall(r"^#SBATCH\s+(--[a-z-]+)=(\S+)", script, re.M))


def slurm_problems(script: str) -> list[str]:
    env = variables(script)
    problems, configs = agora_lines_problems(script, env)
    problems += ray_lines_problems(script)
    if not script.startswith("#!"):
        problems.append("no #! line")
    opts = sbatch_options(script)
    for needed in ("--nodes", "--gpus-per-node"):
        if needed not in opts:
            problems.append(f"no #SBATCH {needed}")
    if "srun" not in script or "scontrol show hostnames" not in script:
        problems.append("the Ray nodes are not started with srun on the job's hosts")
    supplied = set(re.findall(r"\$\{([A-Za-z_]+):\?", script))  # required at submission
    for path in configs:
        found, cfg = config_problems(path)
        problems += found
        if cfg is None or found:
            continue
        problems += key_problems(cfg, supplied)
        workers = (int(opts.get("--nodes", "1")) - 1) * int(opts.get("--gpus-per-node", "0"))
        if replica_gpus(cfg) > workers:
            problems.append(f"{path}: {replica_gpus(cfg):g} replica GPUs, the worker nodes have {workers}")
    return problems


# --------------------------------------------------------------------------- KubeRay


def _containers(pod: Any) -> list[dict[str, Any]]:
    spec = (pod or {}).get("template", {}).get("spec", {}) if isinstance(pod, dict) else {}
    containers = spec.get("containers")
    return containers if isinstance(containers, list) else []


def _gpus(container: dict[str, Any]) -> float:
    return float(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def rayjob_problems(docs: list[Any], tmp: Path) -> list[str]:
    """The manifest's RayJob has what KubeRay needs; its entrypoint runs agora on a config from
    the manifest's ConfigMap that validates; mounts name volumes the pod has."""
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "RayJob"]
    if len(jobs) != 1:
        return [f"{len(jobs)} RayJob documents (one expected)"]
    job = jobs[0]
    problems = []
    if job.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {job.get('apiVersion')!r}, not ray.io/v1")
    if not job.get("metadata", {}).get("name"):
        problems.append("no metadata.name")
    spec = job.get("spec") or {}
    entrypoint = spec.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        problems.append("no spec.entrypoint")
        entrypoint = ""
    cluster = spec.get("rayClusterSpec") or {}
    head = cluster.get("headGroupSpec")
    workers = cluster.get("workerGroupSpecs")
    if not isinstance(head, dict) or not _containers(head):
        problems.append("no spec.rayClusterSpec.headGroupSpec.template.spec.containers")
        head = {}
    if not isinstance(workers, list) or not workers:
        problems.append("no spec.rayClusterSpec.workerGroupSpecs")
        workers = []
    for where, group in [("headGroupSpec", head)] + [
        (f"workerGroupSpecs[{i}]", w) for i, w in enumerate(workers)
    ]:
        params = group.get("rayStartParams", {})
        if not isinstance(params, dict) or any(not isinstance(v, str) for v in params.values()):
            problems.append(f"{where}.rayStartParams: KubeRay takes a map of strings")
        for c in _containers(group):
            if not c.get("name") or not c.get("image"):
                problems.append(f"{where}: a container without name or image")
        pod = group.get("template", {}).get("spec", {})
        volumes = {v.get("name") for v in pod.get("volumes", [])}
        for c in _containers(group):
            for mount in c.get("volumeMounts", []):
                if mount.get("name") not in volumes:
                    problems.append(f"{where}: volumeMount {mount.get('name')!r} names no volume of the pod")
    for i, w in enumerate(workers):
        if not w.get("groupName") or not isinstance(w.get("replicas"), int):
            problems.append(f"workerGroupSpecs[{i}]: needs groupName and replicas")
    if head and head.get("rayStartParams", {}).get("num-gpus") != "0":
        problems.append('the Ray head offers its GPUs to Ray (rayStartParams num-gpus must be "0")')
    # The entrypoint runs on the head: its agora command, and the config file it reads there.
    found, configs = agora_lines_problems(entrypoint, {})
    problems += found
    maps = {
        d["metadata"]["name"]: d.get("data", {})
        for d in docs
        if isinstance(d, dict) and d.get("kind") == "ConfigMap" and d.get("metadata", {}).get("name")
    }
    pod = head.get("template", {}).get("spec", {}) if head else {}
    by_volume = {v.get("name"): v for v in pod.get("volumes", [])}
    head_env = {e.get("name") for c in _containers(head) for e in c.get("env", [])}
    for path in configs:
        text = None
        for c in _containers(head):
            for mount in c.get("volumeMounts", []):
                source = by_volume.get(mount.get("name"), {}).get("configMap", {}).get("name")
                if source is not None and path.startswith(mount["mountPath"].rstrip("/") + "/"):
                    text = maps.get(source, {}).get(path[len(mount["mountPath"].rstrip("/")) + 1 :])
        if text is None:
            problems.append(f"{path}: not a file of a ConfigMap in this manifest mounted on the head")
            continue
        parent = (yaml.safe_load(text) or {}).get("extends", "")
        if not (REPO_DIR / "configs" / parent).is_file() or not parent.startswith("cluster/"):
            problems.append(f"{path}: extends {parent!r}, not a shipped config under configs/cluster/")
        local = tmp / Path(path).name
        local.write_text(text)
        found, cfg = config_problems(str(local))
        problems += [p.replace(str(local), path) for p in found]
        if cfg is None or found:
            continue
        problems += key_problems(cfg, head_env)
        gpus = sum(_gpus(c) * w.get("replicas", 0) for w in workers for c in _containers(w))
        if replica_gpus(cfg) > gpus:
            problems.append(f"{path}: {replica_gpus(cfg):g} replica GPUs, the worker pods have {gpus:g}")
    return problems


# --------------------------------------------------------------------------- SkyPilot


def skypilot_problems(task: Any) -> list[str]:
    """The task's keys are SkyPilot's; it starts Ray over its nodes from SkyPilot's variables and
    runs agora on rank 0 with a config that validates."""
    if not isinstance(task, dict):
        return ["not a mapping"]
    problems = [f"{k!r} is not a key of SkyPilot's task schema" for k in task if k not in SKYPILOT_TASK_KEYS]
    resources = task.get("resources", {})
    problems += [
        f"resources.{k} is not a key of SkyPilot's resources schema"
        for k in resources
        if k not in SKYPILOT_RESOURCES_KEYS
    ]
    nodes = task.get("num_nodes")
    if not isinstance(nodes, int) or nodes < 2:
        problems.append("num_nodes must be a whole number of at least 2 (a head and workers)")
        nodes = 1
    for section in ("envs", "secrets"):
        for k, v in (task.get(section) or {}).items():
            if not ENV_NAME.match(str(k)) or not (v is None or isinstance(v, str)):
                problems.append(f"{section}.{k}: SkyPilot takes variable names with string or null values")
    for section in ("setup", "run"):
        if not isinstance(task.get(section), str):
            problems.append(f"no {section} script")
    setup, run = str(task.get("setup", "")), str(task.get("run", ""))
    if not any("[ray" in " ".join(argv) for argv in commands(setup, "pip")):
        problems.append("setup does not install agora with the ray extra")
    for name in ("SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS"):
        if name not in run:
            problems.append(f"run does not use ${name}")
    env = {k: v for k, v in (task.get("envs") or {}).items() if isinstance(v, str)}
    found, configs = agora_lines_problems(run, env)
    problems += found + ray_lines_problems(run)
    supplied = set(task.get("envs") or {}) | set(task.get("secrets") or {})
    accel = str(resources.get("accelerators", ""))
    per_node = int(accel.rpartition(":")[2]) if ":" in accel else (1 if accel else 0)
    for path in configs:
        found, cfg = config_problems(path)
        problems += found
        if cfg is None or found:
            continue
        problems += key_problems(cfg, supplied)
        if replica_gpus(cfg) > (nodes - 1) * per_node:
            problems.append(
                f"{path}: {replica_gpus(cfg):g} replica GPUs, the workers have {(nodes - 1) * per_node}"
            )
    return problems


# --------------------------------------------------------------------------- the tests


def _load(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


@pytest.mark.unit
def test_each_recipe_names_a_shipped_cluster_config_that_validates() -> None:
    named = {
        path: set(re.findall(r"configs/cluster/[\w.-]+\.yaml", path.read_text()))
        for path in (SLURM, KUBERAY, SKYPILOT)
    }
    assert all(named.values()), named
    for configs in named.values():
        for config in configs:
            assert config_problems(config)[0] == []


@pytest.mark.unit
def test_the_cluster_configs_are_their_one_machine_configs_placed_by_ray() -> None:
    """tiny-ray is tiny with the SmolLM2 server as two CPU replicas (Gemma's server as in tiny,
    outside Ray); paper-mixed-ray is paper-mixed with SGLang replicas reachable from other nodes."""
    tiny, ray_tiny = (
        load_config(REPO_DIR / "configs/tiny.yaml"),
        load_config(REPO_DIR / "configs/cluster/tiny-ray.yaml"),
    )
    assert (ray_tiny.protocol, ray_tiny.training, ray_tiny.evaluation) == (
        tiny.protocol,
        tiny.training,
        tiny.evaluation,
    )
    assert [(m.name, m.model) for m in ray_tiny.members] == [(m.name, m.model) for m in tiny.members]
    assert ray_tiny.cluster is not None and list(ray_tiny.cluster.backends) == ["vllm"]
    spec = ray_tiny.cluster.backends["vllm"]
    assert (spec.replicas, spec.placement, spec.num_gpus, spec.num_cpus) == (2, "SPREAD", 0, 1)
    assert {m.name for m in ray_tiny.members if m.backend == "vllm"} == {"smol-a", "smol-b"}
    gemma = ray_tiny.backend_of("gemma")
    assert gemma.model_dump() == tiny.backend_of("gemma").model_dump()  # served as in tiny.yaml

    paper, ray_paper = (
        load_config(REPO_DIR / f"configs/{n}.yaml") for n in ("paper-mixed", "cluster/paper-mixed-ray")
    )
    assert (ray_paper.protocol, ray_paper.training, ray_paper.members) == (
        paper.protocol,
        paper.training,
        paper.members,
    )
    sglang = ray_paper.backends["sglang"]
    assert isinstance(sglang, SGLangBackend)
    assert (sglang.host, sglang.api_key_env, sglang.launch) == ("0.0.0.0", "AGORA_SERVER_KEY", True)
    assert ray_paper.cluster is not None and ray_paper.cluster.backends["sglang"].placement == "SPREAD"
    assert replica_gpus(ray_paper) == 8


@pytest.mark.unit
def test_the_slurm_script() -> None:
    assert slurm_problems(SLURM.read_text()) == []


@pytest.mark.unit
def test_the_kuberay_rayjob(tmp_path: Path) -> None:
    assert rayjob_problems(_load(KUBERAY), tmp_path) == []


@pytest.mark.unit
def test_the_skypilot_task() -> None:
    (task,) = _load(SKYPILOT)
    assert skypilot_problems(task) == []


def docs_problems(doc: str) -> list[str]:
    """The `agora` and `ray` command lines in a page's bash blocks are real ones, and the
    configs they run validate."""
    problems = []
    for block in re.findall(r"```bash\n(.*?)```", doc, re.S):
        for argv in commands(block, "ray"):
            problems += click_problems(argv, ray_cli)[0]
        for argv in commands(block, "agora"):
            found, positional = click_problems(argv, AGORA)
            problems += found
            if argv[1] in ("run", "serve", "validate") and positional and positional[0].endswith(".yaml"):
                problems += config_problems(positional[0])[0]
    return problems


@pytest.mark.unit
def test_the_docs_link_every_recipe_and_show_real_commands() -> None:
    doc = (REPO_DIR / "docs" / "cluster.md").read_text()
    for path in (SLURM, KUBERAY, SKYPILOT):
        assert f"(recipes/{path.name})" in doc, path.name
    assert docs_problems(doc) == []
    assert "agora run configs/cluster/tiny-ray.yaml --steps 2" in doc  # the checks saw a run line
    broken = doc.replace(
        "agora run configs/cluster/tiny-ray.yaml --steps 2",
        "agora run configs/cluster/tiny-ray.yaml --step 2",
    )
    assert docs_problems(broken) == ["`agora run` has no option --step"]
    broken = doc.replace("ray start --head --num-cpus 4", "ray start --head --cpus 4")
    assert docs_problems(broken) == ["`ray start` has no option --cpus"]


def _bad_config(tmp: Path) -> str:
    """A copy of the cluster config whose replicas cannot be placed (replicas: 0)."""
    text = (REPO_DIR / "configs/cluster/paper-mixed-ray.yaml").read_text()
    bad = tmp / "cluster" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(
        text.replace(
            "extends: ../paper-mixed.yaml", f"extends: {REPO_DIR / 'configs/paper-mixed.yaml'}"
        ).replace("replicas: 2,", "replicas: 0,")
    )
    return str(bad)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (
            'agora run "$CONFIG" --run-dir',
            'agora run "$CONFIG" --rundir',
            "`agora run` has no option --rundir",
        ),
        ('agora validate "$CONFIG"', 'agora check "$CONFIG"', "no command agora 'check'"),
        ("configs/cluster/paper-mixed-ray.yaml}", "configs/cluster/nope.yaml}", "nope.yaml"),
        ("configs/cluster/paper-mixed-ray.yaml}", "configs/tiny.yaml}", "no cluster section"),
        ("--num-gpus=0 --disable", "--disable", "without --num-gpus=0"),
        (
            "--disable-usage-stats --block &\nsleep",
            "--no-usage-stats --block &\nsleep",
            "no option --no-usage",
        ),
        ("#SBATCH --nodes=3", "#SBATCH --nodes=2", "8 replica GPUs, the worker nodes have 4"),
        (': "${AGORA_SERVER_KEY:?', ': "${AGORA_KEY:?', "$AGORA_SERVER_KEY, which the recipe does not"),
        ('agora run "$CONFIG"', 'agora serve "$CONFIG"', "no `agora run`"),
    ],
)
def test_slurm_checks_catch_a_broken_script(old: str, new: str, words: str) -> None:
    text = SLURM.read_text()
    assert old in text
    assert any(words in p for p in slurm_problems(text.replace(old, new, 1))), slurm_problems(
        text.replace(old, new, 1)
    )


@pytest.mark.unit
def test_slurm_checks_catch_a_config_that_does_not_validate(tmp_path: Path) -> None:
    text = SLURM.read_text().replace("configs/cluster/paper-mixed-ray.yaml}", _bad_config(tmp_path) + "}")
    problems = slurm_problems(text)
    assert any("cluster.backends.sglang.replicas" in p for p in problems), problems


def _edit(docs: list[Any], change: Any) -> list[Any]:
    docs = copy.deepcopy(docs)
    change(next(d for d in docs if d["kind"] == "RayJob"), next(d for d in docs if d["kind"] == "ConfigMap"))
    return docs


def _head(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]


RAYJOB_BREAKS = {
    "no entrypoint": (lambda j, m: j["spec"].pop("entrypoint"), "no spec.entrypoint"),
    "old api": (lambda j, m: j.update(apiVersion="ray.io/v1alpha1"), "not ray.io/v1"),
    "no workers": (
        lambda j, m: j["spec"]["rayClusterSpec"].pop("workerGroupSpecs"),
        "no spec.rayClusterSpec.worker",
    ),
    "no head containers": (
        lambda j, m: _head(j)["template"]["spec"].pop("containers"),
        "headGroupSpec.template",
    ),
    "int start param": (lambda j, m: _head(j)["rayStartParams"].update({"num-gpus": 0}), "map of strings"),
    "head gpus": (lambda j, m: _head(j)["rayStartParams"].pop("num-gpus"), "offers its GPUs"),
    "flag": (
        lambda j, m: j["spec"].update(entrypoint="agora run /etc/agora/agora.yaml --dir /r"),
        "no option --dir",
    ),
    "mount": (lambda j, m: _head(j)["template"]["spec"]["volumes"].pop(0), "names no volume"),
    "bad config": (
        lambda j, m: m["data"].update({"agora.yaml": m["data"]["agora.yaml"] + "protocol: {elite_k: -1}\n"}),
        "protocol.elite_k",
    ),
    "not cluster": (
        lambda j, m: m["data"].update({"agora.yaml": "extends: tiny.yaml\nname: t\n"}),
        "not a shipped config under configs/cluster/",
    ),
    "no key": (
        lambda j, m: _head(j)["template"]["spec"]["containers"][0]["env"].pop(1),
        "$AGORA_SERVER_KEY, which the recipe does not",
    ),
    "too few gpus": (
        lambda j, m: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=1),
        "8 replica GPUs, the worker pods have 4",
    ),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(RAYJOB_BREAKS))
def test_rayjob_checks_catch_a_broken_manifest(case: str, tmp_path: Path) -> None:
    change, words = RAYJOB_BREAKS[case]
    problems = rayjob_problems(_edit(_load(KUBERAY), change), tmp_path)
    assert any(words in p for p in problems), problems


SKYPILOT_BREAKS = {
    "unknown key": (lambda t: t.update(nodes=3), "'nodes' is not a key"),
    "resources key": (lambda t: t["resources"].update(gpus="H100:4"), "resources.gpus is not a key"),
    "one node": (lambda t: t.update(num_nodes=1), "num_nodes must be"),
    "env name": (lambda t: t["envs"].update({"HF-HOME": "/x"}), "envs.HF-HOME"),
    "no ray extra": (lambda t: t.update(setup=t["setup"].replace("[ray,sglang]", "[sglang]")), "ray extra"),
    "no rank": (
        lambda t: t.update(run=t["run"].replace("$SKYPILOT_NODE_RANK", "$RANK")),
        "SKYPILOT_NODE_RANK",
    ),
    "flag": (
        lambda t: t.update(run=t["run"].replace("--run-dir", "--out")),
        "`agora run` has no option --out",
    ),
    "bad config": (
        lambda t: t["envs"].update(AGORA_CONFIG="configs/cluster/x.yaml"),
        "configs/cluster/x.yaml",
    ),
    "no secret": (lambda t: t["secrets"].pop("AGORA_SERVER_KEY"), "$AGORA_SERVER_KEY, which the recipe"),
    "two nodes": (lambda t: t.update(num_nodes=2), "8 replica GPUs, the workers have 4"),
    "head gpus": (lambda t: t.update(run=t["run"].replace(" --num-gpus=0", "")), "without --num-gpus=0"),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(SKYPILOT_BREAKS))
def test_skypilot_checks_catch_a_broken_task(case: str) -> None:
    change, words = SKYPILOT_BREAKS[case]
    (task,) = _load(SKYPILOT)
    change(task)
    problems = skypilot_problems(task)
    assert any(words in p for p in problems), problems


# --------------------------------------------------------------------------- bash -n (a process)


def bash_syntax(script: str) -> str:
    """`bash -n`'s complaint about `script` ("" when it parses)."""
    r = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    return r.stderr if r.returncode else ""


@pytest.mark.integration
def test_the_shell_in_the_recipes_parses() -> None:
    (task,) = _load(SKYPILOT)
    for name, script in [
        ("slurm", SLURM.read_text()),
        ("skypilot setup", task["setup"]),
        ("skypilot run", task["run"]),
        ("rayjob entrypoint", next(d for d in _load(KUBERAY) if d["kind"] == "RayJob")["spec"]["entrypoint"]),
    ]:
        assert bash_syntax(script) == "", name
    # ... and a broken one does not.
    assert "syntax error" in bash_syntax(SLURM.read_text().replace("done\n", "", 1))
