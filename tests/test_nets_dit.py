"""The Diffusion Transformer: the paper's sizes, adaLN-Zero's identity at initialisation, the
conditioning contract it shares with the U-Net, layouts, and runs from the command line."""

import json

import pytest
import safetensors.torch
import torch
from torch.utils.flop_counter import FlopCounterMode

from noisecraft import data, nets
from noisecraft.cli import main
from noisecraft.run import INFERENCE_MEMORY_FORMAT, load_run
from noisecraft.train import TrainConfig, new_run_config
from train_helpers import train

TEXT_DIM = 6


def randomise_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere: a fresh DiT outputs exactly 0, hiding every dependence."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def text_batch(lengths, pad_to, seed=0):
    """Random token rows of the given lengths, zero-padded to ``pad_to``, their mask and pooled."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), pad_to, TEXT_DIM)
    mask = torch.zeros(len(lengths), pad_to, dtype=torch.bool)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randn(n, TEXT_DIM, generator=g)
        mask[i, :n] = True
    pooled = torch.randn(len(lengths), TEXT_DIM, generator=g)
    return dict(text=tokens, text_mask=mask, text_pooled=pooled)


def inputs(batch=4, channels=1, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g), torch.rand(batch, generator=g) * 1000


# --- the paper's models ---------------------------------------------------------------------------

# Peebles & Xie 2023, Table 4, at 256×256 ImageNet: latents 32×32×4, patch 2, 1000 classes, learned
# σ. DiT-S/2 has 33M parameters and 6.06 Gflops, DiT-B/2 130M and 23.01 Gflops. Parameters are
# quoted to 2–3 significant figures, so 1 % is the tolerance; Gflops to 4, so 0.1 %. The Gflops
# (multiply-adds, counted by torch's FlopCounterMode, which counts 2 flops per multiply-add) check
# the token count and the block layout independently of the parameter count.
PAPER = {"dit-s/2": (33e6, 6.06e9), "dit-b/2": (130e6, 23.01e9)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameters_and_gflops_are_the_papers(name):
    params, gflops = PAPER[name]
    with torch.device("meta"):  # no memory: only shapes
        net = nets.build(name, in_channels=4, image_size=32, num_classes=1000, learned_variance=True)
        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 4, 32, 32), torch.zeros(1))
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - params) <= 0.01 * params, f"{name}: {n:,} parameters"
    assert abs(counter.get_total_flops() / 2 - gflops) <= 1e-3 * gflops
    assert net.config["hidden_size"] == {"dit-s/2": 384, "dit-b/2": 768}[name]


# --- adaLN-Zero -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, dict(num_classes=3), dict(text_dim=TEXT_DIM),
                                       dict(learned_variance=True, in_channels=4)])
def test_at_initialisation_every_block_is_the_identity_and_the_output_is_zero(overrides):
    torch.manual_seed(0)
    net = nets.build("dit-tiny", **overrides)
    x, t = inputs(channels=net.in_channels)
    cond = {}
    if "num_classes" in overrides:
        cond["labels"] = torch.tensor([0, 1, 2, -1])
    if "text_dim" in overrides:
        cond.update(text_batch([1, 3, 0, 2], pad_to=3))
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
             for b in net.blocks]
    out = net(x, t, **cond)
    for h in hooks:
        h.remove()
    assert len(seen) == len(net.blocks)
    tokens = seen[0][0]
    assert tokens.abs().min() > 0  # a real input: the patch code is not itself zero
    for block_in, block_out in seen:
        assert torch.equal(block_out, block_in)  # exactly: zero gates, zero cross-attention
    assert out.shape == (4, net.out_channels, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))


# --- conditioning ---------------------------------------------------------------------------------

def _steps(net, n, x, t, seed=0, **cond):
    """n Adam steps on a random regression target; returns the last gradients."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(x.shape[0], net.out_channels, *x.shape[2:], generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(n):
        opt.zero_grad()
        ((net(x, t, **cond) - target) ** 2).mean().backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        opt.step()
    return grads


def test_labels_condition_the_output_after_training_and_minus_one_is_the_null_label():
    torch.manual_seed(0)
    net = nets.build("dit-tiny", num_classes=3)
    x = torch.randn(1, 1, 8, 8).expand(6, 1, 8, 8)
    t = torch.full((6,), 300.0)
    labels = torch.tensor([0, 1, 2, -1, 0, 1])
    # At initialisation only the last linear has a gradient (everything else reaches the output
    # through it, and it is zero); so after one step the output still ignores the labels, after
    # the second the adaLN modulations have moved and the labels matter.
    x4, t4, four = x[:4], t[:4], torch.tensor([0, 1, 2, -1])
    _steps(net, 1, x, t, labels=labels)
    out = net(x4, t4, labels=four)
    assert (out - out[:1]).abs().max() == 0
    _steps(net, 1, x, t, labels=labels)
    out = net(x4, t4, labels=four)
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[1] - out[2]).abs().max() > 1e-4
    assert (out[2] - out[3]).abs().max() > 1e-4
    torch.testing.assert_close(net(x4, t4), out[3:].expand(4, 1, 8, 8), rtol=0, atol=0)
    torch.testing.assert_close(net(x, t, labels=None), net(x, t), rtol=0, atol=0)


def test_text_cross_attention_receives_gradients_and_padding_and_the_empty_prompt_behave():
    torch.manual_seed(0)
    net = nets.build("dit-tiny", text_dim=TEXT_DIM)
    x, t = inputs(batch=3)
    cond = text_batch([2, 3, 1], pad_to=3)
    grads = _steps(net, 3, x, t, **cond)
    for i in range(len(net.blocks)):
        for name in ("q.weight", "kv.weight", "proj.weight"):
            assert grads[f"blocks.{i}.cross.{name}"].abs().max() > 0, f"block {i} cross.{name}"
    assert grads["text_embed.pooled_proj.weight"].abs().max() > 0
    randomise_(net)
    out = net(x, t, **cond)
    # Masked keys get exactly zero weight, so only float32 rounding may differ: ~1e-7 relative
    # per operation, grown through 4 blocks of random (std 0.2) weights; 1e-5 of the output's
    # scale bounds it with room, while a key that leaked through would move the output by O(scale).
    def close(a, b):
        return (a - b).abs().max() <= 1e-5 * out.abs().max()

    # garbage beyond the mask is ignored
    longer = torch.randn(3, 7, TEXT_DIM)
    longer[:, :3] = cond["text"]
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[:, :3] = cond["text_mask"]
    assert close(net(x, t, text=longer, text_mask=mask, text_pooled=cond["text_pooled"]), out)
    # the empty prompt (all-False mask) is the missing-text null; real tokens change the output
    empty = dict(cond, text_mask=torch.zeros_like(cond["text_mask"]))
    assert close(net(x, t, **empty), net(x, t))
    assert not torch.allclose(out, net(x, t), atol=1e-3)
    with pytest.raises(ValueError, match="cannot use the condition.*labels"):
        net(x, t, labels=torch.tensor([0, 1, 2]))


# --- shapes, sizes and layouts --------------------------------------------------------------------

@pytest.mark.parametrize("channels,size,learned", [(1, 8, False), (3, 32, True), (4, 7, False),
                                                   (4, 9, True)])
def test_any_channels_and_sizes_and_learned_variance_doubles_channels(channels, size, learned):
    net = randomise_(nets.build("dit-tiny", in_channels=channels, image_size=size,
                                learned_variance=learned))
    x, t = inputs(batch=2, channels=channels, size=size)
    out = net(x, t)
    assert out.shape == (2, channels * (2 if learned else 1), size, size)
    assert torch.isfinite(out).all()
    if size % net.patch_size:
        # padded to whole patches: the bottom-right pixel's patch holds the zero padding; the
        # output there depends on x alone, like every other output
        x2 = x.clone()
        x2[:, :, -1, -1] += 1
        assert not torch.allclose(net(x2, t)[:, :, -1, -1], out[:, :, -1, -1])


def test_other_grids_get_their_own_position_code():
    net = randomise_(nets.build("dit-tiny"))  # trained at 8×8: a 4×4 grid
    x, t = inputs(batch=2, size=12)
    wide = torch.randn(2, 1, 8, 12)
    assert net(x, t).shape == (2, 1, 12, 12) and net(wide, t).shape == (2, 1, 8, 12)
    code = nets.dit.sincos_position_2d(3, 5, 16)   # rows vary the first half, columns the second
    grid = code.reshape(3, 5, 16)
    assert torch.equal(grid[:, :1, :8].expand(3, 5, 8), grid[..., :8])
    assert torch.equal(grid[:1, :, 8:].expand(3, 5, 8), grid[..., 8:])
    assert torch.cdist(code, code).add(torch.eye(15)).min() > 0.1  # every patch distinct


def test_the_position_code_breaks_the_transformers_symmetry_under_moving_patches(monkeypatch):
    # Without a position code, attention and per-token layers commute with any permutation of the
    # tokens: swapping two patches of the input would swap them in the output and nothing else.
    net = randomise_(nets.build("dit-tiny")).eval()
    x, t = inputs()

    def swap(img):  # the top-left and bottom-right 2×2 patches
        out = img.clone()
        out[..., :2, :2], out[..., -2:, -2:] = img[..., -2:, -2:], img[..., :2, :2]
        return out

    with torch.no_grad():
        moved, out = net(swap(x), t), net(x, t)
        assert (moved - swap(out)).abs().max() > 1e-2 * out.abs().max()
        # the check itself: with no position code the swap commutes, up to float32 rounding
        # (attention sums in another order): 1e-5 of the output's scale
        monkeypatch.setattr(nets.dit, "sincos_position_2d",
                            lambda rows, cols, dim, device: torch.zeros(rows * cols, dim))
        out = net(x, t)
        assert (net(swap(x), t) - swap(out)).abs().max() <= 1e-5 * out.abs().max()


def test_config_round_trip_rebuilds_the_same_network():
    net = randomise_(nets.build("dit-tiny", num_classes=4, text_dim=TEXT_DIM, learned_variance=True))
    config = json.loads(json.dumps(net.config))
    assert config["arch"] == "dit" and config["num_classes"] == 4 and config["text_dim"] == TEXT_DIM
    rebuilt = nets.from_config(config)
    assert rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    x, t = inputs()
    cond = dict(labels=torch.tensor([0, 1, 3, -1]), **text_batch([1, 2, 0, 3], pad_to=3))
    assert torch.equal(rebuilt(x, t, **cond), net(x, t, **cond))


def test_channels_last_inference_matches_contiguous_and_returns_the_input_layout():
    # As tests/test_inference_format.py: the layout changes only the order of the patch conv's
    # sums, so outputs agree to float32 rounding (1e-5 of the output scale is a bound with room).
    contiguous = randomise_(nets.build("dit-tiny", in_channels=3)).eval()
    fast = randomise_(nets.build("dit-tiny", in_channels=3)).eval()
    fast = fast.to(memory_format=INFERENCE_MEMORY_FORMAT)
    assert fast.patch_embed.weight.is_contiguous(memory_format=INFERENCE_MEMORY_FORMAT)
    x, t = inputs(channels=3)
    with torch.no_grad():
        want, got = contiguous(x, t), fast(x, t)
        got_nhwc = fast(x.contiguous(memory_format=torch.channels_last), t)
    assert got.is_contiguous() and got_nhwc.is_contiguous(memory_format=torch.channels_last)
    scale = want.abs().max()
    assert scale > 1e-2
    assert (got - want).abs().max() <= 1e-5 * scale
    assert (got_nhwc - want).abs().max() <= 1e-5 * scale


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="num_heads=5 does not divide hidden_size=128"):
        nets.build("dit-tiny", num_heads=5)
    with pytest.raises(ValueError, match="hidden_size=6 must be divisible by 4"):
        nets.build("dit-tiny", hidden_size=6, num_heads=1)
    with pytest.raises(ValueError, match="patch_size 16 is larger than image_size 8"):
        nets.build("dit-tiny", patch_size=16)
    with pytest.raises(ValueError, match="not vectors"):
        nets.build("dit-tiny", image_size=None)
    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        nets.build("dit-tiny", patch_size=0)
    with pytest.raises(ValueError, match=r"\(batch, 1, H, W\), got \(2, 3, 8, 8\)"):
        nets.build("dit-tiny")(torch.zeros(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="hidden_size = 100000 is too large"):
        nets.build("dit-tiny", hidden_size=100_000)


# --- runs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--class-cond"]])
def test_train_and_sample_a_dit_run_from_the_command_line(tmp_path, capsys, extra):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", "digits", "--net", "dit-tiny", "--steps", "3", "--out",
                 str(run_dir), "--batch-size", "16", "--sample-every", "0", "--timesteps", "50",
                 "--no-progress", *extra]) == 0
    run = load_run(run_dir)
    assert run.config.net["arch"] == "dit" and run.step == 3
    assert (run.config.net["num_classes"] == 10) == bool(extra)
    out = tmp_path / "samples"
    args = ["--guidance", "2"] if extra else []
    assert main(["sample", str(run_dir), "--out", str(out), "--n", "4", "--steps", "3",
                 "--no-progress", *args]) == 0
    assert "4 samples" in capsys.readouterr().out
    assert (tmp_path / "samples.npz").is_file()


def test_a_dit_run_resumes_bit_identically(tmp_path):
    dataset = data.load("digits")
    tc = TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup=1, log_every=1, sample_every=0,
                     checkpoint_every=0, ema_decay=0.8, label_dropout=0.3)
    config = new_run_config(dataset, "digits", net="dit-tiny", T=50, class_conditional=True, train=tc,
                            net_overrides=dict(hidden_size=32, depth=2, num_heads=2))
    train(tmp_path / "straight", config, dataset)
    train(tmp_path / "resumed", config, dataset, stop_at=2)
    train(tmp_path / "resumed", config, dataset, resume=True)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = (safetensors.torch.load_file(tmp_path / run / name) for run in ("straight", "resumed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
