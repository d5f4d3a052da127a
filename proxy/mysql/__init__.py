"""MySQL / MariaDB front end: the sans-IO client/server protocol codec (proxy.mysql.protocol)."""
