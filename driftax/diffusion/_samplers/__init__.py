"""Learned samplers of energies (PIS, DDS, CMCD, Adjoint Sampling), split by concern: the
path-weight core (`_core`), one file per sampler, the replay buffer (`_buffer`), the training
objectives (`_losses`) and the front door `fit_sampler` (`_fit`) on the shared loop."""
