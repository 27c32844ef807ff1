"""``dvc plots show`` / ``dvc plots diff`` pages that render without internet.

    python -m rnnlab.tools.offline_plots show [dvc plots options]     (or: ./dev.sh plots show)
    python -m rnnlab.tools.offline_plots diff HEAD~1

DVC's page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. This
installs pinned copies from the npm registry once (into the user cache), writes an HTML
template carrying them inline to ``.dvc/tmp/offline_plots.html`` and runs ``dvc plots ...
--html-template`` with it: ``dvc_plots/index.html`` is then one self-contained file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rnnlab.core.atomic import atomic_output
from rnnlab.core.errors import RnnlabError
from rnnlab.core.process import configure_process, this_python_first
from rnnlab.tracking.paths import require_repo_root

# vega-lite 5 specs as DVC 3 writes them; versions resolved from the npm registry in 2026-11.
VEGA = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
BUILDS = {"vega": "vega/build/vega.min.js", "vega-lite": "vega-lite/build/vega-lite.min.js",
          "vega-embed": "vega-embed/build/vega-embed.min.js"}

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>rnnlab plots</title>
    <!-- vega {vega}, vega-lite {vega_lite}, vega-embed {vega_embed}, inline: no network needed -->
    <script>{vega_js}</script>
    <script>{vega_lite_js}</script>
    <script>{vega_embed_js}</script>
    <style>table { border-spacing: 15px; } img { max-width: 900px; }</style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = "-".join(f"{name}{version}" for name, version in VEGA.items())
    return base / "rnnlab" / tag


def ensure_assets(cache: Path | None = None) -> dict[str, Path]:
    """The three minified scripts, installed with npm into ``cache`` if not there yet."""
    cache = cache or cache_dir()
    paths = {name: cache / "node_modules" / build for name, build in BUILDS.items()}
    if all(p.is_file() for p in paths.values()):
        return paths
    npm = shutil.which("npm")
    if npm is None:
        raise RnnlabError("npm not found: offline plot pages need vega from the npm registry; "
                          "install Node.js and npm, or look at the PNG plots (reports/*.png, "
                          "plots/gradients.png), which need nothing")
    cache.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in VEGA.items()]
    print(f"installing {' '.join(specs)} into {cache} (once)", file=sys.stderr, flush=True)
    proc = subprocess.run([npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund",
                           "--no-save", *specs], capture_output=True, text=True)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if proc.returncode != 0 or missing:
        raise RnnlabError(f"npm install {' '.join(specs)} failed (exit {proc.returncode}); "
                          f"check access to the npm registry:\n{proc.stderr[-2000:]}")
    return paths


def inline(js: str) -> str:
    return js.replace("</script", "<\\/script")     # keep the page's <script> element whole


def write_template(dest: Path, assets: dict[str, Path]) -> Path:
    js = {name: inline(path.read_text(encoding="utf8")) for name, path in assets.items()}
    page = (TEMPLATE.replace("{vega}", VEGA["vega"]).replace("{vega_lite}", VEGA["vega-lite"])
            .replace("{vega_embed}", VEGA["vega-embed"]))
    # Scripts last: their text may contain anything, including "{plot_divs}"-like braces.
    page = (page.replace("{vega_js}", js["vega"]).replace("{vega_lite_js}", js["vega-lite"])
            .replace("{vega_embed_js}", js["vega-embed"]))
    with atomic_output(dest) as tmp:
        tmp.write_text(page, encoding="utf8")
    return dest


def main(argv: list[str] | None = None) -> int:
    configure_process()
    argv = list(sys.argv[1:] if argv is None else argv) or ["show"]
    usage = ("usage: rnnlab-plots {show|diff} [dvc plots options] (`dvc plots show` as a "
             "page that works offline)")
    if argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if argv[0] not in ("show", "diff"):
        print(usage, file=sys.stderr)
        return 2
    try:
        root = require_repo_root()
        template = write_template(root / ".dvc" / "tmp" / "offline_plots.html", ensure_assets())
    except RnnlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return subprocess.run(["dvc", "plots", *argv, "--html-template", str(template)],
                          cwd=root, env=this_python_first()).returncode


if __name__ == "__main__":
    sys.exit(main())
