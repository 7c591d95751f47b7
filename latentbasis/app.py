"""Finding and starting the Gradio editor: apps/editor.py of a source tree, or the copy a wheel installs as
latentbasis/editor_app/editor.py. The editor itself is a thin layer over the Python API (apps/README.md)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .errors import LatentBasisError


def editor_path() -> Path | None:
    """The Gradio editor's source: inside an installed package (latentbasis/editor_app/editor.py, put there by the
    wheel), or apps/editor.py of a source tree."""
    here = Path(__file__).resolve().parent
    return next((p for p in (here / "editor_app" / "editor.py", here.parent / "apps" / "editor.py") if p.is_file()),
                None)


def load_editor():
    """The app module (apps/editor.py), loaded once."""
    path = editor_path()
    if path is None:
        raise LatentBasisError("the app is not installed with this copy of latentbasis (reinstall it: pip install "
                               "'latentbasis[app]')")
    if importlib.util.find_spec("gradio") is None:
        raise LatentBasisError("the app needs gradio: pip install 'latentbasis[app]' (or pip install -e '.[app]' "
                               "in a source tree)")
    if "latentbasis_editor" in sys.modules:
        return sys.modules["latentbasis_editor"]
    spec = importlib.util.spec_from_file_location("latentbasis_editor", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["latentbasis_editor"] = mod  # dataclasses look their module up while it loads
    spec.loader.exec_module(mod)
    return mod


def launch_app(model, host: str = "127.0.0.1", port: int = 0, block: bool = True):
    """The Gradio editor over a model already in memory (load_model's, or from_pipeline's on the user's own
    pipeline), on host:port (0: a free port). block False: returns (demo, url) at once; demo.close() stops it."""
    return load_editor().launch(model, host=host, port=port, block=block)
