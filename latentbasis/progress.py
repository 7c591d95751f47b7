"""Progress reporters for the long calls. A stage reporter is `stage(description, total steps or None)`, returning
a step counter `step(n=1)` (or None: nothing to report); trajectory_for, run_recipe and the editing session take one.
"""
from __future__ import annotations

import sys

import numpy as np
from tqdm.auto import tqdm


class StageBars:
    """A stage reporter drawing one progress bar per stage on stderr (the CLI's), each erased when the next stage
    starts or the `with` block ends. Silent when quiet, and when stderr is not a terminal (a log file keeps only
    the command's own lines)."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.bar = quiet, None

    def __call__(self, desc: str, total: int | None):
        self.close()
        if self.quiet:
            return None
        self.bar = tqdm(total=total, desc=desc, unit=" step" if total else " it", leave=False, file=sys.stderr,
                        disable=None)
        return self.bar.update

    def basis_callback(self):
        """A latent_basis callback: a "basis" bar of its iterations, with the Jacobian products and the residual."""
        step = self("basis", None)

        def callback(info):
            if step:
                step(1)
                self.bar.set_postfix(jvps=info["jvps"], vjps=info["vjps"], residual=f"{info['residual']:.1e}")
        return callback

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fraction_stages(progress):
    """A stage reporter feeding `progress(fraction, desc=...)` (a Gradio progress) with each stage's real steps,
    "desc: step i of n"; one that reports nothing when progress is None or a stage has no known total."""
    def stage(desc: str, total: int | None):
        if progress is None or not total or total <= 0:
            return None
        done = [0]

        def step(n: int = 1) -> None:
            done[0] += n
            progress(min(1.0, done[0] / total), desc=f"{desc}: step {done[0]} of {total}")
        return step
    return stage


def residual_progress(progress, tol: float = 1e-3):
    """A latent_basis callback feeding `progress(fraction, desc=...)` by the residual r, which falls from ~1 to
    `tol`: fraction log10(r) / log10(tol) in [0, 1]. None when progress is None."""
    if progress is None:
        return None

    def callback(info):
        r = info["residual"]
        frac = min(1.0, max(0.0, np.log10(r) / np.log10(tol))) if np.isfinite(r) and r > 0 else 0.0
        progress(frac, desc=f"basis: iteration {info['iteration']}, residual {r:.1e} (stops at {tol:g})")
    return callback
