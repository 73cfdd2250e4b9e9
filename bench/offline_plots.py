"""reports/plots.html: the HTML template of `dvc plots show` and `dvc plots diff` (.dvc/config's
plots.html_template), with vega, vega-lite and vega-embed inside it. DVC's own page loads them from a CDN, so
offline it stays blank; this one needs no network.

The scripts are the builds that DVC's page loads (dvc_render.vega.VegaRenderer.SCRIPTS names the versions;
the CDN serves each package's `jsdelivr` file), taken from the npm packages with `npm pack` and checked
against the integrity hashes of the npm registry. All three are BSD-3-Clause (their notices are kept in the
minified files).

    python -m bench.offline_plots                  writes reports/plots.html (needs npm and the registry)
    python -m bench.offline_plots --screenshot P [REVISION ...]
                                                   renders `dvc plots show`'s page (`dvc plots diff`'s of the
                                                   revisions) in headless Chromium to the image P, offline
"""

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from quantlab.errors import UserError
from quantlab.io import save_bytes
from quantlab.stage import run_main

TEMPLATE = Path("reports/plots.html")
WINDOW = "1800x3400"  # pixels: every plot of `dvc plots show`
# package: (version, the registry's dist.integrity)
PACKAGES = {
    "vega": ("5.20.2",
             "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    "vega-lite": ("5.2.0",
                  "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    "vega-embed": ("6.18.2",
                   "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
}
PAGE = """<!DOCTYPE html>
<!-- The page of `dvc plots show` / `dvc plots diff` for this project, readable offline: vega {vega},
     vega-lite {vega-lite} and vega-embed {vega-embed} (BSD-3-Clause) are inside it, where DVC's own page loads
     them from a CDN. Written by `python -m bench.offline_plots`; DVC fills in the plots. -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC plots: quantization lab</title>
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def integrity(payload: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(payload).digest()).decode()


def build_script(package: str, tarball: bytes) -> str:
    """The minified build that the CDN serves for `package` (its package.json's `jsdelivr` file)."""
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "package.tgz"
        archive.write_bytes(tarball)
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("package/package.json"))
            script = tar.extractfile(f"package/{manifest['jsdelivr']}").read().decode()
    if "</script" in script:  # it would end the inline <script> early
        raise UserError(f"{package}'s build contains '</script': it cannot be inlined")
    return script


def page(scripts: dict[str, str]) -> str:
    """The template: DVC's page with the scripts inline and no {scripts} placeholder (DVC's CDN tags)."""
    inline = "\n".join(f'    <script type="text/javascript">\n{script}\n    </script>' for script in scripts.values())
    return PAGE.format(scripts=inline, **{package: version for package, (version, _) in PACKAGES.items()})


def packed(package: str, version: str, expected: str, into: Path) -> bytes:
    """`npm pack package@version`'s tarball, checked against the registry's integrity hash."""
    if shutil.which("npm") is None:
        raise UserError("npm not found: install Node.js (Debian: apt-get install npm) to build the plots template")
    result = subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=into, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise UserError(f"npm pack {package}@{version} failed: {result.stderr.strip().splitlines()[-1]}")
    tarball = (into / result.stdout.strip().splitlines()[-1]).read_bytes()
    if integrity(tarball) != expected:
        raise UserError(f"{package}@{version} from npm does not match its pinned integrity hash")
    return tarball


def screenshot(revisions: list[str], targets: list[str], size: str = WINDOW) -> bytes:
    """A PNG of `dvc plots show`, or `dvc plots diff` of `revisions`, of the plots `targets` (all if none), with
    this project's template, rendered by headless Chromium with the network cut, in a window of `size` pixels."""
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(name)), None)
    if browser is None:
        raise UserError("Chromium not found: install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as scratch:
        command = ["diff", *revisions] if revisions else ["show"]
        subprocess.run(["dvc", "plots", *command, *(["--targets", *targets] if targets else []), "-o", scratch],
                       check=True, capture_output=True)
        if not (Path(scratch) / "index.html").exists():
            raise UserError(f"`dvc plots {' '.join(command)}` drew no plot: check the revisions and targets")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                        "--virtual-time-budget=10000", f"--window-size={size.replace('x', ',')}",
                        "--hide-scrollbars", f"--screenshot={scratch}/screenshot.png",
                        f"file://{Path(scratch).resolve()}/index.html"], check=True, capture_output=True)
        image = Path(scratch) / "screenshot.png"
        if not image.exists():
            raise UserError(f"{browser} wrote no screenshot of the plots")
        return image.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="render `dvc plots show` (or `dvc plots diff REVISION...`) offline in headless Chromium "
                             "into this image instead")
    parser.add_argument("revisions", nargs="*", help="with --screenshot: experiments or commits to compare")
    parser.add_argument("--target", action="append", default=[], metavar="PLOT",
                        help="with --screenshot: a plot of dvc.yaml to show (default: all)")
    parser.add_argument("--size", default=WINDOW, metavar="WxH",
                        help=f"with --screenshot: the window in pixels (default {WINDOW})")
    args = parser.parse_args()
    if args.screenshot:
        save_bytes(args.screenshot, screenshot(args.revisions, args.target, args.size))
        return
    with tempfile.TemporaryDirectory() as scratch:
        scripts = {package: build_script(package, packed(package, version, expected, Path(scratch)))
                   for package, (version, expected) in PACKAGES.items()}
    save_bytes(TEMPLATE, page(scripts).encode())
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    run_main(main)
