"""The default profile (workflow/profiles/default): settings that cost Snakemake's main loop CPU on a local run."""

from __future__ import annotations

import yaml
from conftest import REPO
from snakemake.settings.types import MaxJobsPerTimespan

PROFILE = yaml.safe_load((REPO / "workflow/profiles/default/config.yaml").read_text())


def test_the_rate_limiter_rechecks_every_few_seconds_at_snakemakes_default_rate():
    """Snakemake re-runs a scheduling round one timespan after each round that left jobs waiting: over 1 s (its
    default) the mini study's 2 cores ran 22,000 rounds. The limit stays at the default 100 jobs a second, as
    Snakemake parses it."""
    limit = MaxJobsPerTimespan.parse_choice(PROFILE["max-jobs-per-timespan"])
    assert limit.timespan >= 3
    assert limit.max_jobs / limit.timespan >= 100
