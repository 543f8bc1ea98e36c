"""The explain page (noisecraft.explain): its numbers against exact answers, and the page itself
(parses, every section, inline PNG only, nothing external; rendered by headless Chromium when
/usr/bin/chromium exists)."""

from __future__ import annotations

import base64
import io
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft import Denoiser, GaussianMixture, Schedule, data, explain
from noisecraft.analytic import exact_reverse_conditional
from noisecraft.explain import (
    SECTIONS,
    _bimodal,
    bound_share,
    count_calls,
    high_noise_share,
    high_noise_text,
    loss_by_noise_level,
    principal_plane,
    quality_vs_nfe,
    report,
)
from noisecraft.likelihood import bound_estimate
from noisecraft.metrics.distances import sliced_wasserstein

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import image_config, train, vector_config  # noqa: E402

SCHEDULE = Schedule.linear(1000)


# ---------------------------------------------------------------------------- numbers
def test_loss_by_noise_level_is_the_exact_gaussian_mmse_and_kl():
    """Gaussian data N(μ, s²I), ideal x̂_0: per dimension E(ε − ε̂)² = α²s²/(α²s² + σ²), and
    E L_{t−1} = c_0² Var[x_0 | x_t] / (2 β̃_t) nats with Var[x_0 | x_t] = s²σ²/(α²s² + σ²)."""
    mu, s, dim, n = 0.3, 0.5, 16, 400
    g = GaussianMixture([1.0], torch.full((1, dim), mu), [s])
    den = Denoiser(g.net(SCHEDULE, "x0"), SCHEDULE, "x0")
    x0 = g.sample(n, torch.Generator().manual_seed(0))
    ts = [2, 50, 300, 900]
    res = loss_by_noise_level(den, x0, ts, generator=torch.Generator().manual_seed(1))
    k = n * dim
    for i, t in enumerate(ts):
        a, sg = (v.item() for v in SCHEDULE.marginal(float(t)))
        mse = a * a * s * s / (a * a * s * s + sg * sg)
        # (ε − ε̂) per coordinate is Gaussian with variance mse: SE of the mean square = mse √(2/k)
        assert abs(res["eps_mse"][i] - mse) < 5 * mse * math.sqrt(2 / k), (t, res["eps_mse"][i], mse)
        c0, _, var = (v.item() for v in SCHEDULE.posterior_coefficients(float(t)))
        post = s * s * sg * sg / (a * a * s * s + sg * sg)
        want = c0**2 * post / (2 * var) / math.log(2)
        assert abs(res["bound_bits"][i] - want) < 5 * want * math.sqrt(2 / k), (t, want)


def test_bound_estimate_is_unbiased_for_the_full_bound():
    """Gaussian data, ideal x̂_0, continuous data: the stratified estimate's mean over examples
    must match the full T-term bound of noisecraft.nll within their joint sampling error."""
    from noisecraft import nll

    sch = Schedule.linear(200)
    g = GaussianMixture([1.0], torch.full((1, 4), 0.2), [0.5])
    den = Denoiser(g.net(sch, "x0"), sch, "x0")
    x0 = g.sample(300, torch.Generator().manual_seed(0))
    full = nll(den, x0, sch, "vlb", discrete=False, generator=torch.Generator().manual_seed(1))
    est = bound_estimate(den, x0, 20, generator=torch.Generator().manual_seed(2))
    diff = est - full                     # per example: same x_0, independent noise
    se = diff.std().item() / math.sqrt(diff.numel())
    assert abs(diff.mean().item()) < 5 * se + 1e-9, (diff.mean().item(), se)
    # with one stratum per t the estimate is the full bound (up to its noise draws)
    assert bound_estimate(den, x0[:5], 199).shape == (5,)
    with pytest.raises(ValueError, match="strata"):
        bound_estimate(den, x0, 0)


def test_bound_share_sums_integer_terms_exactly_for_linear_terms():
    t = np.array([1, 2, 5, 11])
    b = 3.0 + 0.5 * t                    # linear in t: the interpolation is exact
    share, total = bound_share(t, b)
    full = 3.0 + 0.5 * np.arange(1, 12)
    assert total == pytest.approx(full.sum())
    assert share[2] == pytest.approx(full[:5].sum() / full.sum())
    assert share[-1] == 1.0
    share2, total2 = bound_share(t[1:], b[1:])            # from t = 2: the KL terms only
    assert total2 == pytest.approx(full[1:].sum()) and share2[0] == pytest.approx(full[1] / total2)
    with pytest.raises(ValueError):
        bound_share(np.array([3, 2]), np.array([1.0, 1.0]))


def test_exact_posterior_mean_matches_monte_carlo_over_the_forward_process():
    """The curve drawn in 'means and modes': E[x_0 | x_t] of the bimodal density against the
    average of x_0 over forward draws whose x_t falls in a narrow bin."""
    mix = _bimodal()
    n = 400_000
    gen = torch.Generator().manual_seed(0)
    x0 = mix.sample(n, gen)[:, 0]
    for t in (100, 300):
        a, s = (v.item() for v in SCHEDULE.marginal(float(t)))
        x_t = a * x0 + s * torch.randn(n, generator=gen, dtype=torch.float64)
        for centre in (-1.0, -0.2, 0.3, 0.9):
            inside = (x_t - centre).abs() < 0.02
            mc = x0[inside]
            exact = mix.posterior_mean(torch.tensor([[centre]], dtype=torch.float64), a, s).item()
            # 5 SE of a bin mean (≥ 500 draws), plus 0.01 for the bin: over a symmetric bin a
            # linear E[x_0|x_t] averages to its centre value; curvature and the density's slope
            # across ±0.02 move it by O(0.02²·|E''|) < 0.01 here
            tol = 5 * mc.std().item() / math.sqrt(mc.numel()) + 0.01
            assert mc.numel() > 500 and abs(mc.mean().item() - exact) < tol, (t, centre)


def test_exact_reverse_conditional_has_the_tower_property_mean():
    """E[x_{t−1} | x_t] = c_0 E[x_0 | x_t] + c_t x_t: the grid density's mean must agree."""
    mix = _bimodal()
    xs = torch.linspace(-4, 4, 4001, dtype=torch.float64)
    for t, x_t in ((50, 0.3), (400, -0.5)):
        p = exact_reverse_conditional(mix, SCHEDULE, t, x_t, xs)
        assert torch.trapezoid(p, xs).item() == pytest.approx(1.0)
        mean = torch.trapezoid(p * xs, xs).item()
        a, s = SCHEDULE.marginal(float(t))
        c0, ct, _ = (v.item() for v in SCHEDULE.posterior_coefficients(float(t)))
        x0_hat = mix.posterior_mean(torch.tensor([[x_t]], dtype=torch.float64), a, s).item()
        assert mean == pytest.approx(c0 * x0_hat + ct * x_t, abs=1e-6)


def test_sliced_wasserstein():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 1, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(a, a + 0.7) == pytest.approx(0.7)         # 1-D: W2 of a shift
    b = torch.randn(500, 3, generator=g, dtype=torch.float64)
    v = torch.tensor([1.0, -2.0, 2.0])
    # E_θ (θ·v)² = |v|²/D for θ uniform on the sphere. (θ·v)²/|v|² ~ Beta(½, 1) has relative SD
    # 0.89, so with 1024 projections the mean has relative SE 2.8 % and its square root 1.4 %:
    # 5 SE = 7 %.
    sw = sliced_wasserstein(b, b + v, projections=1024, generator=g)
    assert sw == pytest.approx(3.0 / math.sqrt(3), rel=0.07)
    assert sliced_wasserstein(b, b) == 0.0


def test_counted_evaluations_and_quality_rows():
    mix = _bimodal()
    den = Denoiser(mix.net(SCHEDULE, "x0"), SCHEDULE, "x0")
    counted = count_calls(den)
    counted(torch.zeros(2, 1), 10.0)
    assert counted.calls == 1
    rows = quality_vs_nfe(den, (1,), {"ddim": (4,), "heun": (4,)},
                          lambda x: float(x.shape[0]), n=3)
    assert [(r.sampler, r.nfe, r.score) for r in rows] == [("ddim", 4.0, 3.0), ("heun", 7.0, 3.0)]


def test_principal_plane_recovers_a_plane():
    g = torch.Generator().manual_seed(0)
    coef = torch.randn(300, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0])
    basis = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64))[0]
    mean, plane = principal_plane(coef @ basis.T + 1.0)
    assert torch.allclose(mean, torch.full((5,), 1.0) + (coef.mean(0) @ basis.T), atol=1e-9)
    # the same plane: projecting the basis onto it loses nothing
    assert torch.allclose((plane @ plane.T) @ basis, basis, atol=1e-9)


# ---------------------------------------------------------------------------- the page
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.srcs, self.tags, self.hrefs = set(), [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if "href" in a:
            self.hrefs.append(a["href"])


def check_page(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert set(SECTIONS) <= parser.ids
    assert "script" not in parser.tags and "link" not in parser.tags
    assert parser.srcs, "no figures"
    for src in parser.srcs:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True))).verify()
    assert all(h.startswith("#") for h in parser.hrefs)
    lower = page.lower()
    assert "http://" not in lower and "https://" not in lower and "url(" not in lower
    return parser


@pytest.fixture(scope="module")
def image_page(tmp_path_factory):
    path = tmp_path_factory.mktemp("explain") / "run"
    config, dataset = image_config(steps=2)
    train(path, config, dataset)
    from noisecraft.run import load_run

    page, timings = report(load_run(path), n_samples=8, held_out=16, steps=5)
    return page, timings


@pytest.mark.slow
def test_image_report_has_every_section_with_inline_png_only(image_page):
    page, timings = image_page
    parser = check_page(page)
    assert set(timings) == set(SECTIONS)
    assert len(parser.srcs) >= len(SECTIONS)


def test_vector_report_has_every_section_with_inline_png_only(tmp_path):
    config, dataset = vector_config(steps=1)
    train(tmp_path / "v", config, dataset)
    from noisecraft.run import load_run

    run = load_run(tmp_path / "v")
    page, _ = report(run, n_samples=16, held_out=32, steps=5)
    check_page(page)
    assert "Spectra need image data" in page
    # the captions state what the schedules do, in numbers computed from them (see below)
    T = run.schedule.T
    lin, cos = (_share_from_alpha_bars(Schedule.from_name(n, T=T)) for n in ("linear", "cosine"))
    how = "fewer" if cos < lin else "more"   # T = 50 here: the linear schedule never gets there
    assert (f"with T = {T}, the cosine schedule gives {how} steps to high noise than the linear "
            f"one: steps with log-SNR < -5 are {100 * lin:.1f} % of a linear schedule and "
            f"{100 * cos:.1f} % of a cosine one") in page
    assert "more of the steps to high noise" not in page
    assert "only its mean is" in page and "step is the average of the posteriors" not in page


def _share_from_alpha_bars(schedule: Schedule) -> float:
    """Share of t = 1..T with log(ᾱ_t / (1 − ᾱ_t)) < −5, straight from the ᾱ table (not log_snr)."""
    ab = schedule.alpha_bars.numpy()
    return float(np.mean(np.log(ab) - np.log1p(-ab) < -5))


def test_cosine_gives_fewer_steps_to_high_noise_than_linear():
    """The issue's figures (29.8 % and 5.3 % at T = 1000), recomputed from the ᾱ tables, and the
    caption phrase built from the schedules says exactly those numbers."""
    lin, cos = Schedule.linear(1000), Schedule.cosine(1000)
    assert round(100 * _share_from_alpha_bars(lin), 1) == 29.8
    assert round(100 * _share_from_alpha_bars(cos), 1) == 5.3
    assert high_noise_share(lin) == pytest.approx(_share_from_alpha_bars(lin), abs=1e-12)
    assert high_noise_share(cos) == pytest.approx(_share_from_alpha_bars(cos), abs=1e-12)
    assert high_noise_text(1000) == ("with T = 1000, the cosine schedule gives fewer steps to high "
                                     "noise than the linear one: steps with log-SNR < -5 are "
                                     "29.8 % of a linear schedule and 5.3 % of a cosine one")


def test_held_out_is_the_test_split_and_falls_back_to_all():
    """data.held_out: digits' test split in the reader's order, labels included; a spec without a
    test split gives its examples from split "all"; a bad n names the value."""
    x, labels = data.held_out("digits", 5, image_size=8, channels=1)
    test = data.load("digits", split="test", image_size=8, channels=1)
    want = [test[i] for i in range(5)]
    assert torch.equal(x, torch.stack([w["x"] for w in want]).float())
    assert labels.tolist() == [w["label"] for w in want]
    with pytest.raises(ValueError, match="held_out: n must be a positive integer, got 0"):
        data.held_out("digits", 0)
    assert explain.held_out is explain._held_out   # the old private name stays importable


def test_sections_subset_and_bad_names(tmp_path):
    config, dataset = vector_config(steps=1)
    train(tmp_path / "v", config, dataset)
    from noisecraft.run import load_run

    run = load_run(tmp_path / "v")
    page, timings = report(run, sections=["schedule", "means"], held_out=8)
    assert set(timings) == {"schedule", "means"} and 'id="forward"' not in page
    with pytest.raises(ValueError, match="unknown section 'nope'"):
        report(run, sections=["nope"])


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_chromium_renders_the_page_without_console_errors(image_page, tmp_path):
    page, _ = image_page
    html_file = tmp_path / "report.html"
    html_file.write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
              "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    proc = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1100,3000",
                           html_file.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and Image.open(shot).size == (1100, 3000), proc.stderr[-2000:]
    proc = subprocess.run([*common, "--dump-dom", html_file.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert 'id="likelihood"' in proc.stdout
    assert "CONSOLE" not in proc.stderr and "Uncaught" not in proc.stderr, proc.stderr[-2000:]


def test_cli_writes_the_page_and_refuses_bad_out(tmp_path, capsys):
    from noisecraft.cli import main

    config, dataset = vector_config(steps=1)
    train(tmp_path / "v", config, dataset)
    out = tmp_path / "r.html"
    assert main(["explain", str(tmp_path / "v"), "--out", str(out), "--samples", "8",
                 "--held-out", "16", "--steps", "4", "--no-progress"]) == 0
    check_page(Path(out).read_text(encoding="utf-8"))
    assert main(["explain", str(tmp_path / "v"), "--out", str(tmp_path / "r.txt")]) == 2
    assert "must end in .html" in capsys.readouterr().err


def test_loss_and_likelihood_sections_read_the_unclipped_density(tmp_path, monkeypatch):
    """The explain report's bound and loss are the density `noisecraft nll` scores: the run's
    Denoiser without the sampling clip (a vector run now samples with x̂_0 clipped to its data)."""
    from noisecraft.explain import objective
    from noisecraft.run import load_run

    config, dataset = vector_config(steps=1)
    train(tmp_path / "v", config, dataset)
    run = load_run(tmp_path / "v")
    assert run.denoiser.clip is not None
    seen = []
    real_bound, real_loss = objective.bound_estimate, objective.loss_by_noise_level
    monkeypatch.setattr(objective, "bound_estimate",
                        lambda den, *a, **k: seen.append(den.clip) or real_bound(den, *a, **k))
    monkeypatch.setattr(objective, "loss_by_noise_level",
                        lambda den, *a, **k: seen.append(den.clip) or real_loss(den, *a, **k))
    report(run, sections=["loss", "likelihood"], n_samples=8, held_out=8)
    assert seen == [None, None, None]


# ---------------------------------------------------------------------------- few evaluations
def _rows_of(page: str) -> list[tuple[str, ...]]:
    """The compute table's (sampler, steps, NFE) cells, read back from the page's HTML."""
    import re

    return re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td><td>(\d+)</td>", page)


def test_few_step_plan_counts_evaluations_not_steps():
    """nfe_plan puts every sampler that can spend 1, 2 or 4 evaluations there, and the counts
    quality_vs_nfe reports are the denoiser calls an outside counter sees, one run at a time:
    one per step for ddim/euler/dpmpp-2m/consistency, 2N − 1 for heun."""
    plan = explain.nfe_plan("consistency", 50)
    assert plan["consistency"] == (1, 2, 4) and "consistency" not in explain.nfe_plan("eps", 50)
    for name in ("ddim", "euler", "dpmpp-2m"):
        assert plan[name][:3] == (1, 2, 4), name
    assert explain.nfe_plan("eps", 3)["ddim"] == (1, 2)          # none above T
    mix = _bimodal()
    want = {"ddim": 1, "euler": 1, "dpmpp-2m": 1, "consistency": 1, "heun": 2}
    for name, per_step in want.items():
        den = Denoiser(mix.net(SCHEDULE, "x0"), SCHEDULE,
                       "consistency" if name == "consistency" else "x0")
        for steps in [s for s in plan[name] if s <= 4]:
            outside = count_calls(den)
            (row,) = quality_vs_nfe(outside, (1,), {name: (steps,)}, lambda x: 0.0, n=3)
            assert row.nfe == outside.calls, (name, steps, row.nfe, outside.calls)
            assert outside.calls == per_step * steps - (name == "heun"), (name, steps)
    assert {s for s in plan["heun"] if 2 * s - 1 <= 4} == {1, 2}   # heun reaches 1 and 3


def test_consistency_run_report_shows_the_consistency_sampler_at_one_and_two(tmp_path):
    """The same trained net read as a plain ε run and as a consistency run (what `distill`
    writes): only the latter's compute table has consistency rows, at NFE 1, 2 and 4, and both
    have DDIM and DPM-Solver++(2M) at 1, 2 and 4."""
    config, dataset = vector_config(steps=1)
    train(tmp_path / "v", config, dataset)
    from noisecraft.run import load_run

    run = load_run(tmp_path / "v")
    plain, _ = report(run, sections=["compute"], n_samples=8, held_out=16)
    run.config.prediction = "consistency"
    run.denoiser = Denoiser(run.net, run.schedule, "consistency")
    distilled, _ = report(run, sections=["compute"], n_samples=8, held_out=16)
    for page in (plain, distilled):
        rows = _rows_of(page)
        for name in ("ddim", "dpmpp-2m"):
            assert {(n, e) for n, _, e in rows if n == name} >= {(name, "1"), (name, "2"),
                                                                  (name, "4")}
    assert not [r for r in _rows_of(plain) if r[0] == "consistency"]
    assert [r for r in _rows_of(distilled) if r[0] == "consistency"] == [
        ("consistency", "1", "1"), ("consistency", "2", "2"), ("consistency", "4", "4")]


def test_paths_section_prints_the_runs_straightness(tmp_path):
    """The paths section's S is reflow.straightness on the same starts (seed + 11, four of
    them) and the same number of ODE steps, recomputed here; the page stays inline-PNG only."""
    from noisecraft.reflow import straightness

    config, dataset = vector_config(steps=1)
    train(tmp_path / "v", config, dataset)
    from noisecraft.run import load_run

    run = load_run(tmp_path / "v")
    page, timings = report(run, sections=["paths"], steps=7, held_out=16, seed=3)
    x_T = torch.randn((4, *run.shape), generator=torch.Generator().manual_seed(3 + 11))
    with torch.no_grad():
        s = straightness(run.denoiser, x_T, steps=7)
    assert f"Straightness S = {s.mean().item():.4g} (mean over the 4 paths" in page
    assert "by 7 Euler ODE steps uniform in τ" in page
    assert set(timings) == {"paths"} and 'id="paths"' in page
    parser = _Page()
    parser.feed(page)
    assert len(parser.srcs) == 1 and parser.srcs[0].startswith("data:image/png;base64,")
    # a straight run: data that is one point μ (a one-component mixture of width 1e-4, its exact
    # x̂_0), where every ODE path is the line z = (1 − τ) μ + τ x_T, so S = O(width²) = 1e-8 at
    # most (measured 5e-11);
    # and a curved one (the two-mode mixture: paths bend towards one mode), S well above it
    import re

    for mix, straight in ((GaussianMixture([1.0], torch.tensor([[0.5, -0.3]]), [1e-4]), True),
                          (GaussianMixture([0.5, 0.5], torch.tensor([[-1.0, 0.0], [1.0, 0.0]]),
                                           [0.1, 0.1]), False)):
        run.denoiser = Denoiser(mix.net(run.schedule, "x0"), run.schedule, "x0")
        page, _ = report(run, sections=["paths"], steps=20, held_out=16)
        got = float(re.search(r"Straightness S = ([^ ]+) ", page).group(1))
        assert (got < 1e-6) if straight else (got > 0.1), (straight, got)
