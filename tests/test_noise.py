import pytest
import torch

from noisecraft.noise import BatchNoise, ExampleNoise, example_seed


def test_each_row_is_its_own_generators_stream():
    noise = ExampleNoise(seed=7, batch=3, offset=5)
    first, second = noise.randn((2, 4)), noise.randn((2, 4))
    for i in range(3):
        gen = torch.Generator().manual_seed(example_seed(7, 5 + i))
        assert torch.equal(first[i], torch.randn(2, 4, generator=gen))
        assert torch.equal(second[i], torch.randn(2, 4, generator=gen))


def test_an_example_does_not_depend_on_the_batch_it_is_drawn_in():
    big = ExampleNoise(seed=3, batch=8)
    alone = ExampleNoise(seed=3, batch=1, offset=6)
    three = ExampleNoise(seed=3, batch=3, offset=4)
    for _ in range(3):  # several draws: the streams stay aligned
        b, a, t = big.randn((5,)), alone.randn((5,)), three.randn((5,))
        assert torch.equal(b[6], a[0]) and torch.equal(b[4:7], t)


def test_streams_differ_between_examples_and_seeds():
    x = ExampleNoise(seed=1, batch=2).randn((1000,))
    y = ExampleNoise(seed=2, batch=2).randn((1000,))
    # independent N(0, 1) vectors of length 1000: |correlation| < 4/√1000 with overwhelming odds
    for a, b in ((x[0], x[1]), (x[1], y[0]), (x[0], y[0])):
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 4 / 1000**0.5
    # seed + index is not a shared stream (a plain sum would make these equal)
    assert not torch.equal(ExampleNoise(1, 2).randn((4,))[1], ExampleNoise(2, 1).randn((4,))[0])


def test_draws_are_standard_normal():
    x = ExampleNoise(seed=0, batch=20).randn((500,), dtype=torch.float64)
    # 10 000 values: mean within 4/√n, variance within 4·√(2/n) of 1
    n = x.numel()
    assert abs(x.mean()) < 4 / n**0.5 and abs(x.var() - 1) < 4 * (2 / n) ** 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_a_cast_of_the_wide_draw(dtype):
    # Half-precision noise is the float32 draw rounded (the module's contract), not its own draw.
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    for make in (lambda: ExampleNoise(0, 2), lambda: BatchNoise(2, torch.Generator().manual_seed(0))):
        x = make().randn((3, 4, 4), dtype=dtype)
        assert x.shape == (2, 3, 4, 4) and x.dtype == dtype
        assert torch.equal(x, make().randn((3, 4, 4), dtype=wide).to(dtype))


def test_batch_noise_follows_its_generator():
    a = BatchNoise(4, torch.Generator().manual_seed(11)).randn((3,))
    b = torch.randn(4, 3, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 1.5, "batch": 2}, "seed must be an integer"),
    ({"seed": 1, "batch": 0}, "batch must be a positive integer"),
    ({"seed": 1, "batch": 2, "offset": -1}, "offset must be a non-negative integer"),
])
def test_example_noise_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExampleNoise(**kwargs)


def test_batch_noise_bad_generator():
    with pytest.raises(ValueError, match="generator must be a torch.Generator, got int"):
        BatchNoise(2, 5)
