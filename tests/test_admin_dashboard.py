"""The admin dashboard at GET /admin/: how it is served, and a real browser driving it.

The browser test starts `saerec serve` on a temporary SQLite database with one trained
model, then drives Debian's headless Chromium through Selenium: a wrong token shows no
data, the right one shows the versions with their learning curves, a retrain started from
the form is followed to 100 %, an older version is rolled back to (confirming), a user's
ratings sit beside their explained recommendations, an anonymous session's ratings (typed
in) get theirs, and similar movies open for a movie.
Screenshots at desktop (1280x800) and phone (390x844) size land in the test's tmp_path.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.db import create_db_engine
from tests.conftest import ADMIN_TOKEN
from tests.factories import LENIENT_GATE, TINY_TRAINING, seed_synthetic
from tests.test_multiprocess import running_server
from tests.test_recommendations_api import train_tiny

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "app" / "static" / "admin"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
RETRAIN_BODY = {"preset": "fast", **TINY_TRAINING}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


# -- serving the page (no browser) -----------------------------------------------------------


def test_the_page_and_its_assets_are_served_without_a_token(client: TestClient) -> None:
    page = client.get("/admin/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/admin", follow_redirects=False).status_code in (307, 308)
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = client.get(f"/admin/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert f'assets/{name}"' in page.text
    for name in ("index.html", "nope.js", "..%2F..%2Fconfig.py"):
        assert client.get(f"/admin/assets/{name}").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]  # a page, not an API operation
    assert "/admin/" not in paths and "/admin/assets/{name}" not in paths


def test_the_page_fetches_nothing_from_elsewhere_and_runs_no_inline_code() -> None:
    html = (STATIC / "index.html").read_text()
    for text in (
        html,
        (STATIC / "dashboard.js").read_text(),
        (STATIC / "dashboard.css").read_text(),
    ):
        text = text.replace(SVG_NAMESPACE, "")  # a name for createElementNS, never fetched
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), "external URL"
        assert "@import" not in text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    assert " style=" not in html
    script = (STATIC / "dashboard.js").read_text()
    assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|eval\(", script)


def test_a_non_editable_install_ships_the_dashboard(tmp_path: Path) -> None:
    """package-data must name the static files: the Docker image is a plain `pip install .`."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["app"]
    files = sorted(p.relative_to(ROOT / "app").as_posix() for p in STATIC.iterdir())
    assert all(any(fnmatch(f, pattern) for pattern in patterns) for f in files), patterns
    pytest.importorskip("setuptools", reason="building a wheel needs setuptools in the venv")
    source = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (tmp_path / "dist").glob("saerec-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {f"app/{f}" for f in files} <= shipped


# -- the browser --------------------------------------------------------------------------------


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Debian's headless Chromium through its own chromedriver: nothing is downloaded."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
            "/usr/bin/chromedriver): apt-get install chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    monkeypatch.setenv("SE_OFFLINE", "1")  # Selenium Manager must never try to download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def live_server(sqlite_template: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`saerec serve` on a SQLite file holding synthetic ratings and one trained version."""
    database = tmp_path / "dashboard.db"
    shutil.copy(sqlite_template, database)
    settings = Settings(
        database_url=f"sqlite:///{database}",
        model_dir=tmp_path / "models",
        admin_token=ADMIN_TOKEN,
        auto_migrate=False,
        log_level="WARNING",
        _env_file=None,
    )
    engine: Engine = create_db_engine(settings)
    try:
        seed_synthetic(engine)
        first = train_tiny(settings, engine)
    finally:
        engine.dispose()
    gate = {key.upper(): str(value) for key, value in LENIENT_GATE.items()}
    with running_server(settings.database_url, tmp_path, 1, TORCH_THREADS="1", **gate) as base:
        yield base, first.version


def _wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 15, what: str = "") -> Any:
    """Until `condition` holds; an element the page re-rendered meanwhile is asked again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (StaleElementReferenceException,)
    wait = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored)
    return wait.until(condition, what)


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _text(driver: Any, selector: str) -> str:
    """The rendered text of the first match, read in one step (no stale element)."""
    return driver.execute_script(
        "const el = document.querySelector(arguments[0]); return el ? el.innerText : ''",
        selector,
    )


def _attr(driver: Any, selector: str, name: str) -> str:
    return driver.execute_script(
        "const el = document.querySelector(arguments[0]);"
        "return el ? el.getAttribute(arguments[1]) || '' : ''",
        selector,
        name,
    )


def _fill(driver: Any, selector: str, value: str) -> None:
    (field,) = _css(driver, selector)
    field.clear()
    field.send_keys(value)


def _viewport(driver: Any, width: int, height: int, mobile: bool) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def _screenshots(driver: Any, folder: Path, name: str) -> None:
    """The viewport as a user sees it, and the whole page."""
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(folder / f"{name}.png"))
    size = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
        },
    )
    (folder / f"{name}-full.png").write_bytes(base64.b64decode(shot["data"]))


def _show_user(driver: Any, user_id: int, rated: int) -> None:
    _fill(driver, "#user-id", str(user_id))
    _css(driver, "#user-show")[0].click()
    _wait(
        driver,
        lambda d: (
            len(_css(d, "#ratings-table tbody tr")) == rated
            and all("Movie " in cell.text for cell in _css(d, "#ratings-table td.movie-title"))
        ),
        what="the user's ratings with their titles",
    )
    _wait(driver, lambda d: _css(d, "#recs-list li"), what="the recommendations")


def _add_session_rating(driver: Any, movie_id: int, rating: str) -> None:
    """Rate a movie in "try a session"; a movie the catalog has shows up in its table."""
    from selenium.webdriver.support.ui import Select

    _fill(driver, "#session-movie", str(movie_id))
    Select(_css(driver, "#session-rating")[0]).select_by_value(rating)
    _css(driver, "#session-add")[0].click()
    if movie_id < 1000:
        row = f'#session-table tr[data-movie="{movie_id}"]'
        _wait(driver, lambda d: _css(d, row), what=f"movie {movie_id} in the session")


def _show_similar(driver: Any, movie_id: int, answer: httpx.Response) -> None:
    """Open similar movies; `answer` is what the API says, for the count to expect."""
    _fill(driver, "#movie-id", str(movie_id))
    _css(driver, "#similar-show")[0].click()
    expected = len(answer.json()["items"])
    _wait(
        driver,
        lambda d: len(_css(d, "#similar-list li")) == expected > 0,
        what="the similar movies",
    )


@pytest.mark.slow
def test_dashboard_in_a_real_browser(
    browser: Any, live_server: tuple[str, str], tmp_path: Path
) -> None:
    started = time.monotonic()
    base, first_version = live_server
    api = httpx.Client(base_url=base, headers=AUTH, timeout=30)
    driver = browser
    _viewport(driver, 1280, 800, mobile=False)
    driver.get(f"{base}/admin/")

    # a wrong token: the page says so, and shows no data
    _fill(driver, "#token", "wrong-token")
    _css(driver, "#sign-in")[0].click()
    error = _wait(driver, lambda d: _text(d, "#login-error"), what="the sign-in error")
    assert "Wrong token" in error and "401" in error
    assert not _css(driver, "#dashboard")[0].is_displayed()
    assert not _css(driver, "#models .version") and first_version not in driver.page_source
    assert driver.execute_script("return sessionStorage.length") == 0

    # the right token: the trained version, active, with its learning curves
    _fill(driver, "#token", ADMIN_TOKEN)
    _css(driver, "#sign-in")[0].click()
    _wait(driver, lambda d: len(_css(d, "#models .version")) == 1, what="the model version")
    assert not _css(driver, "#login")[0].is_displayed()
    (card,) = _css(driver, f'#models .version[data-version="{first_version}"]')
    assert "is-active" in card.get_attribute("class") and "active" in card.text
    stored = api.get("/admin/models").json()[0]["metrics"]
    assert len(_css(driver, "#models svg.curve")) == 3
    drawn = _css(driver, "#models svg.curve.ndcg polyline")[0].get_attribute("points").split()
    assert len(drawn) == len(stored["history"]) == stored["epochs_run"] >= 1
    assert f"{stored['valid_ndcg@10']:.4f}" in card.text
    size = api.get("/admin/models").json()[0]["artifact_bytes"]
    assert _text(driver, "#models-total") == (
        f"1 version kept · {size / 1024:.1f} KiB of model artifacts stored"
    )
    _wait(driver, lambda d: _text(d, "#stat-ratings").startswith("Ratings\n480"), what="stats")
    assert "60" in _text(driver, "#stat-users") and "40" in _text(driver, "#stat-movies")
    assert _css(driver, "#routes-table tbody tr")

    # a retrain from the form, followed to the end
    _fill(driver, "#retrain-overrides", json.dumps(RETRAIN_BODY))
    _css(driver, "#retrain-start")[0].click()
    seen: set[tuple[str, str]] = set()

    def finished(d: Any) -> bool:
        status = _attr(d, "#job-watch", "data-status")
        seen.add((status, _text(d, "#watch-percent")))
        return status in ("succeeded", "failed")

    _wait(driver, finished, timeout=60, what="the retrain job to finish")
    watch_text = _text(driver, "#job-watch")
    assert _attr(driver, "#job-watch", "data-status") == "succeeded", watch_text
    assert _text(driver, "#watch-percent") == "100 %" and "is active" in watch_text
    assert ("succeeded", "100 %") in seen
    job_id = _attr(driver, "#job-watch", "data-job")
    assert _text(driver, f'#jobs-table tr[data-job="{job_id}"]').count("succeeded") == 1
    _wait(driver, lambda d: len(_css(d, "#models .version")) == 2, what="the new version")
    new_version = api.get(f"/admin/jobs/{job_id}").json()["model_version"]
    _wait(
        driver,
        lambda d: "is-active" in _attr(d, f'.version[data-version="{new_version}"]', "class"),
        what="the new version active",
    )

    # roll back to the first version, confirming
    (rollback,) = _css(driver, f'.version[data-version="{first_version}"] button.activate')
    assert rollback.text == "Roll back to this version"
    rollback.click()
    from selenium.webdriver.support import expected_conditions

    alert = _wait(driver, expected_conditions.alert_is_present(), what="the confirmation")
    assert first_version in alert.text
    alert.accept()
    _wait(
        driver,
        lambda d: "is-active" in _attr(d, f'.version[data-version="{first_version}"]', "class"),
        what="the rolled-back version active",
    )
    assert "is now active" in _text(driver, "#models-message")
    assert [m["version"] for m in api.get("/admin/models").json() if m["active"]] == [first_version]

    # a user: ratings beside explained recommendations
    _show_user(driver, 1, rated=8)
    recs = api.get("/users/1/recommendations", params={"n": 10, "explain": "true"})
    assert recs.status_code == 200, recs.text
    assert recs.json()["strategy"] == "autoencoder"
    items = recs.json()["items"]
    assert len(_css(driver, "#recs-list li")) == len(items) > 0
    assert all("because" in item for item in items)  # explain=true: a list, maybe empty
    assert len(_css(driver, "#recs-list .because")) == len(items)  # each item says why
    explained = [item for item in items if item["because"]]
    assert explained, "a user with eight ratings has recommendations they explain"
    for item in explained:
        shown = _text(driver, f'#recs-list li[data-movie="{item["movie_id"]}"] .because')
        assert shown.startswith("because you rated ")
        for reason in item["because"]:
            assert f"{reason['title']} ★{reason['rating']:g}" in shown

    # a session: a few rated movies (an unknown one refused, one removed and rated again),
    # then their explained recommendations, as the API answers them
    for movie_id, rating in ((1, "5"), (3, "4.5"), (8, "1")):
        _add_session_rating(driver, movie_id, rating)
    _add_session_rating(driver, 999999, "4")
    _wait(driver, lambda d: "does not exist" in _text(d, "#session-message"), what="a 404")
    assert len(_css(driver, "#session-table tbody tr")) == 3
    _css(driver, '#session-table tr[data-movie="8"] button')[0].click()
    _wait(driver, lambda d: len(_css(d, "#session-table tbody tr")) == 2, what="a removal")
    _add_session_rating(driver, 8, "1")
    assert "Movie 3 (1953)" in _text(driver, "#session-table") and "★4.5" in _text(
        driver, '#session-table tr[data-movie="3"]'
    )
    _css(driver, "#session-show")[0].click()
    session = [{"movie_id": 1, "rating": 5.0}, {"movie_id": 3, "rating": 4.5}]
    session.append({"movie_id": 8, "rating": 1.0})
    answer = api.post("/recommendations", json={"ratings": session, "n": 10, "explain": True})
    assert answer.status_code == 200, answer.text
    expected = [item["movie_id"] for item in answer.json()["items"]]
    _wait(
        driver,
        lambda d: (
            [int(li.get_attribute("data-movie")) for li in _css(d, "#session-recs-list li")]
            == expected
            != []
        ),
        what="the session's recommendations",
    )
    assert answer.json()["strategy"] in _text(driver, "#session-recs h3")
    for item in answer.json()["items"]:
        if item["because"]:
            shown = _text(driver, f'#session-recs-list li[data-movie="{item["movie_id"]}"]')
            assert all(f"{r['title']} ★{r['rating']:g}" in shown for r in item["because"])
    assert api.get("/users/1/ratings").json()["total"] == 8, "a session stores nothing"

    # similar movies: a movie that does not exist, then one that does
    _fill(driver, "#movie-id", "999999")
    _css(driver, "#similar-show")[0].click()
    _wait(driver, lambda d: "does not exist" in _text(d, "#similar-message"), what="a 404")
    similar = api.get("/movies/1/similar", params={"n": 10})
    assert similar.status_code == 200, similar.text
    _show_similar(driver, 1, similar)
    shown = _text(driver, "#similar-list")
    assert all(item["title"] in shown for item in similar.json()["items"])
    assert _text(driver, "#similar h3").startswith("Similar to Movie 1 (1951)")

    # nothing broke the page's rules (CSP violations and script errors land in the log)
    problems = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE"
        and "status of 401" not in entry["message"]
        and "status of 404" not in entry["message"]
    ]
    assert not problems, problems

    _screenshots(driver, tmp_path, "desktop")

    # phone width: the token survives a reload (sessionStorage), no sideways scrolling
    _viewport(driver, 390, 844, mobile=True)
    driver.get(f"{base}/admin/")
    _wait(driver, lambda d: len(_css(d, "#models .version")) == 2, what="signed in again")
    _show_user(driver, 1, rated=8)
    _show_similar(driver, 1, similar)
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at phone width"
    _screenshots(driver, tmp_path, "phone")

    # signing out forgets the token and clears the data
    _css(driver, "#sign-out")[0].click()
    assert _css(driver, "#login")[0].is_displayed() and not _css(driver, "#models .version")
    assert driver.execute_script("return sessionStorage.length") == 0
    api.close()
    print(f"\nscreenshots in {tmp_path} ({time.monotonic() - started:.1f} s)")


def _retrained(api: httpx.Client) -> str:
    """A retrain through the API, followed to its end: the new version."""
    queued = api.post("/admin/retrain", json=RETRAIN_BODY)
    assert queued.status_code == 202, queued.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = api.get(f"/admin/jobs/{queued.json()['job_id']}").json()
        if job["status"] in ("succeeded", "failed"):
            assert job["status"] == "succeeded", job["error"]
            return job["model_version"]
        time.sleep(0.2)
    raise AssertionError("the retrain did not finish")


@pytest.mark.slow
def test_experiments_in_a_real_browser(
    browser: Any, live_server: tuple[str, str], tmp_path: Path
) -> None:
    """Online figures beside each version; an experiment started from the form with both
    arms' hit rates and intervals; the candidate promoted, confirming."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select

    base, first_version = live_server
    api = httpx.Client(base_url=base, headers=AUTH, timeout=30)
    second_version = _retrained(api)  # active now (a lenient gate): the first is a candidate
    for user in range(1, 21):
        assert api.get(f"/users/{user}/recommendations").status_code == 200
    online_url = f"/admin/models/{second_version}/online"
    while api.get(online_url).json()["impressions"] < 20:  # the writer's next batch
        time.sleep(0.1)
    driver = browser
    _viewport(driver, 1280, 800, mobile=False)
    driver.get(f"{base}/admin/")
    _fill(driver, "#token", ADMIN_TOKEN)
    _css(driver, "#sign-in")[0].click()
    _wait(driver, lambda d: len(_css(d, "#models .version")) == 2, what="both versions")
    online = f'.online[data-version="{second_version}"]'
    _wait(driver, lambda d: "20 impressions" in _text(d, online), what="the online figures")
    assert "hit rate 0.0 %" in _text(driver, online)
    first_online = f'.online[data-version="{first_version}"]'
    _wait(driver, lambda d: "no impressions yet" in _text(d, first_online), what="none for it")

    Select(_css(driver, "#experiment-candidate")[0]).select_by_value(first_version)
    _fill(driver, "#experiment-share", "0.5")
    _css(driver, "#experiment-start")[0].click()
    alert = _wait(driver, expected_conditions.alert_is_present(), what="the confirmation")
    assert first_version in alert.text and "50 %" in alert.text
    alert.accept()
    card = "#experiments .experiment"
    _wait(driver, lambda d: "running" in _text(d, card), what="the running experiment")
    (running,) = api.get("/admin/experiments").json()["items"]
    assert (running["candidate"], running["control"]) == (first_version, second_version)
    assert _css(driver, "#experiment-start")[0].get_attribute("disabled") is not None

    for user in range(1, 41):  # traffic for both arms
        assert api.get(f"/users/{user}/recommendations").status_code == 200
    report = api.get(f"/admin/experiments/{running['experiment_id']}").json()
    while min(arm["impressions"] for arm in report["arms"]) == 0:  # the writer's next batch
        time.sleep(0.1)
        report = api.get(f"/admin/experiments/{running['experiment_id']}").json()
    _css(driver, "#experiments-refresh")[0].click()
    for arm in ("control", "candidate"):
        row = f'{card} tr[data-arm="{arm}"]'
        _wait(driver, lambda d, row=row: "%" in _text(d, f"{row} td.ci"), what=f"the {arm} arm")
        assert _text(driver, f"{row} td.hit-rate") == "0.0 %"
    assert "verdict: not enough data" in _text(driver, card)
    _screenshots(driver, tmp_path, "experiments")

    _css(driver, f"{card} button.experiment-promote")[0].click()
    alert = _wait(driver, expected_conditions.alert_is_present(), what="the confirmation")
    assert first_version in alert.text
    alert.accept()
    _wait(driver, lambda d: "promoted" in _text(d, card), what="the promoted experiment")
    assert [m["version"] for m in api.get("/admin/models").json() if m["active"]] == [first_version]
    _wait(
        driver,
        lambda d: "is-active" in _attr(d, f'.version[data-version="{first_version}"]', "class"),
        what="the promoted version active",
    )
    api.close()


@pytest.mark.slow
def test_dashboard_says_when_admin_is_disabled(
    browser: Any, sqlite_template: Path, tmp_path: Path
) -> None:
    database = tmp_path / "disabled.db"
    shutil.copy(sqlite_template, database)
    with running_server(f"sqlite:///{database}", tmp_path, 1, ADMIN_TOKEN="") as base:
        browser.get(f"{base}/admin/")
        _fill(browser, "#token", ADMIN_TOKEN)
        _css(browser, "#sign-in")[0].click()
        error = _wait(browser, lambda d: _text(d, "#login-error"), what="the sign-in error")
    assert "Admin is disabled" in error and "ADMIN_TOKEN is not set" in error and "503" in error
    assert not _css(browser, "#dashboard")[0].is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0


def test_latency_quantiles_from_histogram_buckets() -> None:
    """As Prometheus' histogram_quantile: linear inside the bucket the rank falls in."""
    from app.services.dashboard import quantile_from_buckets

    buckets = {0.01: 5.0, 0.1: 10.0, float("inf"): 10.0}
    assert quantile_from_buckets(buckets, 0.5) == pytest.approx(0.01)
    assert quantile_from_buckets(buckets, 0.75) == pytest.approx(0.055)
    assert quantile_from_buckets({0.01: 1.0, float("inf"): 10.0}, 0.9) == 0.01  # past the top
    assert quantile_from_buckets({0.01: 0.0, float("inf"): 0.0}, 0.5) is None
    assert quantile_from_buckets({}, 0.5) is None
