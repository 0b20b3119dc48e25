"""Every entry point answers `--help` and a bad argument from argparse alone: torch, open_clip,
timm, DVC(Live), transformers, scikit-learn, matplotlib, torchmetrics and vl-convert are
imported only once there is work to do (each takes up to seconds to import)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ENTRY_POINTS = ("config", "download", "preprocess", "train", "evaluate", "plot", "predict",
                "experiments", "plot.template", "pretrain")


HEAVY = ("torch", "open_clip", "timm", "dvclive", "transformers", "sklearn", "matplotlib",
         "torchmetrics", "dvc", "vl_convert")


PROBE = """
import json, runpy, sys
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _probe(module: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE.format(module=module, args=args,
                                                                heavy=HEAVY)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1]) | {"stderr": result.stderr}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_answers_without_importing_the_heavy_libraries(name):
    answer = _probe(f"harclip.{name}", "--help")
    assert answer["code"] in (0, None) and answer["heavy"] == []


@pytest.mark.parametrize(("name", "args"), [("train", ("nonsense",)),
                                            ("evaluate", ("clip", "--bogus")),
                                            ("predict", ("photo.jpg",))])
def test_argument_errors_answer_without_importing_the_heavy_libraries(name, args):
    answer = _probe(f"harclip.{name}", *args)
    assert answer["code"] == 2 and answer["heavy"] == []
    assert "error:" in answer["stderr"]
