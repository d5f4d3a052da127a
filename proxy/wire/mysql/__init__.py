"""MySQL / MariaDB front end: codec and client sessions."""
