"""``physflow qualify`` of the models physflow ships and tests with, on the full question bank.

For each model the heat2d example workflow (its parameters kappa, power and its objective chi2
make the proposal, tool and steering questions) is copied with the model's ``llm:`` and
``physflow qualify`` runs on it in its own process, exactly as a user would run it:

``embedded:smollm2-135m-instruct``
    SmolLM2-135M-Instruct on the llama.cpp server physflow starts (the quick-test model).
``embedded:qwen2.5-coder-1.5b-instruct``
    Qwen2.5-Coder-1.5B-Instruct, the default embedded model.
``replay:answer-key``
    AutoGen's replay model fed the test's own answer key (every reply right): the top of the scale,
    and proof that a right answer is scored right through the whole path.
``replay:campaign``
    The replay model as the campaign tests script it (a planner's proposals, one per line): what
    a scripted model that was not written for the test scores.

Prints one markdown table row per model (score per category, overall, steering top-1, seconds).
Run from the repository root: ``python bench/qualify_models.py [--models ...] [--limit N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from physflow.agents.qualify import build_questions  # noqa: E402
from physflow.vocabulary.workflow import QUALIFY_CATEGORIES, load_workflow  # noqa: E402

EXAMPLE = ROOT / "workflows" / "examples" / "heat2d.yaml"
MODELS = ("embedded:smollm2-135m-instruct", "embedded:qwen2.5-coder-1.5b-instruct", "replay:answer-key",
          "replay:campaign")
#: What the campaign tests script for a replay planner (tests/ui/conftest.py): two proposals.
CAMPAIGN_SCRIPT = [
    {"content": {"hypothesis": "The field is matched near kappa 0.4 m^2/s.", "prediction": "chi2 below 5 at kappa 0.4",
                 "simulations": [{"kappa": 0.4, "power": 30}, {"kappa": 0.6, "power": 30}]}},
    {"content": {"hypothesis": "A larger power needs a larger kappa.", "prediction": "chi2 rises at power 50",
                 "simulations": [{"kappa": 0.4, "power": 50}]}},
]


def workflow_for(model: str, folder: Path, seed: int, limit: int | None) -> Path:
    """The example workflow with ``model`` as its llm (and the replay model's script beside it)."""
    provider, name = model.split(":", 1)
    text = EXAMPLE.read_text()
    if provider == "embedded":
        llm = f"llm:\n  provider: embedded\n  model: {name}\n"
    else:
        llm = f"llm:\n  provider: replay\n  script: {name}.jsonl\n"
    head, rest = text.split("llm:\n", 1)
    rest = rest.split("simulation:", 1)[1]
    path = folder / "wf.yaml"
    path.write_text(head + llm + "simulation:" + rest)
    if provider == "replay":
        lines = CAMPAIGN_SCRIPT if name == "campaign" else [
            {"content": q.key} for q in build_questions(load_workflow(path).spec, seed=seed, limit=limit)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="provider:name of each model")
    parser.add_argument("--limit", type=int, help="at most this many questions per category")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    header = "| model | " + " | ".join(QUALIFY_CATEGORIES) + " | overall | steering top-1 | seconds |"
    rows = []
    with tempfile.TemporaryDirectory(prefix="physflow-qualify-") as tmp:
        for model in args.models:
            folder = Path(tmp) / model.replace(":", "_")
            folder.mkdir()
            wf = workflow_for(model, folder, args.seed, args.limit)
            cmd = [sys.executable, "-m", "physflow", "qualify", str(wf), "--run-dir", str(folder / "run"),
                   "--seed", str(args.seed)] + (["--limit", str(args.limit)] if args.limit else [])
            # a replay script in a temporary folder is no model to remember: its record stays there too
            env = {**os.environ, "PHYSFLOW_MODEL_CACHE": str(folder / "cache" / "models")} \
                if model.startswith("replay:") else None
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder, env=env)
            if proc.returncode != 0:
                print(f"{model}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}", file=sys.stderr)
                continue
            data = json.loads((folder / "run" / "qualify.json").read_text())
            cats = data["categories"]
            cells = [f"{cats[c]['correct']}/{cats[c]['total']} = {cats[c]['score']:.2f}" for c in QUALIFY_CATEGORIES]
            rows.append(f"| {data['model']} | " + " | ".join(cells) + f" | **{data['overall']:.2f}** | "
                        f"{data['steering_top1']:.2f} | {data['seconds']:.0f} |")
            print(rows[-1], flush=True)
            print(f"  {data['interpretation']}", file=sys.stderr, flush=True)
    print("\n" + header + "\n|" + "---|" * (len(QUALIFY_CATEGORIES) + 4) + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
