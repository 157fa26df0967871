"""What `pip install etcdlock` gets: the product wheel and its metadata, built here from the checkout.

The wheel holds the engine, the CLI and the operator with their types (py.typed) and the CRDs; never the
sandbox (its own distribution, sandbox/). A plain install pulls only the engine's dependencies, and the
engine and the lock commands load no Kubernetes, kopf or HTTP-server module.
"""

from __future__ import annotations

import email.parser
import email.policy
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
import yaml

import etcdlock
from etcdlock.operator.definitions import crds

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_ONLY = ("kopf", "kubernetes", "aiohttp", "prometheus_client", "yaml", "tenacity", "urllib3")


def _build(source: Path, out: Path) -> Path:
    """A wheel built from ``source`` without network (the build tools of the test environment)."""
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def product_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The product wheel, built from a copy of what the Dockerfile copies, links kept as links (so the
    checkout stays clean)."""
    source = tmp_path_factory.mktemp("product")
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        assert name in dockerfile
        shutil.copy(ROOT / name, source / name)
    for folder in ("crds", "operator"):
        assert f"COPY {folder} ./{folder}" in dockerfile
        ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=ignore)
    with zipfile.ZipFile(_build(source, tmp_path_factory.mktemp("dist"))) as wheel:
        yield wheel


def _metadata(wheel: zipfile.ZipFile) -> Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser(policy=email.policy.compat32).parsestr(wheel.read(name).decode())


def test_the_wheel_carries_no_sandbox_emulator_kubelet_demo_or_pytest_plugin(
    product_wheel: zipfile.ZipFile,
) -> None:
    packages = {name.split("/")[0] for name in product_wheel.namelist()}
    assert packages == {"etcdlock", f"etcdlock-{etcdlock.__version__}.dist-info"}
    modules = [name for name in product_wheel.namelist() if name.endswith(".py")]
    assert not [m for m in modules if any(part in m for part in ("sandbox", "apiserver", "kubelet", "demo"))]
    assert not [m for m in modules if "pytest" in product_wheel.read(m).decode()]


def test_the_wheel_ships_its_types_its_crds_and_its_license(product_wheel: zipfile.ZipFile) -> None:
    names = set(product_wheel.namelist())
    assert "etcdlock/py.typed" in names
    shipped = {Path(n).name: product_wheel.read(n) for n in names if n.startswith("etcdlock/crds/")}
    checkout = {p.name: p.read_bytes() for p in (ROOT / "crds").iterdir()}
    assert shipped == checkout
    assert {doc["spec"]["names"]["kind"] for doc in crds()} == {"DistributedLock", "EtcdCluster"}
    assert f"etcdlock-{etcdlock.__version__}.dist-info/licenses/LICENSE" in names
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_a_plain_install_pulls_only_the_engine_dependencies(product_wheel: zipfile.ZipFile) -> None:
    metadata = _metadata(product_wheel)
    plain = [r for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]
    names = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in plain}
    # shtab: `etcdlock completion`; pyyaml: `-o yaml` (imported only then)
    assert names == {"aetcd", "grpcio", "protobuf", "pyyaml", "shtab"}
    operator = [r for r in metadata.get_all("Requires-Dist") or [] if 'extra == "operator"' in r]
    assert {r.split(">")[0].lower() for r in operator} >= {
        "kopf",
        "kubernetes",
        "aiohttp",
        "prometheus-client",
    }


def test_the_metadata_says_what_the_project_is(product_wheel: zipfile.ZipFile) -> None:
    metadata = _metadata(product_wheel)
    assert metadata["Version"] == etcdlock.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "soon" not in metadata["Summary"] and "Kubernetes operator" in metadata["Summary"]
    assert "Typing :: Typed" in (metadata.get_all("Classifier") or [])
    assert {url.split(",")[0] for url in metadata.get_all("Project-URL") or []} >= {"Homepage", "Source"}
    assert "etcd" in metadata["Keywords"].split(",")
    entry_points = product_wheel.read(f"etcdlock-{etcdlock.__version__}.dist-info/entry_points.txt")
    assert b"etcdlock = etcdlock.cli:main" in entry_points
    assert b"kubectl-etcdlock = etcdlock.kubectl:main" in entry_points


def test_the_image_tag_of_the_manifests_is_the_package_version() -> None:
    operator = yaml.safe_load_all((ROOT / "manifests" / "base" / "operator.yaml").read_text())
    images = [
        c["image"]
        for doc in operator
        if doc and doc.get("kind") == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]
    assert images and all(image.endswith(f":{etcdlock.__version__}") for image in images)


@pytest.mark.parametrize(
    "loads",
    [
        "import etcdlock.etcd",
        # What every `etcdlock` invocation does first (the sandbox's plugin command included).
        "from etcdlock.cli.main import build_parser; build_parser()",
        "import etcdlock.cli.lock, etcdlock.cli.status, etcdlock.cli.elect",
        # `kubectl etcdlock`: a plain install runs it (it reaches Kubernetes through kubectl).
        "from etcdlock.kubectl.main import parser; parser()",
    ],
)
def test_the_engine_and_the_lock_commands_load_no_operator_library(loads: str) -> None:
    probe = f"import sys; {loads}; print(' '.join(sorted(set(sys.modules) & set({OPERATOR_ONLY!r}))))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""


def test_the_sandbox_is_its_own_distribution_that_adds_a_command(tmp_path: Path) -> None:
    source = tmp_path / "sandbox"
    shutil.copytree(ROOT / "sandbox", source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    with zipfile.ZipFile(_build(source, tmp_path / "dist")) as wheel:
        packages = {
            name.split("/")[0] for name in wheel.namelist() if not name.startswith("etcdlock_sandbox-")
        }
        assert packages == {"etcdlock_sandbox"}
        requires = _metadata(wheel).get_all("Requires-Dist") or []
        assert any(r.startswith("etcdlock[operator]") for r in requires)
        (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
        assert "[etcdlock.commands]\nsandbox = etcdlock_sandbox.cli" in wheel.read(entry_points).decode()


def test_etcdlock_version_prints_the_package_version() -> None:
    etcdlock_command = str(Path(sys.executable).with_name("etcdlock"))
    done = subprocess.run(
        [etcdlock_command, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"etcdlock {etcdlock.__version__}")


@pytest.mark.parametrize("missing", ["kopf", "aiohttp", "kubernetes"])
def test_the_operator_without_its_extra_says_which_extra_to_install(missing: str) -> None:
    """As on a plain `pip install etcdlock`: the module is absent (an import of it fails)."""
    run = (
        f"import sys; sys.modules[{missing!r}] = None; "
        "from etcdlock.cli.main import run; sys.exit(run(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", run, "operator", "--endpoints", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    hint = f"(no module {missing}): pip install 'etcdlock[operator]'"
    assert done.stderr.strip().splitlines() == [f"etcdlock: the operator needs the operator extra {hint}"]


def test_the_help_lists_the_commands_other_distributions_add() -> None:
    etcdlock_command = str(Path(sys.executable).with_name("etcdlock"))
    done = subprocess.run(
        [etcdlock_command, "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "sandbox" in done.stdout and "lock" in done.stdout


def test_a_built_in_command_does_not_look_for_other_distributions_commands() -> None:
    """Reading every installed distribution's metadata is start-up time a `lock` or `status` need not pay."""
    probe = (
        "import sys; from etcdlock.cli.main import run; "
        "run(['--endpoints', 'http://127.0.0.1:9', 'status', 'x', '--request-timeout', '0.1']); "
        "print('importlib.metadata' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "False"
