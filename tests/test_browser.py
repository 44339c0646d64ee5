"""The report page in a real browser: headless Chromium lays it out, the curves and the
memory map have size on screen, and a screenshot is taken. Skipped, saying why, where
no headless Chromium is installed (.ci/run installs Debian's chromium-headless-shell
where apt can)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from helpers import DIGITS, run

BROWSER = next((shutil.which(b) for b in ("chromium-headless-shell", "chromium",
                                          "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on PATH "
                                "(apt-get install chromium-headless-shell)")
FLAGS = ["--no-sandbox", "--disable-gpu", "--hide-scrollbars"]

# A page of the test's own (the report has no script) that frames the report and
# measures what the browser drew.
PROBE = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="f" src="run/report.html" width="1000" height="3000"></iframe>
<script>
window.addEventListener("load", () => {
  const d = document.getElementById("f").contentDocument;
  const lines = [...d.querySelectorAll("polyline.series")].map(p => {
    const b = p.getBBox(); return [p.dataset.series, b.width, b.height]; });
  const map = d.querySelector("#memory-map ~ figure svg").getBoundingClientRect();
  const svg = d.querySelector("#memory-map ~ figure svg");
  const vb = svg.viewBox.baseVal, box = svg.getBBox();
  const shown = vb && vb.width ? vb.width : map.width;   // user units on screen
  document.getElementById("result").textContent = JSON.stringify(
    {lines, map: [map.width, map.height], content: box.x + box.width, shown});
});
</script></body></html>"""


def test_the_page_lays_out_in_chromium(tmp_path):
    folder = tmp_path / "run"
    r = run("train", DIGITS, "--epochs", "5", "--run-dir", str(folder), "-q")
    assert r.exit_code == 0, r.output
    assert run("report", str(folder), "-q").exit_code == 0
    (tmp_path / "probe.html").write_text(PROBE)
    dom = subprocess.run([BROWSER, *FLAGS, "--allow-file-access-from-files",
                          "--virtual-time-budget=5000", "--dump-dom",
                          f"file://{tmp_path}/probe.html"],
                         capture_output=True, text=True, timeout=120).stdout
    found = json.loads(re.search(r'<pre id="result">([^<]*)</pre>', dom).group(1))
    drawn = {name: (w, h) for name, w, h in found["lines"]}
    for name in ("train", "validation"):
        assert drawn[name][0] > 100   # a line across the chart, not a dot
    assert found["map"][0] > 500 and found["map"][1] > 300
    # scaled to the page as a whole, not cut off at the page's edge
    assert found["content"] <= found["shown"] + 1
    shot = tmp_path / "page.png"
    subprocess.run([BROWSER, *FLAGS, "--window-size=1000,2200", f"--screenshot={shot}",
                    f"file://{folder}/report.html"], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000
