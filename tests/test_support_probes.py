"""A CRNet that ignores its support fails these (issue 21, item 6): the probes of
tests/support_probes.py on the paper row (pipeline.models.crnet.CRNet), and the prior probe on
a hand-written PFENet prior (the prior row's own function takes the same probe). Each probe
was checked by planting its defect by hand (mask replaced by ones in the condition module;
the refinement fed the unconditioned features; the prior computed from the support against
itself) and seeing it fail."""
from __future__ import annotations

import pytest
import torch

from pipeline.models.crnet import CRNet
from support_probes import (assert_mask_decides, assert_outside_mask_ignored, assert_prior_follows_support,
                            reference_prior)

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
