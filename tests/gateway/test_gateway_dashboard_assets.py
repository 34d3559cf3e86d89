"""Every asset the dashboard page asks for exists: each same-origin ``href``/``src`` of index.html is a
file the gateway serves, and the page declares its icon, so a browser does not request /favicon.ico
(a 404 in the console of everyone who opened the dashboard)."""

from __future__ import annotations

import re

from spx_common.config import PROJECT_DIR

STATIC = PROJECT_DIR / "services" / "gateway" / "static"


def test_every_asset_of_the_dashboard_page_is_served_and_the_icon_is_declared():
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:href|src)="([^"]+)"', html)
    local = [r for r in refs if r.startswith("/")]
    assert any(r.endswith(".js") for r in local) and any(r.endswith(".css") for r in local)
    for ref in local:
        assert ref.startswith("/static/") and (STATIC / ref[len("/static/"):]).is_file(), ref
    assert re.search(r'<link rel="icon" href="data:,">', html)
