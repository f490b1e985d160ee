"""What the commands do beyond training and prediction: benchmarking, dataset checks, the demo."""
