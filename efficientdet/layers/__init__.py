"""Building blocks of the networks: convs with TF "SAME" or symmetric padding, activations, activation checkpointing."""
