"""Write .dvc/plots/offline.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inside it, so that
``dvc plots show`` draws its charts without a network (DVC's own page loads them from a CDN).

    python3 scripts/vendor_vega.py                 # npm pack the pinned versions, then write the template
    python3 scripts/vendor_vega.py --from DIR      # the three .tgz files already packed in DIR

The versions are the ones DVC's renderer (dvc-render) names in its CDN links. Each package's LICENSE
(BSD-3-Clause) is copied to .dvc/plots/LICENSES/ and kept in a comment of the page itself; the tarballs'
sha512 checksums are written to .dvc/plots/README.md. ``.dvc/config`` points ``plots.html_template`` at the page.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".dvc" / "plots"
PACKAGES = {"vega": ("5.20.2", "build/vega.min.js"), "vega-lite": ("5.2.0", "build/vega-lite.min.js"),
            "vega-embed": ("6.18.2", "build/vega-embed.min.js")}
TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC plots (offline)</title>
<!--
{notices}
-->
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def pack(into: Path) -> None:
    specs = [f"{name}@{version}" for name, (version, _) in PACKAGES.items()]
    subprocess.run(["npm", "pack", *specs], cwd=into, check=True, capture_output=True)


def read(tgz: Path, member: str) -> str:
    with tarfile.open(tgz) as t:
        return t.extractfile(f"package/{member}").read().decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", default=None, help="folder holding the packed .tgz files")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(args.source) if args.source else Path(tmp)
        if not args.source:
            pack(src)
        scripts, notices, sums = [], [], []
        (OUT / "LICENSES").mkdir(parents=True, exist_ok=True)
        for name, (version, build) in PACKAGES.items():
            tgz = src / f"{name}-{version}.tgz"
            if not tgz.is_file():
                print(f"vendor_vega: {tgz} not found (npm pack {name}@{version})", file=sys.stderr)
                return 1
            js = read(tgz, build)
            js = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "\n", js)          # no request for a .map file
            for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
                if bad in js:
                    print(f"vendor_vega: {name} contains {bad!r}: cannot inline it", file=sys.stderr)
                    return 1
            licence = read(tgz, "LICENSE")
            (OUT / "LICENSES" / f"{name}-{version}.LICENSE").write_text(licence)
            notices.append(f"{name} {version} (npm), {build}:\n{licence.strip()}".replace("--", "- -"))
            digest = base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
            sums.append(f"| {name} | {version} | `{build}` | `sha512-{digest}` |")
            scripts.append(f"<script>/* {name} {version}, BSD-3-Clause: see the notice above */\n{js}</script>")
    page = TEMPLATE.format(notices="\n\n".join(notices), scripts="\n".join(scripts))
    (OUT / "offline.html").write_text(page)
    (OUT / "README.md").write_text(
        "# The offline page of `dvc plots show`\n\n"
        "`offline.html` is DVC's plots page with the charting libraries inside it (DVC's own page loads them\n"
        "from a CDN, so it is blank without a network). `.dvc/config` names it as `plots.html_template`.\n"
        "Written by `python3 scripts/vendor_vega.py` from the npm packages below; their licences are in\n"
        "`LICENSES/` and in a comment at the top of the page.\n\n"
        "| package | version | file | npm tarball checksum |\n|---|---|---|---|\n" + "\n".join(sums) + "\n")
    print(f"vendor_vega: wrote {OUT / 'offline.html'} ({len(page) // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
