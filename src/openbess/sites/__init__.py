"""Built-in site files (``home``, ``commercial``)."""
