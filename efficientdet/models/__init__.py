"""The network, nothing else: backbone, feature networks, heads and the detector that joins them."""
