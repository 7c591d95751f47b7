"""Carrying directions to another point (another sample, timestep, image, or the directions many samples share).

Parallel transport moves a direction to a point with bases (U1, V1):
      v' = normalise(V1 U1^T u0),   u0 the source tangent vector.
Motion transfer (x0_hat bases) first re-makes u0 on the other image as the same motion of the region's content
(latentbasis.motion), then transports it as above. Global directions: the top eigenvectors of the mean projector of
many samples' tangent spaces (global_directions).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .basis import Basis, GlobalDirections, latent_basis
from .describe import describe_basis, shared_descriptions
from .editing import EditSettings, combine, edit_images, edit_steps
from . import validate
from .errors import LatentBasisError
from .images import x_to_image
from .motion import motion_carried_row, region_in_x
from .registration import describe_by_edits, description_reading
from .sampling import sample_to, sample_trajectory, trajectory_grid


def transport(u0: torch.Tensor, latent1: torch.Tensor, tangent1: torch.Tensor) -> torch.Tensor:
    """Parallel transport of a tangent vector u0 [*h_shape] to a point with bases (V1 [k, *x], U1 [k, *h]):
    v' = normalise(V1^T (U1 u0)) as a latent direction [*x_shape]."""
    validate.finite_tensor(u0, "the tangent vector to transport")
    U1 = tangent1.reshape(tangent1.shape[0], -1).double()
    if U1.shape[1] != u0.numel():
        raise LatentBasisError(f"tangent vector of size {u0.numel()} does not match the bases' h size {U1.shape[1]}")
    coeff = U1 @ u0.reshape(-1).double()
    v = coeff @ latent1.reshape(latent1.shape[0], -1).double()
    norm = v.norm()
    if norm == 0:
        raise LatentBasisError("the direction is orthogonal to the target tangent space: nothing to transport")
    return (v / norm).float().reshape(latent1.shape[1:])


def kept_fraction(u0: torch.Tensor, tangent1: torch.Tensor) -> float:
    """||U1 u0|| / ||u0||: how much of a tangent vector the target's tangent span holds (1: all of it; near 0: the
    transported direction means little there)."""
    U1 = tangent1.reshape(tangent1.shape[0], -1).double()
    u = u0.reshape(-1).double()
    return float((U1 @ u).norm() / u.norm().clamp(min=1e-300))


def _x0_hat(model, x: torch.Tensor, timestep: int, prompt: str | None) -> torch.Tensor:
    with torch.no_grad():
        f = model.denoised_function(int(timestep), model.encode_prompt(prompt))
        return f(x.to(model.device, torch.float32)[None])[0].float().cpu()


TRANSFERS = ("tangent", "motion")


def motion_refusal(given) -> str | None:
    """Why the directions of basis `given` cannot be carried by motion transfer, or None when they can: it must be
    a basis of x0_hat of one image (not h, not global directions), and a basis of a region must hold its mask."""
    if given.space != "x0" or isinstance(given, GlobalDirections):
        return (f"motion transfer needs a basis of x0_hat of one image; this one is of space {given.space} "
                f"({given.algorithm}), and h bases and global directions are not motions of a region: motion "
                "transfer needs one of space x0 (latentbasis basis --space x0)")
    if given.mask_sha256 and given.mask is None:
        return ("this basis of a region does not hold its mask (a file from an older version): compute it again "
                "to carry it by motion")
    return None


def transported_basis(model, given, x_t: torch.Tensor, timestep: int, prompt: str | None = None,
                      rank: int | None = None, transfer: str = "tangent", **basis_kw):
    """A basis from elsewhere (another sample, timestep, a file, or global directions) made usable at
    (x_t, timestep): itself when it was computed at this very point, else the local basis, of rank max(k, rank)
    (the published code transports into rank 50), with each given direction transported onto it (transport of
    given.tangent[i]). Singular values and tangent vectors are the local ones' top k; extra["kept"] lists each
    direction's kept fraction (kept_fraction), extra["given_descriptions"] the given basis' descriptions (what each
    direction did where it was found) when it has them. The local basis is computed in the given basis' space (h,
    or x0_hat with the same mask and null rank: pass mask= and null_rank= in basis_kw).

    transfer "motion" (x0_hat bases of one image): each given tangent vector is first re-made on this image as the
    same motion of the region's content (motion_transport, from the given basis' region on its own x0_hat to
    basis_kw's mask on this x0_hat; the whole image where there is none), then transported as above;
    extra["motion_share"] lists how much of each given direction is such a motion."""
    model = validate.model(model)
    if not isinstance(given, Basis):
        raise LatentBasisError("the directions to carry must be a basis (latent_basis', load_basis' or "
                               f"global_directions' result), got {type(given).__name__}")
    if rank is not None:
        rank = validate.integer(rank, "the transport rank", lo=1)
    if transfer not in TRANSFERS:
        raise LatentBasisError(f"unknown transfer {transfer!r}; choose one of {', '.join(TRANSFERS)}")
    x_t = validate.point(x_t, model.x_shape, "x_t")
    if torch.equal(given.point, x_t) and given.timestep == timestep:
        return given
    k = given.k
    r = max(k, int(rank or k))
    sources, shares = [given.tangent[i] for i in range(k)], None
    if transfer == "motion":
        why = motion_refusal(given)
        if why:
            raise LatentBasisError(why)
        region0, region1 = region_in_x(model, given.mask), region_in_x(model, basis_kw.get("mask"))
        image0 = _x0_hat(model, given.point, given.timestep, given.prompt)
        image1 = _x0_hat(model, x_t, timestep, prompt)
        carried = [motion_carried_row(given.tangent[i], image0, region0, image1, region1) for i in range(k)]
        sources, shares = [u for u, _ in carried], [share for _, share in carried]
    local = latent_basis(model, x_t, timestep=timestep, k=r, prompt=prompt, space=given.space, **basis_kw)
    moved = torch.stack([transport(u, local.latent, local.tangent) for u in sources])
    kept = [kept_fraction(u, local.tangent) for u in sources]
    extra = {**local.extra, "kept": kept, "transport_rank": r}
    if given.descriptions:     # what the given basis says each direction does (where it was found)
        extra["given_descriptions"] = given.descriptions
    if shares is not None:
        extra["motion_share"] = shares
    return dataclasses.replace(local, latent=moved, tangent=local.tangent[:k], singular_values=local.singular_values[:k],
                               residuals=local.residuals[:k], extra=extra)


def global_directions(bases: list, k: int):
    """The directions many samples' bases share, at one timestep: the top-k eigenvectors of the mean projector of
    their tangent spaces, (1/n) sum_i U_i^T U_i (for transport), and of their latent spaces (for a direct look), from
    the SVD of the stacked rows. The singular values are the eigenvalues, in [0, 1]: the share of the samples'
    spans each global direction lies in (1: in every sample's span). Returned as a Basis (algorithm "global",
    point: the samples' mean x_t), applied to any image by transported_basis."""
    if not bases:
        raise LatentBasisError("global directions need at least one basis")
    if not all(isinstance(b, Basis) for b in bases):
        raise LatentBasisError("global directions are made of bases (latent_basis' results), got "
                               f"{', '.join(sorted({type(b).__name__ for b in bases if not isinstance(b, Basis)}))}")
    k = validate.integer(k, "k", lo=1)
    n = len(bases)
    first = bases[0]
    for b in bases[1:]:
        if b.tangent.shape[1:] != first.tangent.shape[1:] or b.timestep != first.timestep or b.space != first.space:
            raise LatentBasisError("global directions need bases of one model, timestep and space")
    U = torch.cat([b.tangent.reshape(b.k, -1).double() for b in bases])
    V = torch.cat([b.latent.reshape(b.k, -1).double() for b in bases])
    k = min(k, U.shape[0], U.shape[1])
    _, su, Uh = torch.linalg.svd(U, full_matrices=False)
    _, _, Vh = torch.linalg.svd(V, full_matrices=False)
    share = (su[:k] ** 2 / n).float()
    return GlobalDirections(
        latent=Vh[:k].float().reshape(k, *first.latent.shape[1:]),
        tangent=Uh[:k].float().reshape(k, *first.tangent.shape[1:]), singular_values=share,
        point=torch.stack([b.point for b in bases]).mean(0), residuals=torch.zeros(k),
        provenance=dataclasses.replace(first.provenance, algorithm="global", iterations=n, seed=0,
                                       jvps=sum(b.jvps for b in bases), vjps=sum(b.vjps for b in bases),
                                       seconds=sum(b.seconds for b in bases)),
        region=dataclasses.replace(first.region), extra={"samples": n})


DESCRIBED_SAMPLES = 4     # global directions are described on (at most) this many of their samples


def global_basis(model, seeds, *, timestep: int, k: int, num_steps: int = 100, prompt: str | None = None,
                 guidance: float = 1.0, progress=None, t_fraction: float | None = None, describe: str | None = None,
                 describe_samples: int = DESCRIBED_SAMPLES, describe_strength: float = 6.0, stage=None, **basis_kw):
    """The global directions of the samples of `seeds` at `timestep` (global_directions of their bases, each at the
    x_t of its DDIM trajectory, the seed also the basis' random start), described on the first `describe_samples`
    samples by describe_global (describe: its reading, None: registration.description_reading's choice;
    describe_samples 0: not described). basis_kw go to latent_basis (layer, space, mask, null_rank). progress(1)
    after each sample; stage(description, total) -> progress of the describing (as basis_for's). t_fraction: the
    timestep as the user gave it, a fraction of T (None: timestep / T)."""
    model = validate.model(model)
    reading = description_reading(model, describe)
    n_described = validate.integer(describe_samples, "describe_samples", lo=0)
    validate.describing_strength(describe_strength)
    bases, trajectories = [], []
    for j, seed in enumerate(seeds):
        if j < n_described and reading == "edit":      # the whole trajectory: the edits continue from x_t
            trajectories.append(sample_trajectory(model, seed, num_steps=num_steps, prompt=prompt, guidance=guidance,
                                                  through=timestep))
            x_t = trajectories[-1].at(timestep)
        else:
            trajectories.append(None)
            x_t = sample_to(model, seed, timestep=timestep, num_steps=num_steps, prompt=prompt, guidance=guidance)
        bases.append(latent_basis(model, x_t, timestep=timestep, k=k, prompt=prompt, seed=seed, **basis_kw))
        if progress:
            progress(1)
    g = global_directions(bases, k)
    if t_fraction is not None:
        g.t_fraction = t_fraction
    if n_described:
        describe_global(model, g, bases[:n_described], trajectories[:n_described], reading, describe_strength,
                        stage)
    return g


def describe_global(model, g, bases: list, trajectories: list, reading: str = "edit", strength: float = 6.0,
                    stage=None, settings: EditSettings | None = None) -> list[dict]:
    """What each global direction does, read on samples: on each sample (its basis and the trajectory it was computed
    on; the reading "change" reads no trajectory) the global tangent vectors are carried onto the sample's basis
    (transport, as `edit --basis` applies them) and the carried directions described (reading "edit":
    registration.describe_by_edits at -strength and +strength, 2k edits a sample; "change": describe.describe_basis,
    k JVPs; on a class-conditional model with the label the global tangent vector follows there); then
    describe.shared_descriptions: the description most samples give each direction, and on how many.
    Stored in g.descriptions (and so in the basis file); returned. stage: as global_basis'; settings: the edits'
    (the published guidance by default)."""
    stage = stage or (lambda desc, total: None)
    settings, tick = settings or EditSettings("guidance"), None
    if reading == "edit":
        steps = sum(edit_steps(tr, int(g.timestep), settings) for tr in trajectories)
        tick = stage(f"describing: {2 * g.k} edits on each of {len(bases)} samples", steps)
    per_sample = []
    for b, traj in zip(bases, trajectories):
        held = [i for i in range(g.k) if kept_fraction(g.tangent[i], b.tangent) > 0]   # else nothing to carry
        described = []
        if held:
            carried = torch.stack([transport(g.tangent[i], b.latent, b.tangent) for i in held])
            here = dataclasses.replace(b, latent=carried, tangent=g.tangent[held],
                                       singular_values=g.singular_values[held], residuals=g.residuals[held])
            described = describe_by_edits(model, here, traj, strength, settings, progress=tick) \
                if reading == "edit" else describe_basis(model, here)
        elif tick:
            tick(edit_steps(traj, int(g.timestep), settings))
        column = [None] * g.k
        for i, d in zip(held, described):
            column[i] = d
        per_sample.append(column)
    g.descriptions = shared_descriptions(per_sample, {"reading": "edit", "strength": float(strength)}
                                         if reading == "edit" else {"reading": "change"})
    return g.descriptions


def global_lines(model, g, samples: int, num_steps: int) -> list[str]:
    """What `latentbasis global` prints of global directions found over the samples of seeds 0..samples-1: where,
    and how much of the samples' tangent spans each direction lies in."""
    n = len([s for s in trajectory_grid(model.num_train_timesteps, num_steps, g.timestep) if s > g.timestep])
    return [f"model {g.model}, timestep {g.timestep} ({g.t_fraction:.3f} T), {samples} samples (seeds 0..{samples - 1}), "
            f"{n} DDIM steps to t each",
            "shared: " + ", ".join(f"g{i + 1} {float(s):.2f}" for i, s in enumerate(g.singular_values))
            + " (the mean share of the samples' tangent spans each global direction lies in; 1: all of it)"]


@dataclass
class CarriedEdit:
    seed: int
    unedited: torch.Tensor           # the seed's sample, pixels [C, H, W]
    edited: torch.Tensor             # with the carried edit
    kept: list[float]                # per direction of the basis: the share the seed's tangent span keeps
    motion_share: list[float] | None = None   # carried by motion: how much of each direction is a motion there

    def caption(self, indices) -> str:
        """"seed 3: kept v1 85 %[; a motion v1 90 %]" for the directions `indices` of the edit."""
        motion = f"; a motion {shares_text(self.motion_share, indices)}" if self.motion_share is not None else ""
        return f"seed {self.seed}: kept {shares_text(self.kept, indices)}{motion}"


def carry_edit(model, basis, weights: dict[int, float], seeds, *, num_steps: int = 100, prompt: str | None = None,
               guidance: float = 1.0, method: str = "guidance", mask=None, null_rank: int = 0,
               progress=None) -> list[CarriedEdit]:
    """The combined edit sum_i weights[i] v_i of `basis` carried to the samples of `seeds` at the basis' timestep:
    each sample's own basis there (the same space; `mask` and `null_rank` its region) with the directions
    transported onto it (transported_basis); x0_hat directions of one image are first re-made on each sample as the
    same motion of the region's content (transfer "motion"), other bases carried as tangent vectors.
    progress(i, seed) before each sample."""
    model = validate.model(model)
    ts = basis.timestep
    transfer = "tangent" if motion_refusal(basis) else "motion"
    out = []
    for i, seed in enumerate(seeds):
        if progress:
            progress(i, seed)
        traj = sample_trajectory(model, seed, num_steps=num_steps, prompt=prompt, guidance=guidance, through=ts)
        moved = transported_basis(model, basis, traj.at(ts), ts, prompt=prompt, mask=mask, null_rank=null_rank,
                                  transfer=transfer)
        d = combine(moved.latent, weights)[None]
        edited = x_to_image(model, edit_images(model, traj, ts, d, EditSettings(method=method)))[0]
        out.append(CarriedEdit(seed, x_to_image(model, traj.x0[None])[0], edited,
                               moved.extra.get("kept") or [1.0] * moved.k, moved.extra.get("motion_share")))
    return out


def shares_text(shares: list[float], indices=None) -> str:
    """Per-direction shares as "v1 85 %, v3 40 %" (all directions, or those of `indices`)."""
    return ", ".join(f"v{i + 1} {100 * shares[i]:.0f} %" for i in (range(len(shares)) if indices is None else indices))
