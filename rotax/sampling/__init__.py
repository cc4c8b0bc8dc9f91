"""Jitted sampling with a KV cache: prefill + decode, greedy / temperature / top-k / top-p
(:mod:`rotax.sampling.sampler`). ``from rotax import sampling`` gives the public names."""

from rotax.sampling.sampler import (Generation, SampleOutput, SamplingOptions, bucket_length,
                                    categorical_by_inverse_cdf, choose_tokens, generate, left_pad,
                                    nucleus_threshold, row_keys, sample)

__all__ = ["Generation", "SampleOutput", "SamplingOptions", "bucket_length",
           "categorical_by_inverse_cdf", "choose_tokens", "generate", "left_pad",
           "nucleus_threshold", "row_keys", "sample"]
