"""The latest qualification of each model (``physflow qualify``), kept beside the embedded model
cache: a campaign reads its model's steering score as the prior of its pick quality, without
asking the test again. Apart from workflows.qualify, which writes them, because the launcher
that reads them is what qualify itself starts models with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from physflow.agents.qualify import QualifyRecord
from physflow.errors import ServingError
from physflow.serving.embedded import lookup, model_cache
from physflow.vocabulary.workflow import LLMSpec, LoadedWorkflow


def model_name(llm: LLMSpec) -> str:
    """``provider:model`` as the record names it: an embedded model by its full name (aliases
    such as smollm2-135m are the same model), a replay model by its script's file name."""
    name = llm.model
    if llm.provider == "replay":  # a script is the model: its name, not llm.model's default
        name = Path(llm.script or "").name
    elif llm.provider == "embedded":
        try:
            name = lookup(name).name
        except ServingError:
            pass  # not servable: the test fails to start with the serving error
    return f"{llm.provider}:{name}"


def record_folder() -> Path:
    """Where the latest record of each model is kept: ``qualify/`` beside the embedded model
    cache (``$PHYSFLOW_MODEL_CACHE``, else ``~/.cache/physflow/models``)."""
    return model_cache().parent / "qualify"


def record_path(llm: LLMSpec) -> Path:
    """The cache file of ``llm``'s latest record. Readable name, plus a hash of what makes a model
    another (its endpoint, its replay script): two servers of one model name are two records."""
    name = model_name(llm)
    where = "\n".join([name, llm.base_url or "", llm.script or ""])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]
    return record_folder() / f"{slug}-{hashlib.sha256(where.encode()).hexdigest()[:12]}.json"


def load_record(llm: LLMSpec) -> QualifyRecord | None:
    """The model's latest qualification (its ``steering`` score is the campaign's prior for its
    picks), or None when it was never qualified here or the record cannot be read."""
    try:
        return QualifyRecord.from_json(json.loads(record_path(llm).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return None


def keep_record(llm: LLMSpec, record: QualifyRecord) -> None:
    """Replace the cached record whole; a cache that cannot be written costs only the reuse."""
    path = record_path(llm)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record.to_json(), indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def qualify_llm(workflow: LoadedWorkflow) -> LLMSpec:
    """The workflow's ``llm`` as qualification uses it: the replay script ``llm.qualify.script``
    (else ``llm.script``) resolved against the workflow's folder. A vLLM model that physflow
    serves on a site's GPU pool exists only during a campaign: that is a SpecError."""
    llm = workflow.spec.llm
    if llm.provider == "vllm" and not llm.base_url:
        raise workflow.error("llm.provider", "physflow qualify needs a running vLLM server: physflow serves one "
                                             "only during a campaign; give the base_url of a running one")
    if llm.provider == "replay":
        script = (llm.qualify.script if llm.qualify and llm.qualify.script else None) or llm.script or ""
        llm = llm.model_copy(update={"script": str(workflow.resolve(script))})
    return llm
