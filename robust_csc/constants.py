"""Normalisation statistics shared by data sets and models (no imports, no logic)."""

# CIFAR statistics used by the SDNet recipe (reference facts, training recipe).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# The standard ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The largest lambda (and lambda scale) any setting, policy or checkpoint may carry.
# Images are normalised inside the model and atoms have unit norm, so a code entry
# is at most a few tens; a lambda far above that only zeroes every code.
MAX_LAMBDA = 1000.0
