"""Scan modules, one per file: antivirus, antispam, content, phishing, auth."""
