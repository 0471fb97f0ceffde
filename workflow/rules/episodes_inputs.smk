# Params of make_episodes in episodes.smk, the keys that decide what one episodes file
# holds. The lists `seeds` and `shots` choose which files exist, not what one says, so
# editing them redraws nothing.
from pipeline.data.episodes import EPISODES_FORMAT  # noqa: E402


def episode_params(wildcards):
    settings = section(wildcards.dataset, "episodes")
    return {"num_episodes": settings["num_episodes"], "min_pixels": settings["min_pixels"],
            "format": EPISODES_FORMAT}
