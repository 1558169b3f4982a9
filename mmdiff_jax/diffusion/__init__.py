"""Pure functions: noise schedules, the forward process's closed forms, aggregation weights, bound terms.

The public math API (`from mmdiff_jax import diffusion`); every function takes `(schedule, weights)`
positionally and everything else by keyword (t, z_t, z0, encodings, ...), so same-shaped arrays cannot
be swapped silently.
"""

from mmdiff_jax.diffusion.aggregation import (final_coefficients, marginal_profile, step_weights,
                                              weights_from_profile)
from mmdiff_jax.diffusion.bound import diffusion_kl, discretized_gaussian_nll, gaussian_kl, prior_kl
from mmdiff_jax.diffusion.process import (aggregated_encoding, aggregation_coefficients, ddim_step,
                                          eps_from_z0, marginal, posterior, posterior_mean_from_eps,
                                          sample_marginal, shift, transition, v_from_z0_eps,
                                          z0_eps_from_prediction, z0_from_eps)
from mmdiff_jax.diffusion.schedules import Schedule, get_schedule, schedule_from_betas

__all__ = [
    "Schedule", "aggregated_encoding", "aggregation_coefficients", "ddim_step", "diffusion_kl",
    "discretized_gaussian_nll", "eps_from_z0", "final_coefficients", "gaussian_kl", "get_schedule",
    "marginal", "marginal_profile", "posterior", "posterior_mean_from_eps", "prior_kl",
    "sample_marginal", "schedule_from_betas", "shift", "step_weights", "transition", "v_from_z0_eps",
    "weights_from_profile", "z0_eps_from_prediction", "z0_from_eps",
]
