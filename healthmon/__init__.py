"""healthmon: composition root, settings and the command line."""
