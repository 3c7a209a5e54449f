"""Readers of file formats through MappedFile: a bad page is an error naming
what it hit, never SIGBUS."""
