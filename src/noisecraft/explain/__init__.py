"""``noisecraft explain``: one self-contained HTML page that shows what diffusion does, with the
user's own trained run (figures as inline PNG, no JavaScript, no network).

The page is assembled by :func:`report` from sections, one module per group:

- :mod:`.noising` — 1. the schedule, 2. the forward process q(x_t | x_0);
- :mod:`.sampling` — 3. reverse sampling, 7. compute against quality, 8. SDE and ODE paths;
- :mod:`.paths` — 10. the ODE paths in straight-path coordinates and their straightness S;
- :mod:`.objective` — 4. the loss by noise level, 9. the likelihood bound;
- :mod:`.denoising` — 5. spectral bands, 6. means and modes on a closed-form mixture;
- :mod:`.page` — the HTML itself; :mod:`.context` — what the sections share.

Every number on the page comes from a small function with its own test. The estimators live
with their subject: ``likelihood.bound_estimate``, ``metrics.distances.sliced_wasserstein``,
``analytic.exact_reverse_conditional``; held-out data comes from ``data.held_out``. They are
re-exported here for the page's readers.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..analytic import exact_reverse_conditional
from ..likelihood import bound_estimate
from ..metrics.distances import sliced_wasserstein
from ..samplers import DEFAULT_STEPS
from .context import Context, held_out
from .denoising import bimodal, section_means, section_spectral
from .noising import (
    STANDARD_SCHEDULES,
    high_noise_share,
    high_noise_text,
    section_forward,
    section_schedule,
)
from .objective import (
    LIKELIHOOD_STRATA,
    bound_share,
    loss_by_noise_level,
    section_likelihood,
    section_loss,
)
from .page import Figure, Section, render_html
from .paths import ode_paths, section_paths
from .sampling import (
    NfeRow,
    count_calls,
    default_yardstick,
    nfe_plan,
    principal_plane,
    quality_vs_nfe,
    section_compute,
    section_reverse,
    section_sde_ode,
)

SECTIONS = ("schedule", "forward", "reverse", "loss", "spectral", "means", "compute", "sde-ode",
            "likelihood", "paths")
_bimodal = bimodal          # the names this module had as one file
_held_out = held_out

__all__ = [
    "LIKELIHOOD_STRATA", "SECTIONS", "STANDARD_SCHEDULES", "Context", "Figure", "NfeRow", "Section",
    "bimodal", "bound_estimate", "bound_share", "count_calls", "default_yardstick",
    "exact_reverse_conditional", "held_out", "high_noise_share", "high_noise_text",
    "loss_by_noise_level", "nfe_plan", "ode_paths", "principal_plane", "quality_vs_nfe",
    "render_html", "report",
    "sliced_wasserstein",
]


def report(run: Any, *, seed: int = 0, n_samples: int = 64, held_out: int = 128,
           steps: int = DEFAULT_STEPS, sections: Sequence[str] = SECTIONS,
           progress: Callable[[str], None] | None = None, data: str | None = None
           ) -> tuple[str, dict[str, float]]:
    """The explain page for a loaded run (:func:`noisecraft.load_run`) and seconds per section;
    ``data``: the held-out data's spec (default: the run's own training data)."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    torch.manual_seed(seed)
    x, labels = _held_out(run, held_out, data)
    ctx = Context(run, x, labels, seed, n_samples, min(steps, run.schedule.T), default_yardstick(run))
    out: list[Section] = []
    rec = None
    if "compute" in sections and ctx.yardstick in ("digits", "mnist"):
        from ..metrics.classifier import load_classifier

        load_classifier(ctx.yardstick)        # trains (with autograd) on first use, then cached
    with torch.no_grad():
        for key in SECTIONS:
            if key not in sections:
                continue
            start = time.perf_counter()
            if progress is not None:
                progress(key)
            if key in ("reverse", "spectral") and rec is None:
                reverse, rec = section_reverse(ctx)      # the spectral view reuses its x̂_0
                if key == "reverse":
                    out.append(reverse)
            if key == "spectral":
                assert rec is not None
                out.append(section_spectral(ctx, rec))
            elif key != "reverse":
                out.append(_BUILDERS[key](ctx))
            ctx.timings[key] = time.perf_counter() - start
    title = f"noisecraft explain: {run.run_dir}"
    intro = (f"A diffusion model trained on <code>{html.escape(str(run.config.data.spec))}</code> "
             f"({run.preprocess.kind} data of shape {tuple(run.shape)}), step {run.step}, "
             f"{run.config.prediction}-prediction, T = {run.schedule.T}. Notation: x_t = α_t x_0 + "
             "σ_t ε with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t); ε̂ and x̂_0 are the network's predictions. "
             f"Held-out examples: {x.shape[0]}; seed {seed}.")
    return render_html(title, intro, out), ctx.timings


_BUILDERS: dict[str, Callable[[Context], Section]] = {
    "schedule": section_schedule,
    "forward": section_forward,
    "loss": section_loss,
    "means": section_means,
    "compute": section_compute,
    "sde-ode": section_sde_ode,
    "likelihood": section_likelihood,
    "paths": section_paths,
}
