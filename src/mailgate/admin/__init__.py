"""Administration shared by the REST API, the web interface and the CLI: accounts, sessions,
tokens, the audit log, and the operations they perform."""
