"""Stage logs show harclip's own lines: open_clip's root-logger chatter stays out."""

from __future__ import annotations

from harclip.model.backbones import create_backbone
from harclip.runtime.log import configure_logging


def test_open_clips_root_logger_chatter_stays_out_of_stage_logs(caplog):
    configure_logging()
    with caplog.at_level("INFO"):
        create_backbone("harclip-tiny-clip", None)
    assert not [r for r in caplog.records if "pretrained weights" in r.getMessage()]
