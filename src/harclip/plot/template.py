"""Write the HTML template `dvc plots show` fills, with Vega, Vega-Lite and Vega-Embed inlined.

    python -m harclip.plot.template        (or `make plots-template`)

DVC's own page loads the three libraries from a CDN, so without network it draws none of the
vega plots. .dvc/config points `plots.html_template` at this template instead: DVC's default
page whose `{scripts}` placeholder (where DVC puts its CDN <script src> tags) is replaced by
one inline script, the bundle of the pinned vl-convert-python package.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

PACKAGE = "vl-convert-python"
DEFAULT_OUT = Path("assets/dvc-plots.html")
# DVC's plot templates declare Vega-Lite v5 specs ("$schema": ".../vega-lite/v5.json").
VEGA_LITE_MAJOR = 5


def newest_vega_lite(major: int = VEGA_LITE_MAJOR) -> str:
    """The newest Vega-Lite of `major` that the installed vl-convert can bundle, e.g. "5.21"."""
    import vl_convert

    offered = [v for v in vl_convert.get_vegalite_versions() if v.split(".")[0] == str(major)]
    if not offered:
        raise SystemExit(f"{PACKAGE} {version(PACKAGE)} bundles no Vega-Lite {major}.x")
    return max(offered, key=lambda v: tuple(int(part) for part in v.split(".")))


def template(vl_version: str | None = None) -> str:
    """DVC's default page with the libraries inlined, headed by a comment saying their source.

    Deterministic for a given vl-convert-python, so a stale committed template shows as a diff.
    """
    import vl_convert
    from dvc_render.html import HTML, PAGE_HTML

    vl_version = vl_version or newest_vega_lite()
    bundle = vl_convert.javascript_bundle(vl_version=vl_version)
    placeholders = [HTML.SCRIPTS_PLACEHOLDER, HTML.PLOTS_PLACEHOLDER, HTML.REFRESH_PLACEHOLDER]
    # DVC fills the page by plain text replacement; it must not touch the bundle, and a
    # "</script" inside it would end the inline script early.
    if "</script" in bundle or any("{" + name + "}" in bundle for name in placeholders):
        raise SystemExit(f"{PACKAGE}'s bundle cannot be inlined into DVC's page as it is")
    header = (
        f"<!-- Vega {vl_convert.get_vega_version()}, Vega-Lite {vl_version} and Vega-Embed "
        f"{vl_convert.get_vega_embed_version()}, inlined from {PACKAGE}=={version(PACKAGE)}"
        " (javascript_bundle) so that `dvc plots show` draws without network.\n"
        "     Generated: refresh with `make plots-template` (python -m harclip.plot.template)"
        " after changing the pin in requirements.in. -->"
    )
    page = PAGE_HTML.replace("{" + HTML.SCRIPTS_PLACEHOLDER + "}",
                             f"<script type=\"text/javascript\">\n{bundle}\n</script>")
    doctype, rest = page.split("\n", 1)
    return f"{doctype}\n{header}\n{rest}\n"


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(
        description="Write the HTML template `dvc plots show` uses (.dvc/config "
                    "plots.html_template), with Vega, Vega-Lite and Vega-Embed inlined from "
                    f"{PACKAGE} so the plots draw without network.")
    cli.add_argument("--out", type=Path, default=DEFAULT_OUT,
                     help="file to write (default: %(default)s)")
    cli.add_argument("--vega-lite", metavar="VERSION",
                     help=f"Vega-Lite version to bundle (default: the newest "
                          f"{VEGA_LITE_MAJOR}.x the installed {PACKAGE} offers)")
    args = cli.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(template(args.vega_lite), encoding="utf8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
