"""Datasets: sources written in the processed-VTAB layout, then prepared into uint8 tensor caches."""
