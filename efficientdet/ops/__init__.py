"""The detector's arithmetic around the network: anchors, box coding, anchor labelling, losses, post-processing."""
