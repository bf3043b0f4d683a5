"""The playground page, its assets and config, and the offline /docs and /redoc pages."""

from __future__ import annotations

import re
from pathlib import Path

from stack.launcher import model_line
from tests.unit.server.asgi import call, make_app


def test_playground_page_and_assets_are_served_from_the_package(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    page = call(app, "GET", "/", key=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<form id="input-form"' in page.text and '<button type="submit"' in page.text
    # nothing is loaded from another host: every src/href is a local path
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/") for link in links), links
    for link in ("/playground/assets/playground.js", "/playground/assets/playground.css"):
        asset = call(app, "GET", link, key=None)
        assert asset.status_code == 200 and len(asset.content) > 1000, link
    script = call(app, "GET", "/playground/assets/playground.js", key=None).text
    assert "http://" not in script.replace("http://'", "") and "https://" not in script


def test_playground_config_says_whether_a_key_is_needed(tmp_path: Path) -> None:
    keyed = call(make_app(tmp_path), "GET", "/playground/config.json", key=None).json()
    assert keyed["requires_key"] is True and keyed["endpoint_id"] == "fal-ai/bitdance"
    assert keyed["queue_submit_url"] == "/queue/fal-ai/bitdance" and keyed["input_schema"] == "BitDanceInput"
    spec = call(make_app(tmp_path), "GET", keyed["openapi_url"], key=None).json()
    assert "BitDanceInput" in spec["components"]["schemas"]
    open_config = call(make_app(tmp_path, api_keys=[]), "GET", "/playground/config.json", key=None).json()
    assert open_config["requires_key"] is False


def test_docs_and_redoc_use_local_assets(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = call(app, "GET", path, key=None)
        assert page.status_code == 200 and f"/docs/assets/{asset}" in page.text
        assert not re.search(r'(?:src|href)="https?://', page.text), page.text  # no CDN, no web fonts
        script = call(app, "GET", f"/docs/assets/{asset}", key=None)
        assert script.status_code == 200 and len(script.content) > 500_000
    assert call(app, "GET", "/docs/assets/swagger-ui.css", key=None).status_code == 200
    assert call(app, "GET", "/docs/oauth2-redirect", key=None).status_code == 200


def test_startup_banner_says_when_images_are_noise() -> None:
    model = {"name": "tiny-64x", "path": "/w/tiny-64x", "variant": "tiny-64x", "parallel_num": 64}
    noise = model_line({"live_workers": [{"name": "w", "model": {**model, "random": True, "simulated": False}}]})
    assert "RANDOM" in noise and "noise" in noise and "MODEL=" in noise and "\n" not in noise
    simulated = model_line({"live_workers": [{"name": "w", "model": {**model, "random": False, "simulated": True}}]})
    assert "SIMULATED" in simulated and "MODEL=" in simulated
    real = {"name": "BitDance-14B-64x", "path": "/w/BitDance-14B-64x", "variant": "14B-64x", "parallel_num": 64}
    line = model_line({"live_workers": [{"name": "w", "model": {**real, "random": False, "simulated": False}}]})
    assert "noise" not in line and "/w/BitDance-14B-64x" in line
    assert "unknown" in model_line({"live_workers": []})
