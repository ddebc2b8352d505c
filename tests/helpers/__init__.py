"""What several test modules share: tiny models, data, processes, recipe files."""
