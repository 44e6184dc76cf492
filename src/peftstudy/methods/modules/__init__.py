"""The methods' layers and `inject` functions (torch): one module per method, named as its settings module."""
