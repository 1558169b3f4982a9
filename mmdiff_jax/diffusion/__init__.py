"""Pure functions: noise schedules, the forward process's closed forms, weights, bound terms."""

from mmdiff_jax.diffusion.aggregation import (final_coefficients, marginal_profile, step_weights,
                                              weights_from_profile)
from mmdiff_jax.diffusion.bound import diffusion_kl, discretized_gaussian_nll, gaussian_kl, prior_kl
from mmdiff_jax.diffusion.process import (aggregated_encoding, aggregation_coefficients, eps_from_z0, marginal,
                                          posterior, posterior_mean_from_eps, sample_marginal, shift,
                                          transition, v_from_z0_eps, z0_eps_from_prediction,
                                          z0_from_eps)
from mmdiff_jax.diffusion.schedules import Schedule, get_schedule, schedule_from_betas
