"""The GPU bundle: derived requirement lists, the call-folder layout, and staging it call by call.

No network: the wheels here are stand-in files; the split size is shrunk so that a few KiB make
several parts, as 256 MiB of DALI makes five of 60 MiB.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_bundle  # noqa: E402 (bench/gpu_bundle.py)
import gpu_stage  # noqa: E402
import stack  # noqa: E402 (requirements/stack.py, put on sys.path by gpu_bundle)

MIB = 2**20


def fake_wheel(path: Path, requires: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x-1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: x\n" + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def test_latest_drops_composers_pins_and_keeps_the_rest(tmp_path):
    wheel = fake_wheel(tmp_path / "mosaicml-0.32.1-py3-none-any.whl",
                       ["torch<2.7.1,>=2.6.0", "torchvision<0.22.1", "numpy<2.3.0", "tabulate==0.9.0",
                        "Py_CPUinfo<10", 'wandb; extra == "wandb"'])
    reqs = stack.latest(str(wheel))
    names = [stack.name_of(r) for r in reqs]
    assert not {"torch", "torchvision", "mosaicml", "wandb"} & set(names)
    assert "tabulate==0.9.0" in reqs and "py-cpuinfo" in names and reqs[-1] == "numpy>=2"
    assert len(names) == len(set(names))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert (req in reqs) == (stack.name_of(req) not in stack.COMPOSER_PINNED)


def test_bundle_leaves_out_what_is_built_apart(tmp_path):
    composer = fake_wheel(tmp_path / "c.whl", ["tabulate==0.9.0"])
    ffcv = fake_wheel(tmp_path / "f.whl", ["fastargs", "numba", 'pytest; extra == "dev"'])
    names = {stack.name_of(r) for r in stack.bundle(str(composer), str(ffcv))}
    assert {"fastargs", "numba", "tabulate"} <= names
    assert not {"ffcv", "nvidia-dali-cuda120", "torch"} & names


def test_name_of_normalises():
    assert stack.name_of("Ruamel.YAML[x]>=1") == "ruamel-yaml"
    assert stack.name_of("torch_optimizer<0.4") == "torch-optimizer"
    with pytest.raises(ValueError):
        stack.name_of("<1")


def test_reachable_stops_at_what_the_machine_has():
    dali = stack.name_of(gpu_bundle.DALI)
    graph = {dali: {"requires": {"nvjpeg", "numpy"}, "requested": True},
             "torch": {"requires": {"nvjpeg", "numpy"}, "requested": False},
             "composer": {"requires": {"torch"}, "requested": True},
             "nvjpeg": {"requires": set(), "requested": False}, "numpy": {"requires": set(), "requested": False}}
    # torch is there: what it needs does not make nvjpeg a shared dependency
    assert gpu_bundle.dali_only(graph, {"torch", "numpy"}) == {dali, "nvjpeg"}
    assert gpu_bundle.dali_only(graph, {"numpy"}) == {dali}


def test_carry_plan_fits_each_call_and_runs_the_check_last():
    calls = {"call-1": 12 * MIB, "call-2": 60 * MIB, "call-3": 60 * MIB, "call-4": 16 * MIB}
    plan = gpu_bundle.carry_plan(calls, tree=1 * MIB)
    assert sorted(n for group in plan for n in group) == sorted(calls)
    assert all(sum(calls[n] for n in group) + MIB <= gpu_bundle.CALL_LIMIT for group in plan)
    assert "call-1" in plan[-1] and len(plan) == 3


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_bundle, "PART", 1000)
    rng = __import__("random").Random(0)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    made = {}
    for name, size in (("base_a-1-py3-none-any.whl", 300), ("base_b-1-py3-none-any.whl", 200),
                       ("dali-2.4.0-py3-none-any.whl", 2500), ("nvjpeg-13-py3-none-any.whl", 900)):
        made[name] = wheels / name
        made[name].write_bytes(bytes(rng.randrange(256) for _ in range(size)))
    out = tmp_path / "bundle"
    staging = out / "staging"
    manifest = gpu_bundle.lay_out(staging, out, [made["base_a-1-py3-none-any.whl"], made["base_b-1-py3-none-any.whl"]],
                                  [made["dali-2.4.0-py3-none-any.whl"], made["nvjpeg-13-py3-none-any.whl"]])
    gpu_bundle.publish(staging, out)
    return out, manifest, made


def carry(bundle_dir: Path, names: list[str], dest: Path) -> Path:
    """What one device call brings: only the named call folders."""
    if dest.exists():
        shutil.rmtree(dest)
    for name in names:
        shutil.copytree(bundle_dir / name, dest / name)
    return dest


def test_parts_staged_call_by_call_reassemble(bundle, tmp_path):
    out, manifest, made = bundle
    assert len(manifest["parts"]) >= 4 and all(p["bytes"] <= 1000 for p in manifest["parts"])
    stage = tmp_path / "stage"
    calls = [["call-2", "call-3"], ["call-4"], sorted(set(manifest["calls"]) - {"call-2", "call-3", "call-4"})]
    for k, names in enumerate(calls):
        got = gpu_stage.stage_call(carry(out, names, tmp_path / "carried"), stage)
        assert got["carried"] == names
        assert got["base_ready"] == (k == len(calls) - 1) and got["dali_ready"] == (k == len(calls) - 1)
    for name in ("dali-2.4.0-py3-none-any.whl", "nvjpeg-13-py3-none-any.whl"):
        assert (stage / "dali" / name).read_bytes() == made[name].read_bytes()
    assert not (stage / "dali.tar.tmp").exists()


def test_a_broken_part_is_one_clear_error(bundle, tmp_path):
    out, _, _ = bundle
    part = next((out / "call-2").glob("dali.tar.part-*"))
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(gpu_bundle.UserError, match="sha256 differs"):
        gpu_stage.check_only(out)
    assert gpu_stage.main(["--bundle", str(out), "--stage", str(tmp_path / "stage")]) == 2


def test_no_bundle_is_reported_not_an_error(tmp_path, capsys):
    assert gpu_stage.main(["--bundle", str(tmp_path / "none"), "--check-only"]) == 0
    assert "make gpu-bundle" in capsys.readouterr().out


def test_publish_removes_only_the_earlier_runs_calls(bundle, monkeypatch):
    out, first, made = bundle
    assert len(first["calls"]) > 2
    monkeypatch.setattr(gpu_bundle, "PART", 60 * MIB)  # the next build: one part
    keep = out / "cache" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("not the bundle's")
    staging = out / "staging"
    gpu_bundle.lay_out(staging, out, [made["base_a-1-py3-none-any.whl"]], [made["nvjpeg-13-py3-none-any.whl"]])
    gpu_bundle.publish(staging, out)
    assert keep.is_file() and not staging.exists()
    assert sorted(p.name for p in out.glob("call-*")) == ["call-1", "call-2"]
