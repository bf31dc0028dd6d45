"""The scq benchmark suite, run by ``scq bench``: exactness, runtime and codebook usage."""
