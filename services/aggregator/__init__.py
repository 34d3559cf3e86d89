"""Cache/aggregator service: bounded tick cache and microbars with quote microstructure."""
