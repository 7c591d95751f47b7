"""The package as users install it: a wheel built from this tree, installed (without dependencies, reusing this
environment's) into a folder placed ahead of the source tree, run from a folder outside the source tree. The
bundled models and the app must travel inside it. And every Python example of the README and docs runs as written."""
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder holding the installed wheel, a working folder outside the source tree, the wheel)."""
    d = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(d / "dist")], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path_factory.mktemp("build"))
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((d / "dist").glob("latentbasis-*.whl"))
    site = d / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    work = d / "work"
    work.mkdir()
    return site, work, wheel


def _env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LATENTBASIS_ASSETS")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.slow
def test_the_wheel_carries_the_models_and_the_app_and_stays_small(installed):
    import zipfile

    site, _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "latentbasis/bundled_models/digits/diffusion_pytorch_model.safetensors" in names
    assert "latentbasis/bundled_models/digits-text/unet/config.json" in names
    assert "latentbasis/editor_app/editor.py" in names and "latentbasis/families/unet.py" in names
    assert wheel.stat().st_size < 100 * 2**20


@pytest.mark.slow
def test_installed_package_runs_from_another_folder(installed):
    site, work, _ = installed
    code = ("import latentbasis as lb, latentbasis.loading as L; print(lb.__file__); print(L.MODELS_DIR); "
            "m = lb.load_model('digits', device='cpu'); print(m.x_shape)")
    r = subprocess.run([sys.executable, "-c", code], cwd=work, env=_env(site), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1].startswith(str(site)) and out[2] == "(1, 16, 16)"
    r = subprocess.run([sys.executable, "-m", "latentbasis", "basis", "--model", "digits", "--k", "2", "--steps", "5",
                        "--quiet", "--device", "cpu", "--out", "b.safetensors"], cwd=work, env=_env(site),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (work / "b.safetensors").is_file() and (work / "b.png").is_file()
    r = subprocess.run([sys.executable, "-m", "latentbasis", "edit", "--model", "digits", "--k", "1", "--steps", "5",
                        "--n-iter", "1", "--strengths", "0,1", "--quiet", "--device", "cpu", "--out", "e.png"],
                       cwd=work, env=_env(site), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (work / "e.json").is_file(), r.stderr[-2000:]


@pytest.mark.slow
def test_installed_app_answers_on_loopback(installed):
    pytest.importorskip("gradio")
    site, work, _ = installed
    proc = subprocess.Popen([sys.executable, "-m", "latentbasis", "app", "--model", "digits", "--device", "cpu"],
                            cwd=work, env=_env(site), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        t0 = time.time()
        page = urllib.request.urlopen(url, timeout=10).read().decode()   # the address is printed once it answers
        assert "latentbasis editor" in page and time.time() - t0 < 10
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _examples():
    """(file, index, code) of every ```python block in the README and docs."""
    out = []
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", f.read_text(), flags=re.S)):
            out.append((f.relative_to(ROOT).as_posix(), i, code))
    return out


EXAMPLE_RUNNER = """
import json, os, sys, traceback
examples, results = json.load(open(sys.argv[1])), {}
for name, code, folder in examples:
    os.makedirs(folder)
    os.chdir(folder)
    try:
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
        results[name] = None
    except BaseException:
        results[name] = traceback.format_exc()
    with open(sys.argv[2] + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"""


@pytest.fixture(scope="module")
def example_runs(request, tmp_path_factory):
    """Every documented example this session selected, run as written by one fresh interpreter outside the source
    tree (one interpreter, not one each: its start-up, torch and diffusers imported, is most of a small example's
    time). Each example gets a fresh namespace (so it must import what it uses) and its own empty working folder.
    Returns ({name: None, or the traceback it raised}, the runner's stderr); an example missing from it was not
    reached (the runner died or timed out before it)."""
    import json

    d = tmp_path_factory.mktemp("examples")
    chosen = {item.callspec.id for item in request.session.items
              if item.originalname == "test_documented_examples_run_as_written"}
    todo = [(f"{w}#{i}", code, str(d / f"{w.replace('/', '_')}-{i}")) for w, i, code in _examples()
            if f"{w}#{i}" in chosen]
    (d / "examples.json").write_text(json.dumps(todo))
    (d / "runner.py").write_text(EXAMPLE_RUNNER)
    try:
        r = subprocess.run([sys.executable, str(d / "runner.py"), str(d / "examples.json"), str(d / "results.json")],
                           cwd=d, capture_output=True, text=True, timeout=600 + 300 * len(todo),
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        stderr = r.stderr
    except subprocess.TimeoutExpired as e:
        stderr = f"timed out after {e.timeout} s"
    results = json.loads((d / "results.json").read_text()) if (d / "results.json").exists() else {}
    return results, stderr


@pytest.mark.parametrize("where,i,code", _examples(), ids=[f"{w}#{i}" for w, i, _ in _examples()])
def test_documented_examples_run_as_written(where, i, code, example_runs):
    results, stderr = example_runs
    name = f"{where}#{i}"
    assert name in results, f"{name} was not reached:\n{stderr[-3000:]}"
    assert results[name] is None, f"{name}:\n{results[name][-3000:]}"


def test_there_are_documented_examples():
    assert len([e for e in _examples() if e[0] == "README.md"]) >= 3
