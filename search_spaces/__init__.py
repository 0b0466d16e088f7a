"""Built-in search spaces (YAML), installed as the package ``autotune.search_spaces``."""
