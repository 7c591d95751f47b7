"""latentbasis: the Riemannian geometry of a diffusion model's latent space, and edits along it.

Python API:
    model = load_model("digits")                       # bundled name, local folder, or cached hub id
    x_t = sample_to(model, seed=0, t=0.6)              # DDIM from x_T ~ N(0, I) down to t
    basis = latent_basis(model, x_t, t=0.6, k=8)       # top-k latent / tangent basis of J = dh/dx_t
    save_basis(basis, "basis.safetensors")
    model = from_pipeline(pipe)                        # a diffusers pipeline already in memory
    pipe(prompt, callback_on_step_end=edit_callback(basis, 0, 3.0, prompt=prompt))   # edit inside its call
    numbers = run_report(model, "report/", ReportSettings(samples=8, timesteps=10, k=8))   # report.html + CSV
"""
from .basis import Basis, GlobalDirections, Provenance, Region, latent_basis, pullback_basis
from .basisfile import load_basis, save_basis
from .app import launch_app
from .errors import LatentBasisError
from .families import DiffusionModel, GaussianModel
from .grassmann import chordal_distance, geodesic_distance, principal_angles, random_subspace_distances
from .loading import load_model, resolve_timestep
from .pipelines import edit_callback, from_pipeline
from .report import ReportSettings, run_report
from .sampling import ddim_timesteps, sample_to
from .version import __version__

__all__ = [
    "Basis", "DiffusionModel", "GaussianModel", "GlobalDirections", "LatentBasisError", "Provenance", "Region",
    "ReportSettings", "__version__",
    "chordal_distance", "ddim_timesteps", "edit_callback", "from_pipeline", "geodesic_distance", "latent_basis",
    "launch_app", "load_basis", "load_model", "principal_angles", "pullback_basis", "random_subspace_distances",
    "resolve_timestep", "run_report", "sample_to", "save_basis",
]
