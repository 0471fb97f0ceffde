"""A CRNet that ignores its support fails these (issue 21, item 6): the probes below on the
paper row (pipeline.models.crnet.CRNet), and the prior probe on a hand-written PFENet prior (the prior row's own function takes the same probe). Each probe
was checked by planting its defect by hand (mask replaced by ones in the condition module;
the refinement fed the unconditioned features; the prior computed from the support against
itself) and seeing it fail."""
from __future__ import annotations

# The probes (usable for any row: the paper's CRNet, a variant, a prior).
# Probes that a few-shot model follows its support (issue 21, item 6), for any row: the paper's
# CRNet, a variant, a row with PFENet's training-free prior. Each probe builds inputs on the
# feature grid (masks at the features' own size, so no resizing blurs a mask's edge) and
# asserts one property whose violation is a known defect:
#
# * :func:`assert_mask_decides` -- the query prediction (every refinement iteration) changes when
#   the support mask changes and the support features do not: red when the mask is ignored,
#   e.g. the condition module pools the whole support image (mask replaced by ones) or the
#   mask does not reach the refinement.
# * :func:`assert_outside_mask_ignored` -- for a path that only sees the support through its
#   mask (the condition module alone; a prior), support features *outside* the mask leave the
#   prediction unchanged: red when the whole support image is pooled.
# * :func:`assert_prior_follows_support` -- a prior ``prior(query C x h x w, support C x h x w,
#   support_mask h x w) -> h x w`` is PFENet's (per query cell the max cosine to the support's
#   foreground cells, min-max normalised over the query), reads the support only under its mask,
#   and is computed on the query (red when it is computed from the wrong image).
#
# Compare within one run, with a tolerance (processors differ).

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.crnet import CRNet, training_free_prior

ATOL = 1e-5


def grid_mask(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """``h x w`` uint8 episode mask: 1 inside ``box`` = (r0, r1, c0, c1), 0 elsewhere."""
    m = torch.zeros(h, w, dtype=torch.uint8)
    r0, r1, c0, c1 = box
    m[r0:r1, c0:c1] = 1
    return m


def query_outputs(model, query, support, mask, iterations: int) -> list[torch.Tensor]:
    """The query's logits after each iteration (model in eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        return model(query, support, mask[None] if mask.dim() == 2 else mask, iterations=iterations,
                     predict_support=False)["query"]


def assert_mask_decides(model, channels: int, size: tuple[int, int] = (8, 8), iterations: int = 3,
                        seed: int = 0) -> None:
    """Two masks on the same support features (left half vs right half, the halves' features
    differ) must give different query logits at every iteration."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    query = torch.rand(1, channels, h, w, generator=g)
    support = torch.rand(1, channels, h, w, generator=g)
    support[..., :, w // 2:] += 2.0  # the right half looks different: pooling it gives another prototype
    left, right = grid_mask(h, w, (0, h, 0, w // 2)), grid_mask(h, w, (0, h, w // 2, w))
    a = query_outputs(model, query, support, left, iterations)
    b = query_outputs(model, query, support, right, iterations)
    for t, (x, y) in enumerate(zip(a, b), 1):
        assert not torch.allclose(x, y, atol=ATOL), f"iteration {t}: the support mask does not change the prediction"


def assert_outside_mask_ignored(model, channels: int, size: tuple[int, int] = (8, 8), iterations: int = 3,
                                seed: int = 0) -> None:
    """Support features outside the mask changed, inside kept: the query logits stay the same
    (for a model whose only view of the support is through its mask)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    query = torch.rand(1, channels, h, w, generator=g)
    support = torch.rand(1, channels, h, w, generator=g)
    mask = grid_mask(h, w, (2, 6, 2, 6))
    other = support.clone()
    other[..., mask == 0] = torch.rand(int((mask == 0).sum()), generator=g) * 3.0
    a = query_outputs(model, query, support, mask, iterations)
    b = query_outputs(model, query, other, mask, iterations)
    for t, (x, y) in enumerate(zip(a, b), 1):
        assert torch.allclose(x, y, atol=ATOL), f"iteration {t}: support features outside the mask change the output"


def reference_prior(query: torch.Tensor, support: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PFENet's prior by hand: per query cell the max cosine to the support's foreground
    cells, min-max normalised over the query (no foreground: zeros)."""
    fg = support[:, mask == 1]                                   # C x n
    if fg.shape[1] == 0:
        return query.new_zeros(query.shape[-2:])
    q = query.reshape(query.shape[0], -1)                        # C x hw
    cos = F.normalize(q, dim=0).T @ F.normalize(fg, dim=0)       # hw x n
    best = cos.max(dim=1).values
    best = (best - best.min()) / (best.max() - best.min() + 1e-7)
    return best.reshape(query.shape[-2:])


def assert_prior_follows_support(prior: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                                 channels: int = 6, size: tuple[int, int] = (6, 7), seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    query = torch.rand(channels, h, w, generator=g)
    support = torch.rand(channels, h + 1, w - 1, generator=g)    # another grid: the prior is on the query's
    mask = grid_mask(h + 1, w - 1, (1, 4, 2, 5))
    got = prior(query, support, mask)
    assert tuple(got.shape) == (h, w), f"prior on grid {tuple(got.shape)}, the query's is {(h, w)}"
    assert torch.allclose(got, reference_prior(query, support, mask), atol=1e-4), "not PFENet's prior"
    # a query cell equal to a foreground support cell scores the maximum, 1
    query2 = query.clone()
    query2[:, 0, 0] = support[:, 2, 3] * 5.0
    assert abs(float(prior(query2, support, mask)[0, 0]) - 1.0) < 1e-4, "a copy of a support fg cell is not the max"
    # support outside the mask does not count
    other = support.clone()
    other[:, mask == 0] = torch.rand(channels, int((mask == 0).sum()), generator=g)
    assert torch.allclose(prior(query, other, mask), got, atol=ATOL), "the prior reads the support outside its mask"
    # computed on the query: another query changes it
    assert not torch.allclose(prior(torch.rand(channels, h, w, generator=g), support, mask), got, atol=1e-3), \
        "the prior does not follow the query"


LEVELS = [4, 6]
CHANNELS = sum(LEVELS)


def net(**switches):
    torch.manual_seed(0)
    return CRNet(LEVELS, hidden=16, **switches)


@pytest.mark.parametrize("switches", [{}, {"cross_reference": False}, {"cache": False}, {"refinement": False}],
                         ids=["paper", "no_cross_reference", "no_cache", "no_refinement"])
def test_the_support_mask_decides_the_query_prediction_at_every_iteration(switches):
    assert_mask_decides(net(**switches), CHANNELS)


def test_the_condition_module_pools_only_under_the_mask():
    # Without the cross-reference module (which reads the whole support by design: GAP of both
    # images), the support reaches the query only through the masked prototype.
    assert_outside_mask_ignored(net(cross_reference=False), CHANNELS)


def test_without_the_condition_module_the_mask_cannot_matter():
    # the probe's own control: a net without the condition has no use for the mask
    with pytest.raises(AssertionError, match="does not change"):
        assert_mask_decides(net(condition=False), CHANNELS)


def test_the_prior_probe_accepts_pfenets_prior_and_rejects_its_defects():
    assert_prior_follows_support(reference_prior)

    def whole_support(query, support, mask):          # pools the whole support image
        return reference_prior(query, support, torch.ones_like(mask))

    def wrong_image(query, support, mask):            # computed on the support, resized to the query's grid
        own = reference_prior(support, support, mask)
        return torch.nn.functional.interpolate(own[None, None], size=query.shape[-2:], mode="nearest")[0, 0]

    def not_normalised(query, support, mask):
        fg = support[:, mask == 1]
        q = torch.nn.functional.normalize(query.reshape(query.shape[0], -1), dim=0)
        return (q.T @ torch.nn.functional.normalize(fg, dim=0)).max(1).values.reshape(query.shape[-2:])

    for defect in (whole_support, wrong_image, not_normalised):
        with pytest.raises(AssertionError):
            assert_prior_follows_support(defect)


def test_the_prior_rows_own_prior_passes_the_probe():
    """pipeline.models.crnet.training_free_prior, the prior row's input, is PFENet's prior, reads
    the support only under its mask and is computed on the query."""
    assert_prior_follows_support(lambda q, s, m: training_free_prior(q[None], s[None], m[None, None].float())[0, 0])
