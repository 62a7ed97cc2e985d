"""``mirai serve``: the page's HTTP interface (Flask's test client), its refusals, and the real thing in a
headless Chromium: the page is loaded, options are set, Generate is clicked and the grid comes back.

Models are tiny random GPT-Nanos (4x4 tokens) with the committed 8x8 Fashion-MNIST tokenizer, so a grid
is sampled in well under a second. The browser test needs Debian's ``chromium`` and ``chromium-driver``
(``make test`` installs them where apt-get exists) and skips, saying so, only where they are missing.
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_cli_refuses
from mirai import checkpoint
from mirai.data.fashion_mnist import CLASS_NAMES
from mirai.models import build_gpt
from mirai.serve.app import create_app, load_generator

pytest.importorskip("flask", reason="mirai serve needs the 'serve' extra (Flask); `make setup` installs it")

VQ8 = "fashion/vq8"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# The flags that keep Chromium headless, sandbox-free (root in CI) and off the network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1200,1000"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A 10-class GPT (Fashion-MNIST's count, so the committed tokenizer's dataset names its classes),
    a 3-class one, and a 10-class one trained without class dropout (no guidance)."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    gpt = build_gpt("GPT-Nano", vocab_size=512, grid_size=4, num_classes=10)
    checkpoint.save(root / "gpt10", gpt, ema=gpt)
    checkpoint.save(root / "gpt3", build_gpt("GPT-Nano", vocab_size=512, grid_size=4, num_classes=3))
    checkpoint.save(root / "gpt_vocab64", build_gpt("GPT-Nano", vocab_size=64, grid_size=4, num_classes=10))
    checkpoint.save(root / "no_dropout", build_gpt("GPT-Nano", vocab_size=512, grid_size=4, num_classes=10,
                                                   class_dropout_prob=0.0))
    return root


@pytest.fixture(scope="module")
def client(models):
    return create_app(load_generator(models / "gpt10", VQ8, device="cpu")).test_client()


def png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)))


REQUEST = {"classes": [9, 8], "per_class": 2, "seed": 7, "cfg_scale": 1.5, "temperature": 0.9, "top_k": 50}


def test_the_page_names_fashion_classes_and_returns_a_grid_per_request(client):
    page = client.get("/").get_data(as_text=True)
    assert all(f"> {name}</label>" in page for name in CLASS_NAMES)
    assert 'max="512"' in page  # top-k's bound is the vocabulary
    reply = client.post("/generate", json=REQUEST)
    assert reply.status_code == 200 and reply.mimetype == "image/png"
    grid = png(reply.data)
    again = png(client.post("/generate", json=REQUEST).data)
    assert np.array_equal(grid, again)  # a seed gives the same grid
    other = png(client.post("/generate", json=dict(REQUEST, seed=8)).data)
    assert other.shape == grid.shape and not np.array_equal(other, grid)
    three_rows = png(client.post("/generate", json=dict(REQUEST, classes=[0, 1, 2])).data)
    assert three_rows.shape[0] > grid.shape[0]  # one row per class
    # More images per class fill the same two rows (the title, which names the checkpoint, may set the width).
    wider = png(client.post("/generate", json=dict(REQUEST, per_class=10)).data)
    assert wider.shape[0] == grid.shape[0] and not np.array_equal(wider, grid)


@pytest.mark.parametrize("body, match", [
    ({"classes": []}, "pick at least one class"),
    ({}, "pick at least one class"),
    ({"classes": [10]}, r"use ids 0\.\.9"),
    ({"classes": [-1]}, r"use ids 0\.\.9"),
    ({"classes": ["a"]}, "integer class ids"),
    ({"classes": [True]}, "integer class ids"),
    ({"classes": [1.5]}, "integer class ids"),
    ({"classes": list(range(10)), "per_class": 16}, "more than the 64 images"),
    ({"classes": [0], "per_class": 0}, "per_class"),
    ({"classes": [0], "per_class": 17}, "per_class"),
    ({"classes": [0], "seed": -1}, "seed"),
    ({"classes": [0], "seed": "x"}, "seed"),
    ({"classes": [0], "cfg_scale": -1}, "cfg_scale"),
    ({"classes": [0], "cfg_scale": "a"}, "cfg_scale"),
    ({"classes": [0], "temperature": None}, "temperature"),
    ({"classes": [0], "top_k": 0}, "top_k"),
    ({"classes": [0], "top_k": 513}, "top_k must be an integer between 1 and 512"),
    ({"classes": [0], "bogus": 1}, "unknown request key"),
    ([0, 1], "JSON object"),
])
def test_a_bad_request_gets_a_400_that_says_what_to_fix(client, body, match):
    import re

    reply = client.post("/generate", json=body)
    assert reply.status_code == 400, reply.data[:200]
    assert re.search(match, reply.get_json()["error"]), reply.get_json()


def test_not_json_is_refused(client):
    reply = client.post("/generate", data="classes=1", content_type="text/plain")
    assert reply.status_code == 400 and "JSON object" in reply.get_json()["error"]


def test_classes_without_names_are_shown_by_index_and_guidance_off_without_a_null_class(models):
    page = create_app(load_generator(models / "gpt3", VQ8, device="cpu")).test_client().get("/").get_data(True)
    assert "> class 2</label>" in page and "class-3" not in page and CLASS_NAMES[0] not in page
    page = create_app(load_generator(models / "no_dropout", VQ8, device="cpu")).test_client().get("/").get_data(True)
    assert 'id="cfg_scale" min="0" step="0.1" value="1.0"' in page


def test_names_and_tokenizer_come_from_the_training_store(models, tmp_path):
    """A training checkpoint records its code store (train_config.yaml), whose manifest names the classes
    and the tokenizer, so neither --tokenizer nor a guess is needed."""
    from mirai.hub.resolve import resolve

    ckpt = tmp_path / "step"
    shutil.copytree(models / "gpt3", ckpt)
    store = tmp_path / "codes"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"class_names": ["cat", "dog", "fox"],
                                                     "tokenizer": {"path": str(resolve(VQ8))}}))
    (ckpt / "train_config.yaml").write_text(f"data: {{codes: {store}}}\n")
    generator = load_generator(ckpt, device="cpu")
    assert generator.class_labels() == ["cat", "dog", "fox"]
    assert generator.vq.quantize.embedding.weight.shape[0] == 512


def test_refusals_come_before_serving(models, tmp_path):
    base = ["serve", models / "gpt10", "--tokenizer", VQ8, "--port", "0", "--device", "cpu"]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = str(taken.getsockname()[1])
        assert_cli_refuses([*base[:4], "--port", port], models, match="cannot listen on 127.0.0.1:.*--port 0")
    finally:
        taken.close()
    assert_cli_refuses(["serve", models / "gpt10"], models, match="pass --tokenizer")
    # --gpt is the same as the positional checkpoint (and reaches the same check); one of them, once.
    assert_cli_refuses(["serve", "--gpt", models / "gpt10"], models, match="pass --tokenizer")
    assert_cli_refuses(["serve", "--tokenizer", VQ8], models, match="give the GPT checkpoint once")
    assert_cli_refuses(["serve", models / "gpt10", "--gpt", models / "gpt10"], models, match="give the GPT checkpoint once")
    (tmp_path / "samples").mkdir()  # not a checkpoint: said so, rather than asking for a tokenizer
    (tmp_path / "samples" / "grid.png").write_bytes(b"")
    assert_cli_refuses(["serve", tmp_path / "samples", "--port", "0"], models, match="not a Mirai checkpoint")
    assert_cli_refuses(["serve", tmp_path / "missing", "--tokenizer", VQ8, "--port", "0"], models, match="missing")
    assert_cli_refuses(["serve", models / "gpt_vocab64", "--tokenizer", VQ8, "--port", "0"], models,
                       match="vocabulary")
    assert_cli_refuses(["serve", models / "gpt10", "--tokenizer", models / "gpt3", "--port", "0"], models,
                       match="'gpt' model")
    for option, value, match in [("--port", "-1", "port"), ("--port", "70000", "port"),
                                 ("--max-images", "0", "max_images"), ("--device", "tpu", "device"),
                                 ("--grid-size", "0", "--grid-size"), ("--host", "256.1.1.1", "--host")]:
        assert_cli_refuses([*base, option, value], models, match=match)


def test_the_request_log_has_no_colour_codes_off_a_terminal(monkeypatch):
    """Werkzeug colours its access log always; redirected to a file that would be escape codes."""
    import werkzeug.serving

    from mirai.serve.app import serve

    class Server:
        def serve_forever(self):
            pass

        def server_close(self):
            pass

    monkeypatch.setattr(werkzeug.serving, "_log_add_style", True)
    monkeypatch.setattr(werkzeug.serving, "make_server", lambda *args, **kwargs: Server())
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    serve(None, sock, announce=lambda line: None)
    assert werkzeug.serving._log_add_style is False


def test_without_the_extra_the_error_names_the_install(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "flask", None)  # ``import flask`` now raises ImportError
    assert_cli_refuses(["serve", models / "gpt10", "--tokenizer", VQ8], models,
                       match=r"pip install 'mirai-foresight\[serve\]'")


def _start_server(checkpoint_dir: Path) -> tuple[subprocess.Popen, str]:
    """``mirai serve`` in its own process on a free port; returns it and the URL it announced."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "mirai.cli.main", "serve", str(checkpoint_dir), "--tokenizer",
                             VQ8, "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("serving on "):
            return proc, line.split()[2]
    proc.kill()
    raise AssertionError(f"mirai serve did not announce its URL: {''.join(seen)[-2000:]}")


def _browser(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is not installed")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver (make test does it "
                    "where apt-get exists)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager (which may download drivers) is never asked.
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


FETCH_GRID = """const done = arguments[arguments.length - 1];
fetch(document.getElementById("grid").src).then(r => r.arrayBuffer()).then(buffer => {
  let text = ""; for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  done(btoa(text));
});"""


def test_in_chromium_the_page_sets_options_and_shows_the_grid(models, tmp_path, monkeypatch):
    import base64

    monkeypatch.setenv("SE_AVOID_STATS", "true")  # Selenium Manager (not used: the driver is given) stays quiet
    driver = _browser(tmp_path / "profile")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    proc, url = _start_server(models / "gpt10")
    try:
        driver.get(url)
        assert driver.title == "Mirai: GPT-Nano (gpt10)"
        boxes = {box.get_attribute("value"): box for box in driver.find_elements(By.NAME, "class")}
        assert len(boxes) == 10
        labels = [label.text for label in driver.find_elements(By.CSS_SELECTOR, ".classes label")]
        assert labels == list(CLASS_NAMES)
        for box in boxes.values():  # pick Bag and Ankle boot only
            if box.is_selected():
                box.click()
        boxes["9"].click()
        boxes["8"].click()
        for field in ("cfg_scale", "temperature", "top_k", "seed", "per_class"):
            element = driver.find_element(By.ID, field)
            element.clear()
            element.send_keys(str(REQUEST[field]))
        status = driver.find_element(By.ID, "status")
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 30).until(lambda d: status.text.startswith(("done", "error")))
        assert status.text.startswith("done"), status.text
        grid = driver.find_element(By.ID, "grid")
        assert grid.is_displayed() and driver.execute_script("return arguments[0].naturalWidth", grid) > 0
        shown = png(base64.b64decode(driver.execute_async_script(FETCH_GRID)))
        # Exactly the grid of these options: the page sent what was set (classes in the page's order).
        expected = png(create_app(load_generator(models / "gpt10", VQ8, device="cpu")).test_client()
                       .post("/generate", json=dict(REQUEST, classes=[8, 9])).data)
        assert np.array_equal(shown, expected)
        # A bad value comes back as the server's message, not as a broken image.
        per_class = driver.find_element(By.ID, "per_class")
        per_class.clear()
        per_class.send_keys("99")
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 30).until(lambda d: status.text.startswith("error"))
        assert "per_class" in status.text and "between 1 and 16" in status.text
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=20)
