"""Edits along the latent basis at (x_t, t), then DDIM from t down to 0 on the trajectory's own grid.

A direction is d = sum_i strength_i v_i (v_i rows of a latent basis at x_t). Two ways to move x_t along it:
- "guidance" (the published x-space guidance, Park et al. 2023): z_0 = x_t, then n times
      z <- z + scale * (eps(z + step * d, t) - eps(z, t))
  (step 1; scale 0.1 for pixel models, 1 for latent models). eps is the network's, converted from whatever it
  predicts (schedules.to_eps_x0). For a velocity (flow-matching) model eps = x + (1 - s_t) v, so the update reads
      z <- z + scale * (step * d + (1 - s_t) (v(z + step * d, t) - v(z, t)))
  the published eps update exactly, written in the velocity;
- "direct": x_t + d, optionally rescaled to keep ||x_t|| (x_t of a Gaussian sampler lives near a sphere).
Parallel transport moves a direction to another point (another sample or timestep) with bases (U1, V1):
      v' = normalise(V1 U1^T u0),   u0 the source tangent vector.
Motion transport (for x0_hat bases, of a region or the whole image) first re-makes u0 on the other image: u0 is
read as an affine motion of the region's content plus a colour offset, and the same motion, in units of the other
region's box, is made of the other image's own content (motion_fields, motion_transport); then as above.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import LatentBasisError
from .sampling import Trajectory, denoise, predict_eps

METHODS = ("guidance", "direct")


@dataclass
class EditSettings:
    method: str = "guidance"
    n_iter: int = 16          # guidance iterations (64 with an edit prompt in the paper)
    step: float = 1.0         # guidance: eps is probed at z + step * d
    scale: float | None = None  # guidance: None -> 0.1 for pixel models, 1.0 for latent (VAE) models
    keep_norm: bool = False   # direct: rescale to ||x_t||

    def resolved_scale(self, model) -> float:
        if self.scale is not None:
            return float(self.scale)
        return 1.0 if model.x_is_latent else 0.1


def guidance_edit(model, x_t: torch.Tensor, timestep: int, d: torch.Tensor, *, n_iter: int = 16, step: float = 1.0,
                  scale: float = 0.1, prompt: str | None = None, progress=None) -> torch.Tensor:
    """x-space guidance for a batch: x_t [*x_shape], d [B, *x_shape] -> z [B, *x_shape] (eq. in the module doc),
    run on the model's device (eps from any prediction type, latentbasis.schedules), returned on the CPU.
    Both eps evaluations of an iteration go in one batch of 2B."""
    d = d.to(model.device, torch.float32)
    z = x_t.to(model.device, torch.float32).expand_as(d).clone()
    B = d.shape[0]
    for _ in range(n_iter):
        eps = predict_eps(model, torch.cat([z + step * d, z]), timestep, prompt)
        z = z + scale * (eps[:B] - eps[B:])
        if progress:
            progress(1)
    return z.cpu()


def direct_edit(x_t: torch.Tensor, d: torch.Tensor, keep_norm: bool = False) -> torch.Tensor:
    """x_t + d for d [B, *x_shape]; with keep_norm each row is rescaled to ||x_t||."""
    z = x_t + d
    if keep_norm:
        z = z * (x_t.norm() / z.flatten(1).norm(dim=1)).view(-1, *[1] * x_t.dim())
    return z


def edit_images(model, traj: Trajectory, timestep: int, d: torch.Tensor, settings: EditSettings | None = None,
                clip_denoised: bool = True, progress=None) -> torch.Tensor:
    """Images x0 [B, *x_shape] for directions d [B, *x_shape] applied at `timestep` of a kept trajectory.

    Only the steps from `timestep` down to 0 are re-run, in one batch. A row of d that is exactly zero is the
    identity edit: with clip_denoised (as the trajectory's own image) it returns that image, bit for bit (for an
    inverted real image there is no single such image, and strength 0 is the reconstruction from t).
    progress: called with 1 after each batched network step (edit_steps(...) of them).
    """
    settings = settings or EditSettings()
    if settings.method not in METHODS:
        raise LatentBasisError(f"unknown edit method {settings.method!r}; choose one of {', '.join(METHODS)}")
    if tuple(d.shape[1:]) != tuple(traj.xs.shape[1:]):
        raise LatentBasisError(f"direction has shape {tuple(d.shape[1:])}, x_t has {tuple(traj.xs.shape[1:])}")
    i = traj.index(timestep)
    x_t = traj.xs[i]
    out = torch.empty_like(d)
    moving = d.flatten(1).abs().amax(dim=1) > 0
    if traj.x0 is None or not clip_denoised:
        moving = torch.ones_like(moving)
    else:
        out[~moving] = traj.x0
    if moving.any():
        dm = d[moving]
        if settings.method == "guidance":
            z = guidance_edit(model, x_t, timestep, dm, n_iter=settings.n_iter, step=settings.step,
                              scale=settings.resolved_scale(model), prompt=traj.prompt, progress=progress)
        else:
            z = direct_edit(x_t, dm, settings.keep_norm)
        out[moving] = denoise(model, z, traj.timesteps[i:], traj.prompt, traj.guidance, clip_denoised,
                              progress=progress)
    return out


def edit_steps(traj: Trajectory, timestep: int, settings: EditSettings) -> int:
    """How many batched network steps edit_images makes at `timestep` (for progress bars)."""
    return (settings.n_iter if settings.method == "guidance" else 0) + len(traj.timesteps) - traj.index(timestep)


def combine(latent: torch.Tensor, weights: dict[int, float]) -> torch.Tensor:
    """d = sum_i w_i v_i for {index: strength}; latent [k, *x_shape]."""
    k = latent.shape[0]
    d = torch.zeros_like(latent[0])
    for i, w in weights.items():
        if not 0 <= int(i) < k:
            raise LatentBasisError(f"direction index {i} is out of range: the basis has k = {k} (indices 0..{k - 1})")
        d = d + float(w) * latent[int(i)]
    return d


def sweep_directions(latent: torch.Tensor, indices: list[int], strengths: list[float]) -> torch.Tensor:
    """Rows strength * v_i for every (i, strength), i-major: [len(indices) * len(strengths), *x_shape]."""
    rows = [combine(latent, {i: s}) for i in indices for s in strengths]
    return torch.stack(rows)


def transport(u0: torch.Tensor, latent1: torch.Tensor, tangent1: torch.Tensor) -> torch.Tensor:
    """Parallel transport of a tangent vector u0 [*h_shape] to a point with bases (V1 [k, *x], U1 [k, *h]):
    v' = normalise(V1^T (U1 u0)) as a latent direction [*x_shape]."""
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


def motion_fields(image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """How an image changes under small affine motions of a region's content, and under a colour offset there.

    image [C, h, w] (an x0_hat, in x); region bool [C, h, w] (every channel of a pixel alike), with bounding box
    of centre c = (cx, cy) and half-sizes (hx, hy) in pixels. Moving the content by a displacement field w(p)
    changes the image, to first order, by
        dI(p) = -grad I(p) . w(p)
    for w = (hx, 0) and (0, hy) (a shift by half the box along x and along y), w = p - c (a scaling about the
    centre) and w = (-(y - cy), x - cx) (a rotation about it); the last C fields add 1 to one channel each.
    grad I: central differences (torch.gradient). Returns G [4 + C, C, h, w], every field zero outside the region.
    """
    C, h, w = image.shape
    inside = region.any(0)
    ys, xs = inside.nonzero(as_tuple=True)
    if len(ys) == 0:
        raise LatentBasisError("the region is empty: it marks no pixel")
    cy, cx = (float(ys.min()) + float(ys.max())) / 2, (float(xs.min()) + float(xs.max())) / 2
    hy, hx = (float(ys.max() - ys.min()) + 1) / 2, (float(xs.max() - xs.min()) + 1) / 2
    img = image.double()
    gy, gx = torch.gradient(img, dim=(1, 2))
    yy = (torch.arange(h, dtype=torch.float64) - cy)[:, None].expand(h, w)
    xx = (torch.arange(w, dtype=torch.float64) - cx)[None, :].expand(h, w)
    fields = [-gx * hx, -gy * hy, -(gx * xx + gy * yy), -(-gx * yy + gy * xx)]
    for c in range(C):
        o = torch.zeros_like(img)
        o[c] = 1.0
        fields.append(o)
    return torch.stack(fields) * region.double()


def motion_transport(u0: torch.Tensor, image0: torch.Tensor, region0: torch.Tensor, image1: torch.Tensor,
                     region1: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The same motion on another image: a change u0 [C, h, w] of image0 in region0, re-made in region1 of image1.

        c = argmin_c ||G0 c - u0||  (least squares),   u1 = G1 c,   share = ||G0 c|| / ||u0||
    with G = motion_fields(image, region). The coefficients are in units of each region's box (a shift by half the
    box, a relative scaling, an angle, a colour offset), so a larger shape moves in proportion, and u1 is made of
    image1's own gradients (its colours, its edges). share: how much of u0 is such a motion and offset (1: all of
    it; near 0: u0 is not a motion of the region, and its transport means little). Returns (u1 [C, h, w], share).
    """
    G0 = motion_fields(image0, region0).reshape(-1, u0.numel()).T
    u = u0.reshape(-1).double()
    c = torch.linalg.lstsq(G0, u[:, None]).solution[:, 0]
    share = float((G0 @ c).norm() / u.norm().clamp(min=1e-300))
    u1 = torch.einsum("j,j...->...", c, motion_fields(image1, region1))
    return u1.float(), share


def motion_carried_row(row: torch.Tensor, image0: torch.Tensor, region0: torch.Tensor, image1: torch.Tensor,
                       region1: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One tangent row of an x0_hat basis, carried to another image as the same motion of its region's content.

    row: the change of x0_hat inside region0 (its entries in region0's order, [n0]); region0, region1 bool
    [C, h, w] (all True: the whole image). The row is placed in image0's shape, re-made on image1 by
    motion_transport, and read back inside region1: the tangent vector of the target's region basis, ready for
    transport. Returns (row1 [n1], share)."""
    u0 = torch.zeros(region0.shape)
    u0[region0] = row.reshape(-1).float()
    u1, share = motion_transport(u0, image0, region0, image1, region1)
    return u1[region1], share


def _region_x(model, mask: torch.Tensor | None) -> torch.Tensor:
    from .masks import mask_in_x

    return mask_in_x(model, mask) if mask is not None else torch.ones(model.x_shape, dtype=torch.bool)


def _x0_hat(model, x: torch.Tensor, timestep: int, prompt: str | None) -> torch.Tensor:
    with torch.no_grad():
        f = model.denoised_function(int(timestep), model.encode_prompt(prompt))
        return f(x.to(model.device, torch.float32)[None])[0].float().cpu()


TRANSFERS = ("tangent", "motion")


def motion_refusal(given) -> str | None:
    """Why the directions of basis `given` cannot be carried by motion transfer, or None when they can: it must be
    a basis of x0_hat of one image (not h, not global directions), and a basis of a region must hold its mask."""
    if given.space != "x0" or given.algorithm == "global":
        return (f"motion transfer needs a basis of x0_hat of one image; this one is of space {given.space} "
                f"({given.algorithm}), and h bases and global directions are not motions of a region: motion "
                "transfer needs one made with latentbasis basis --space x0")
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
    direction's kept fraction (kept_fraction). The local basis is computed in the given basis' space (h, or x0_hat
    with the same mask and null rank: pass mask= and null_rank= in basis_kw).

    transfer "motion" (x0_hat bases of one image): each given tangent vector is first re-made on this image as the
    same motion of the region's content (motion_transport, from the given basis' region on its own x0_hat to
    basis_kw's mask on this x0_hat; the whole image where there is none), then transported as above;
    extra["motion_share"] lists how much of each given direction is such a motion."""
    import dataclasses

    from .basis import latent_basis

    if transfer not in TRANSFERS:
        raise LatentBasisError(f"unknown transfer {transfer!r}; choose one of {', '.join(TRANSFERS)}")
    if torch.equal(given.point, x_t) and given.timestep == timestep:
        return given
    k = given.k
    r = max(k, int(rank or k))
    sources, shares = [given.tangent[i] for i in range(k)], None
    if transfer == "motion":
        why = motion_refusal(given)
        if why:
            raise LatentBasisError(why)
        region0, region1 = _region_x(model, given.mask), _region_x(model, basis_kw.get("mask"))
        image0 = _x0_hat(model, given.point, given.timestep, given.prompt)
        image1 = _x0_hat(model, x_t, timestep, prompt)
        carried = [motion_carried_row(given.tangent[i], image0, region0, image1, region1) for i in range(k)]
        sources, shares = [u for u, _ in carried], [share for _, share in carried]
    local = latent_basis(model, x_t, timestep=timestep, k=r, prompt=prompt, space=given.space, **basis_kw)
    moved = torch.stack([transport(u, local.latent, local.tangent) for u in sources])
    kept = [kept_fraction(u, local.tangent) for u in sources]
    extra = {**local.extra, "kept": kept, "transport_rank": r}
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
    import dataclasses

    if not bases:
        raise LatentBasisError("global directions need at least one basis")
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
    return dataclasses.replace(
        first, latent=Vh[:k].float().reshape(k, *first.latent.shape[1:]),
        tangent=Uh[:k].float().reshape(k, *first.tangent.shape[1:]), singular_values=share,
        point=torch.stack([b.point for b in bases]).mean(0), residuals=torch.zeros(k), algorithm="global",
        iterations=n, jvps=sum(b.jvps for b in bases), vjps=sum(b.vjps for b in bases), seed=0,
        seconds=sum(b.seconds for b in bases), extra={"samples": n})
