"""Built-in methods, one package each, registered through the ``ftplugins`` entry-point group."""
