"""cluster.yaml and its rules: the model, reading the file, the boards."""
