"""The local generation page behind ``mirai serve``: pick classes and sampling settings, see a labelled grid.

Tokens are drawn by ``mirai.sampling.pipeline`` (``check_request``, ``sample_batch``) and the grid is drawn by
``mirai.figures.sample_grid_figure``, the same code ``mirai sample`` uses, so the page has no sampling logic of
its own. The web layer is Flask (the optional ``serve`` extra, imported only here, when a page is built);
the page is one template that loads no script, font or style from elsewhere, so it works offline.

HTTP interface (what the page's script calls; usable with ``curl`` too):

* ``GET /``: the page.
* ``POST /generate`` with a JSON object ``{"classes": [ids], "per_class": n, "seed": s, "cfg_scale": g,
  "temperature": t, "top_k": k or null}`` (all but ``classes`` optional): ``200`` with the grid as
  ``image/png``, or ``400`` with ``{"error": "..."}`` saying what is wrong and what to do.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mirai.checkpoint import read_meta
from mirai.config import from_dict
from mirai.data.fashion_mnist import CLASS_NAMES as FASHION_MNIST_NAMES
from mirai.data.options import resolve_device
from mirai.errors import ConfigError, MiraiError
from mirai.figures import DPI, MAX_GRID_ROWS, class_name, sample_grid_figure
from mirai.hub.resolve import resolve
from mirai.models.gpt import GPT
from mirai.sampling.checks import check_int
from mirai.sampling.grid import checkpoint_details, grid_title, trained_tokenizer, training_store_manifest
from mirai.sampling.pipeline import (SampleSettings, check_pair, check_request, check_trained_tokenizer,
                                     load_for_sampling, sample_batch)

EXTRA_HINT = "pip install 'mirai-foresight[serve]'"
MAX_PER_CLASS = 16  # images in one class row of the grid
REQUEST_KEYS = ("classes", "per_class", "seed", "cfg_scale", "temperature", "top_k")


def require_flask():
    """The ``flask`` module, or ``ConfigError`` naming the extra that installs it."""
    try:
        import flask
    except ImportError:
        raise ConfigError(f"mirai serve needs Flask, which is not installed: {EXTRA_HINT}") from None
    return flask


def _trained_on_fashion_mnist(tokenizer: Path) -> bool:
    """Whether a Mirai VQ checkpoint records Fashion-MNIST as its training data (the committed ones do)."""
    try:
        meta = read_meta(tokenizer)
        return meta["train_config"]["data"]["dataset"] == "fashion_mnist"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # AttributeError: config.json not a mapping
        return False


def class_names_for(checkpoint: Path, tokenizer: Path, num_classes: int) -> list[str] | None:
    """The dataset's class names for a GPT: those of the code store it was trained on when that is still
    here (``mirai.sampling.grid.checkpoint_details``), else Fashion-MNIST's for a 10-class GPT whose
    tokenizer was trained on Fashion-MNIST; None (classes shown by index) otherwise."""
    names = checkpoint_details(checkpoint)[1]
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    if num_classes == len(FASHION_MNIST_NAMES) and _trained_on_fashion_mnist(tokenizer):
        return list(FASHION_MNIST_NAMES)
    return None


def parse_request(body: Any, num_classes: int, max_images: int) -> tuple[np.ndarray, SampleSettings, int, int]:
    """(labels, settings, seed, images per class) from a ``/generate`` JSON body; ``ConfigError`` for a
    missing, ill-typed or out-of-range value. Labels: each picked class ``per_class`` times, in the order
    picked (repeats dropped). Class ids, seed and top-k are range-checked against the model by
    ``mirai.sampling.pipeline.check_request``."""
    if not isinstance(body, dict):
        raise ConfigError(f"the request must be a JSON object with the keys {list(REQUEST_KEYS)}")
    unknown = sorted(set(body) - set(REQUEST_KEYS))
    if unknown:
        raise ConfigError(f"unknown request key(s) {unknown}; valid keys are {list(REQUEST_KEYS)}")
    classes = body.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ConfigError("pick at least one class (classes: a non-empty list of class ids)")
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ConfigError(f"classes must be integer class ids in [0, {num_classes}), got {classes!r:.80}")
    classes = list(dict.fromkeys(classes))
    if len(classes) > MAX_GRID_ROWS:
        raise ConfigError(f"{len(classes)} classes picked; a grid shows at most {MAX_GRID_ROWS}: pick fewer")
    per_class = check_int("images per class (per_class)", body.get("per_class", 4), 1, MAX_PER_CLASS)
    if len(classes) * per_class > max_images:
        raise ConfigError(f"{len(classes)} classes x {per_class} images is more than the {max_images} images this "
                          "server makes at once (mirai serve --max-images): pick fewer classes or images per class")
    settings = from_dict(SampleSettings, {k: body[k] for k in ("cfg_scale", "temperature", "top_k") if k in body},
                         "request")
    return np.repeat(np.asarray(classes, dtype=np.int64), per_class), settings, body.get("seed", 0), per_class


@dataclass
class Generator:
    """A GPT and its tokenizer on one device, answering one request at a time (``lock``).

    ``title`` names what is sampled in the grid's title; ``class_names`` (None: by index) label its rows;
    ``max_images`` bounds one grid (a request is one batch, so this bounds memory too).
    """

    gpt: GPT
    vq: torch.nn.Module
    title: str
    step: int | None = None
    class_names: list[str] | None = None
    max_images: int = 64
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def class_labels(self) -> list[str]:
        """What the page shows for each class id: its name, or ``class N``."""
        return [class_name(c, self.class_names) for c in range(self.gpt.args.num_classes)]

    def render(self, body: Any) -> bytes:
        """The PNG grid for a ``/generate`` request (see ``parse_request``): one row per picked class,
        titled with the checkpoint, step, settings and seed. Raises ``ConfigError`` for a bad request."""
        labels, settings, seed, per_class = parse_request(body, self.gpt.args.num_classes, self.max_images)
        labels = check_request(self.gpt, self.vq, labels, settings, seed, batch_size=len(labels))
        device = next(self.gpt.parameters()).device
        title = grid_title(self.title, self.step, settings) + f", seed {seed}"
        with self.lock:  # one batch on the device at a time; matplotlib is not thread-safe either
            images, _ = sample_batch(self.gpt, self.vq, torch.from_numpy(labels).to(device), settings, seed)
            figure = sample_grid_figure(images, labels, title, self.class_names, per_row=per_class)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def load_generator(checkpoint: str | Path, tokenizer: str | Path | None = None, *, device: str = "auto",
                   prefer_ema: bool = True, model: str | None = None, grid_size: int | None = None,
                   max_images: int = 64) -> Generator:
    """Load a GPT (``checkpoint``: a Mirai folder, a LlamaGen/PAR ``.pt`` or any name ``mirai.hub.resolve``
    knows; ``model``/``grid_size`` as in ``mirai sample``) and its VQ onto ``device``. ``tokenizer`` None
    takes the one recorded by the code store the checkpoint was trained on. Raises ``ConfigError`` or
    ``CheckpointError`` for anything that would make every request fail (before the server starts)."""
    check_int("max_images (--max-images)", max_images, 1)
    device = resolve_device(device)
    path = resolve(checkpoint)
    # The GPT first: a path that is not a GPT checkpoint is named as such, not as one without a tokenizer.
    gpt = load_for_sampling(checkpoint, "gpt", prefer_ema=prefer_ema, name=model, grid_size=grid_size)
    if tokenizer is None:
        tokenizer = (trained_tokenizer(path).get("path")  # the checkpoint's record, else its training store's
                     or ((training_store_manifest(path) or {}).get("tokenizer") or {}).get("path"))
        if tokenizer is None:
            raise ConfigError(f"{checkpoint}: no tokenizer recorded with this checkpoint (or its training codes are "
                              "not here); pass --tokenizer, the VQ the GPT was trained with (e.g. fashion/vq8)")
    vq = load_for_sampling(tokenizer, "vq")
    check_pair(gpt, vq)
    check_trained_tokenizer(checkpoint, tokenizer, vq)
    step = checkpoint_details(path)[0]
    names = class_names_for(path, resolve(tokenizer), gpt.args.num_classes)
    title = f"{gpt.name} ({Path(str(checkpoint)).name})"
    return Generator(gpt.to(device), vq.to(device), title, step, names, max_images)


def create_app(generator: Generator):
    """The Flask app serving ``generator``: ``GET /`` (the page) and ``POST /generate`` (a PNG grid)."""
    flask = require_flask()
    app = flask.Flask(__name__)  # the page is templates/index.html beside this module
    defaults = SampleSettings()
    if generator.gpt.args.class_dropout_prob <= 0:  # no null class was learned: guidance is refused
        defaults.cfg_scale = 1.0

    @app.get("/")
    def index():
        return flask.render_template(
            "index.html", title=generator.title, classes=list(enumerate(generator.class_labels())),
            named=generator.class_names is not None, defaults=defaults, vocab_size=generator.gpt.args.vocab_size,
            max_per_class=MAX_PER_CLASS, max_rows=MAX_GRID_ROWS, max_images=generator.max_images)

    @app.post("/generate")
    def generate():
        try:
            png = generator.render(flask.request.get_json(silent=True))
        except MiraiError as err:
            return flask.jsonify(error=str(err)), 400
        return flask.Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); ``ConfigError`` when that is impossible
    (port in use, address not on this machine). Bound here, not by Werkzeug, which would exit the process."""
    check_int("port (--port)", port, 0, 65535)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise ConfigError(f"--host {host}: {err.strerror or err}; use 127.0.0.1 (this machine only) or the "
                          "address of one of this machine's network interfaces") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}): pick another --port, "
                          "or --port 0 for any free one") from None
    return sock


def serve(app, sock: socket.socket, announce: Callable[[str], None] = print) -> None:
    """Serve ``app`` on the listening ``sock`` (``listen``) until interrupted; ``announce`` gets the page's URL."""
    import werkzeug.serving
    from werkzeug.serving import make_server

    if not sys.stderr.isatty():  # Werkzeug colours its request log always: no escape codes in a log file
        werkzeug.serving._log_add_style = False
    host, port = sock.getsockname()[:2]
    server = make_server(host, port, app, threaded=True, fd=sock.fileno())
    shown = f"[{host}]" if ":" in host else host
    announce(f"serving on http://{shown}:{port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        sock.close()
