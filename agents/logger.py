"""The training logger every agent here uses: SB3's, minus its stray temporary directories."""

from __future__ import annotations

from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import configure_logger


def run_logger(
    verbose: int = 0,
    tensorboard_log: str | None = None,
    tb_log_name: str = "",
    reset_num_timesteps: bool = True,
) -> Logger:
    """SB3's ``configure_logger`` (same arguments and defaults), except that a silent run
    without TensorBoard writes nothing.

    SB3 gives such a run a logger on a fresh ``SB3-<date>`` folder in the temp directory, which
    is created and never used; every ``learn`` call of a quiet test or script would leave one.
    """
    if verbose == 0 and tensorboard_log is None:
        return Logger(folder=None, output_formats=[])
    return configure_logger(verbose, tensorboard_log, tb_log_name, reset_num_timesteps)
