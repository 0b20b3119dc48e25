"""What the tests share: paths, params builders, fabricated images and data folders, a real DVC
project in a temporary git repo, and small training runs."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HAR_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "har-sample"
"""The real 3,600-image HAR sample beside the checkout, where there is one."""
