"""The training tasks: each says what its problem adds to :class:`efficientdet.engine.Trainer`."""
