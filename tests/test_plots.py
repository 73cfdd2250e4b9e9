"""reports/plots.html, the page of `dvc plots show`/`diff` that renders offline (bench.offline_plots)."""

import io
import re
import tarfile
from pathlib import Path

import pytest
from dvc_render.vega import VegaRenderer

from bench.offline_plots import PACKAGES, TEMPLATE, build_script, page
from quantlab.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_the_template_inlines_the_versions_dvc_loads_from_its_cdn():
    loaded = dict(re.findall(r"npm/([\w-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    assert loaded == {package: version for package, (version, _) in PACKAGES.items()}
    template = (ROOT / TEMPLATE).read_text()
    scripts = re.findall(r'<script type="text/javascript">\n(.*?)\n    </script>', template, re.S)
    assert len(scripts) == len(PACKAGES)
    for script, (version, _) in zip(scripts, PACKAGES.values(), strict=True):
        assert re.search(rf'\b\w="{re.escape(version)}"[,;]', script)  # each build names its own version
    # DVC fills in {plot_divs} and {refresh_tag}; without {scripts} it adds no CDN tags
    assert "{plot_divs}" in template and "{refresh_tag}" in template and "{scripts}" not in template
    assert template == page(dict(zip(PACKAGES, scripts, strict=True)))  # what the builder writes, nothing else


def test_a_build_is_taken_from_the_file_the_cdn_serves_and_must_be_inlinable():
    archive = tarball({"package.json": '{"jsdelivr": "build/lib.min.js"}', "build/lib.min.js": "var a=1;",
                       "build/lib.js": "var a = 1;"})
    assert build_script("lib", archive) == "var a=1;"
    closing = tarball({"package.json": '{"jsdelivr": "lib.js"}', "lib.js": 'x="</script>"'})
    with pytest.raises(UserError, match="cannot be inlined"):
        build_script("lib", closing)
