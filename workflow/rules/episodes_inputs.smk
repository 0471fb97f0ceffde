# Params of make_episodes in episodes.smk, the keys that decide what one episodes file
# holds. The lists `seeds` and `shots` choose which files exist, not what one says, so
# editing them redraws nothing.
from pipeline.data.episodes import EPISODES_FORMAT  # noqa: E402


def episode_params(wildcards):
    settings = section(wildcards.dataset, "episodes")
    return {"num_episodes": settings["num_episodes"], "min_pixels": settings["min_pixels"],
            "small_classes": settings["small_classes"], "format": EPISODES_FORMAT}


def yardstick_params(wildcards):
    """What the yardstick rows of an episodic test read (pipeline/methods/crnet/test_crnet.py)."""
    settings = section(wildcards.dataset, "episodes")
    return {"min_labelled_background": settings["min_labelled_background"],
            "small_classes": settings["small_classes"],
            "mismatched": P(wildcards.dataset)["crnet"]["test"]["mismatched"]}
