"""Pictures: boxes drawn on images, training-metric plots."""
