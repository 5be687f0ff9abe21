"""Prep where FFCV is missing or broken, in this process (tests/test_without_ffcv.py runs the CLI in
a process where FFCV cannot be imported at all).

Missing: ``sys.modules["ffcv"] = None``, what `import ffcv` meets when it is absent. Broken: an
``ffcv`` package whose import fails, as one whose shared library is gone does.
"""

from __future__ import annotations

import sys

import pytest

from dataprep import prep as prep_module
from dataprep.prep import prepare
from fasthpt.errors import UserError
from fasthpt.manifest import load_manifest

FAST = dict(workers=1, progress=False, max_res=32, val_frac=0.25, test_frac=0.0)
INSTALL = "pip install 'fasthpt[ffcv]'"


@pytest.fixture
def ffcv_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv", None)
    prep_module._note_wds_only.cache_clear()
    yield
    prep_module._note_wds_only.cache_clear()


@pytest.fixture
def ffcv_broken(monkeypatch, tmp_path):
    fake = tmp_path / "site" / "ffcv"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise ImportError("libturbojpeg.so.0: cannot open shared object file: No such file or directory")\n')
    for name in [n for n in sys.modules if n == "ffcv" or n.startswith("ffcv.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(fake.parent))


def test_default_formats_fall_back_to_shards_and_say_so_once(ffcv_missing, tiny_folder, tmp_path, capsys):
    first = prepare("a", out=tmp_path, src=tiny_folder, **FAST)
    second = prepare("b", out=tmp_path, src=tiny_folder, **FAST)  # as the demo does: a second data set
    notes = [line for line in capsys.readouterr().err.splitlines() if "FFCV is not installed" in line]
    assert len(notes) == 1 and INSTALL in notes[0]
    for out in (first, second):
        assert load_manifest(out).formats == ["wds"] and not (out / "ffcv").exists()


@pytest.mark.parametrize("formats", ["ffcv", ("ffcv", "wds")])
def test_asking_for_ffcv_without_it_names_the_install(ffcv_missing, tiny_folder, tmp_path, formats):
    with pytest.raises(UserError, match=r"FFCV is not installed: pip install 'fasthpt\[ffcv\]'.*or --formats wds"):
        prepare("c", out=tmp_path, src=tiny_folder, formats=formats, **FAST)
    assert not list(tmp_path.iterdir())


def test_a_broken_ffcv_fails_before_the_conversion(ffcv_broken, tiny_folder, tmp_path, monkeypatch):
    def converted(*args):
        raise AssertionError("the conversion started before FFCV was imported")

    monkeypatch.setattr(prep_module, "_converted", converted)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"does not import \(libturbojpeg\.so\.0: cannot open.*\); reinstall it: "
                                        r"pip install 'fasthpt\[ffcv\]'"):
        prepare("d", out=out, src=tiny_folder, **FAST)
    assert not (out / "d").exists() and not list(out.glob(".d.*"))
