"""Stages of the benchmark: data, training, evaluation, collection and plotting."""
